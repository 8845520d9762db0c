"""One seed of `leaf demo`, as stage functions with explicit inputs and outputs.

Each stage takes a `SeedContext` (the settings, the teacher, the seed's folder) and the outputs of the stages it
needs, returns a small dataclass, and skips the work a previous run finished (its files are in the seed folder):

    splits = make_splits(ctx)                                      # pool, validation, test problems
    student = train_student(ctx, splits)                           # the student folder
    detection = compare_detection_rules(ctx, student)              # every rule on validation, one chosen
    pool = analyze_pool(ctx, student, splits, detection.variant)   # the chosen rule and the controls
    distilled = distill_settings(ctx, student, splits, pool)       # one student per setting
    served = serve_models(ctx, splits, distilled.models)           # accuracy per problem, throughput
    focus = measure_focus(ctx, student, splits, distilled.models)  # attention on the distractors

`leaf.demo.run.run_seed` chains them and assembles the seed's results.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from leaf.demo.experiment import Variant
from leaf.errors import LeafError

if TYPE_CHECKING:
    from leaf.demo.run import DemoConfig


@dataclass(frozen=True)
class SeedContext:
    """What every stage of one seed reads: the demo's settings, the teacher folder, the seed and its folder."""

    config: DemoConfig
    teacher: Path
    seed: int
    out: Path               # OUTPUT/seed-N
    log: Callable[[str], None]
    shipped_teacher: bool = False  # the teacher shipped with leaf (its training problems are known)


@dataclass(frozen=True)
class Splits:
    pool: list
    validation: list
    test: list
    held_out: frozenset     # texts of the test and validation problems: never trained on
    counts: dict            # sizes, and how many test problems the shipped teacher saw in training


@dataclass(frozen=True)
class Detection:
    rules: dict             # rule name -> its validation figures
    variant: Variant        # the chosen rule


@dataclass(frozen=True)
class PoolAnalysis:
    summary: dict           # the pool's analyze summary.json
    kept: list              # the selected problems
    counterfactuals: dict   # source (gradient, collective, random, ppl, oracle) -> counterfactual rows


@dataclass(frozen=True)
class Distilled:
    models: dict            # name -> model folder: Pre-KD, every setting that ran, Teacher
    rows: dict              # setting -> its counterfactual counts, forward tokens, first-step KL (or why skipped)
    originals: dict         # how many selected and clean problems the originals hold


@dataclass(frozen=True)
class Served:
    outcomes: dict          # model -> {"distractor": [0/1 per test problem], "clean": [...]}
    engine: str
    figures: dict           # model -> the serve metrics of its original prompts, and serve's attention focus


@dataclass(frozen=True)
class Focus:
    head: object            # leaf.demo.focus head chosen on validation
    summaries: dict = field(default_factory=dict)   # model -> focus summary


def make_splits(ctx: SeedContext) -> Splits:
    from leaf.demo.experiment import write_jsonl
    from leaf.demo.task import demo_splits, texts

    c = ctx.config
    splits = demo_splits(ctx.seed, pool=c.budget("pool"), validation=c.budget("validation"),
                         test=c.budget("test_size"), leak=c.leak)
    for name in ("pool", "validation", "test"):
        write_jsonl(ctx.out / f"{name}.jsonl", [p.as_record() for p in splits[name]])
    test, validation = splits["test"], splits["validation"]
    # the shipped teacher's training problems are fixed: how many test problems it saw
    seen = _teacher_texts() if ctx.shipped_teacher else frozenset()
    counts = {name: len(problems) for name, problems in splits.items()}
    counts["test_seen_by_teacher"] = {
        "distractor": sum(p.question in seen for p in test),
        "clean_twin": sum(p.clean_question in seen for p in test)} if seen else None
    return Splits(splits["pool"], validation, test, texts(test) | texts(validation), counts)


@functools.lru_cache(maxsize=1)
def _teacher_texts() -> frozenset[str]:
    """The shipped teacher's training questions, as posed and as clean twins (drawn once per process, not per seed)."""
    from leaf.demo.task import teacher_problems, texts

    return frozenset(texts(teacher_problems()))


def train_student(ctx: SeedContext, splits: Splits) -> Path:
    """The student: a smaller model trained on clean problems only (never on a held-out one)."""
    from transformers import AutoTokenizer

    from leaf.demo.task import student_problems
    from leaf.demo.train import STUDENT_SIZE, encode, new_model, train

    path = ctx.out / "student"
    if (path / "leaf_demo_training.json").exists():
        return path
    if path.exists():
        shutil.rmtree(path)
    new_model(path, STUDENT_SIZE, seed=100 + ctx.seed)
    steps = ctx.config.budget("student_steps")
    encoded = encode(AutoTokenizer.from_pretrained(path), student_problems(20000, ctx.seed, splits.held_out),
                     clean=True)
    ctx.log(f"seed {ctx.seed}: training the student on clean problems ({steps} steps)")
    train(path, encoded, steps=steps, seed=ctx.seed, on_step=progress_bar(f"student (seed {ctx.seed})", steps))
    return path


def analyze(ctx: SeedContext, student: Path, data: Path, output: Path, variant: Variant, **extra) -> dict:
    """`leaf analyze` with the demo's settings and a detection rule; its summary (kept when it finished before)."""
    from leaf.analyze import AnalyzeConfig, run_analyze

    if not (output / "summary.json").exists():
        if output.exists():
            shutil.rmtree(output)
        args = dict(teacher=str(ctx.teacher), student=str(student), data=data, output=output, level="both",
                    gold="distractor_spans", batch_size=64, window=512, generator="hf", max_new_tokens=48,
                    device=ctx.config.device, seed=ctx.seed, **variant.analyze_args())
        run_analyze(AnalyzeConfig(**{**args, **extra}), progress=True)
    return json.loads((output / "summary.json").read_text())


def compare_detection_rules(ctx: SeedContext, student: Path) -> Detection:
    """Every detection rule on the validation split, with selection and verification; one chosen by its
    pruned-token F1 (or the one --variant names)."""
    from leaf.demo.experiment import VARIANTS, person_removed
    from leaf.records import read_samples

    ctx.log(f"seed {ctx.seed}: detection rules on the validation split")
    rules: dict[str, dict] = {}
    for k, variant in enumerate(VARIANTS):
        folder = ctx.out / "detection" / f"rule-{k}"
        summary = analyze(ctx, student, ctx.out / "validation.jsonl", folder, variant, level="instruction",
                          select=ctx.config.select, verify=ctx.config.verify)
        records = read_samples(folder, analysed_only=True)
        detection = summary.get("detection") or {}
        metrics = dict(detection.get(variant.threshold) or {})
        metrics["distractors"] = {**metrics.get("distractors", {}), "person_removed": person_removed(records)}
        rules[variant.name] = {**metrics, "label": variant.label,
                               "counterfactuals_kept": sum(1 for r in records for _ in r.counterfactuals()),
                               "counterfactuals_dropped": summary["counts"]["counterfactuals_dropped"],
                               "analysed": summary["counts"]["analysed"],
                               "baselines": {m: detection.get(m) for m in ("random", "ppl")}}
    if ctx.config.variant == "auto":
        chosen = max(VARIANTS, key=lambda v: rules[v.name].get("pruned", {}).get("f1", 0.0))
    else:
        chosen = next(v for v in VARIANTS if v.name == ctx.config.variant)
    return Detection(rules, chosen)


def analyze_pool(ctx: SeedContext, student: Path, splits: Splits, variant: Variant) -> PoolAnalysis:
    """The chosen rule on the pool (select + verify), then the controls on the same selected problems."""
    from leaf.demo.experiment import counterfactual_rows, write_jsonl
    from leaf.records import read_samples

    c = ctx.config
    ctx.log(f"seed {ctx.seed}: leaf analyze on the pool ({variant.name}), then the controls")
    summary = analyze(ctx, student, ctx.out / "pool.jsonl", ctx.out / "analyze", variant, select=c.select,
                      verify=c.verify)
    records = read_samples(ctx.out / "analyze", analysed_only=True)
    by_id = {p.id: p for p in splits.pool}
    kept = [by_id[r.id] for r in records]
    if not kept:
        raise LeafError("No training problem has the teacher right and the student wrong: nothing to distil. "
                        "Train the teacher longer (--retrain-teacher --teacher-steps N) or the student less.")
    write_jsonl(ctx.out / "selected.jsonl", [p.as_record() for p in kept])
    rows = {"gradient": counterfactual_rows(records)}
    sources = {s.source for s in c.chosen_settings()}
    controls = {"collective": dict(pruning="collective"),
                "random": dict(threshold="random", baseline_count=variant.threshold),
                "ppl": dict(threshold="ppl", baseline_count=variant.threshold)}
    for source, extra in controls.items():
        if source in sources:
            folder = ctx.out / f"analyze-{source}"
            analyze(ctx, student, ctx.out / "selected.jsonl", folder, variant, level="instruction", verify=c.verify,
                    **extra)
            rows[source] = counterfactual_rows(read_samples(folder, analysed_only=True))
    if "oracle" in sources:
        rows["oracle"] = oracle_counterfactuals(ctx, student, kept)
    return PoolAnalysis(summary, kept, rows)


def oracle_counterfactuals(ctx: SeedContext, student: Path, kept: list) -> list[dict]:
    """The clean twins of the selected problems, kept when both models answer them correctly (as verified)."""
    from leaf.demo.experiment import oracle_rows
    from leaf.demo.train import evaluate

    kept = [p for p in kept if p.distractors]
    if not ctx.config.verify:
        return oracle_rows(kept, [True] * len(kept))
    ok = [t and s for t, s in zip(evaluate(ctx.teacher, kept, clean=True), evaluate(student, kept, clean=True))]
    return oracle_rows(kept, ok)


def distill_settings(ctx: SeedContext, student: Path, splits: Splits, pool: PoolAnalysis) -> Distilled:
    """`leaf distill` in every chosen setting on the same originals (the selected problems plus clean ones)."""
    from leaf.demo.experiment import compute, first_step_kl, originals, write_jsonl
    from leaf.distill import DistillConfig, run_distill

    c = ctx.config
    selected = {p.id for p in pool.kept}
    clean = [p for p in splits.pool if not p.distractors and p.id not in selected][: round(c.clean_mix * len(selected))]
    data = write_jsonl(ctx.out / "originals.jsonl", originals(pool.kept, clean))
    models, rows = {"Pre-KD": str(student)}, {}
    steps = c.budget("distill_steps")
    for setting in c.chosen_settings():
        folder = ctx.out / "distill" / setting.folder
        cf_file = None
        levels = {"instr": {"instruction"}, "instr+resp": {"instruction", "response"}}.get(setting.mode, set())
        if setting.source is not None:
            kept_rows = [r for r in pool.counterfactuals[setting.source] if r["level"] in levels]
            rows[setting.name] = {"counterfactuals": len(kept_rows),
                                  "samples_with_counterfactual": len({r["id"] for r in kept_rows})}
            if not kept_rows:
                ctx.log(f"seed {ctx.seed}: {setting.name}: no counterfactual survived verification; skipped")
                rows[setting.name]["skipped"] = "0 counterfactuals kept"
                continue
            cf_file = write_jsonl(ctx.out / "counterfactuals" / f"{setting.folder}.jsonl", kept_rows)
        else:
            rows[setting.name] = {"counterfactuals": 0, "samples_with_counterfactual": 0}
        if not (folder / "final" / "model.safetensors").exists():
            if folder.exists():
                shutil.rmtree(folder)
            ctx.log(f"seed {ctx.seed}: leaf distill: {setting.name}")
            run_distill(DistillConfig(
                teacher=str(ctx.teacher), student=str(student), data=data, counterfactuals=cf_file, output=folder,
                mode=setting.mode, lam=setting.lam, max_steps=steps, batch_size=c.batch_size * setting.batch_scale,
                lr=c.lr, warmup=0.05, save_steps=10**6, seed=ctx.seed, device=c.device), progress=False)
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        rows[setting.name]["forward_tokens"] = compute(folder / "log.jsonl")
        rows[setting.name]["first_step_kl"] = first_step_kl(folder / "log.jsonl")
        models[setting.name] = str(folder / "final")
    models["Teacher"] = str(ctx.teacher)
    return Distilled(models, rows, {"selected": len(pool.kept), "clean_mixed_in": len(clean)})


def serve_models(ctx: SeedContext, splits: Splits, models: dict) -> Served:
    """`leaf serve` on every model over the test problems and their clean twins; the per-problem verdicts serve
    recorded, and per model the serve metrics of leaf.serve.metrics.SERVE_METRICS on the original prompts."""
    from leaf.serve import ServeConfig, run_serve
    from leaf.serve.metrics import SERVE_METRICS

    c = ctx.config
    serve_dir = ctx.out / "serve"
    done = serve_dir / "results.json"
    served = json.loads(done.read_text()) if done.exists() else None
    if served is None or served["settings"]["models"] != list(models.values()):
        if serve_dir.exists():
            shutil.rmtree(serve_dir)
        ctx.log(f"seed {ctx.seed}: leaf serve on {len(models)} models")
        served = run_serve(ServeConfig(
            models=list(models.values()), names=list(models), data=ctx.out / "test.jsonl", output=serve_dir,
            backend=c.backend, max_tokens=48, iterations=c.budget("serve_iterations"), warmup=1,
            focus_samples=c.budget("focus_samples"), device=c.device, batch_size=64, seed=ctx.seed), progress=True)
    order = [p.id for p in splits.test]
    verdicts: dict[tuple[str, str], dict[str, bool | None]] = {}   # serve's own grades, per problem
    for line in (serve_dir / "generations.jsonl").read_text().splitlines():
        g = json.loads(line)
        verdicts.setdefault((g["model"], g["set"]), {})[str(g["id"])] = g.get("correct")
    missing = [(name, key) for name in models for key in ("original", "clean")
               if set(verdicts.get((name, key), {})) != set(order)
               or any(v is None for v in verdicts[(name, key)].values())]
    if missing:
        raise LeafError(f"{serve_dir}/generations.jsonl lacks graded answers for {missing[0][0]} "
                        f"({missing[0][1]}): the serve folder does not match this test set. Delete it and rerun.")
    outcomes = {name: {s: [int(verdicts[(name, key)][i]) for i in order]
                       for s, key in (("distractor", "original"), ("clean", "clean"))} for name in models}
    figures = {}
    for name in models:
        entry = served["models"][name]
        original = entry["sets"]["original"]
        figures[name] = {**{m.key: original.get(m.key) for m in SERVE_METRICS if m.table},
                         "serve_focus": (entry.get("attention_focus") or {}).get("focus")}
    return Served(outcomes, served["models"]["Pre-KD"]["engine"]["engine"], figures)


def measure_focus(ctx: SeedContext, student: Path, splits: Splits, models: dict) -> Focus:
    """Attention focus at the number-emitting positions, per layer and head; the head chosen on validation."""
    from leaf.demo.focus import choose_head, distractor_shares, focus_summary
    from leaf.demo.train import evaluate
    from leaf.hooks import load_model

    n = ctx.config.budget("focus_samples")
    validation = splits.validation[:n]
    pre = load_model(str(student), device=ctx.config.device)
    head = choose_head(distractor_shares(pre, validation), evaluate(student, validation))
    test = splits.test[:n]
    summaries = {}
    for name, path in models.items():
        model = pre if name == "Pre-KD" else load_model(path, device=ctx.config.device)
        summaries[name] = focus_summary(distractor_shares(model, test), None if name == "Teacher" else head)
    return Focus(head, summaries)


def progress_bar(name: str, total: int):
    """A training loop's on_step: a transient rich bar on stderr with the loss."""
    from rich.console import Console
    from rich.progress import Progress

    progress = Progress(transient=True, console=Console(stderr=True))
    task = progress.add_task(f"training {name}", total=total)

    def step(done: int, loss: float) -> None:
        if done == 1:
            progress.start()
        progress.update(task, completed=done, description=f"training {name} (loss {loss:.3f})")
        if done == total:
            progress.stop()

    return step
