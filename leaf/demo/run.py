"""`leaf demo`: the whole method end to end on the embedded task, as a controlled experiment.

    leaf demo                 # one seed, 1,000 test problems (~8 minutes on 2 CPU cores)
    leaf demo --quick         # a smoke test of every stage and row (~2 minutes)
    leaf demo --full          # the powered setting: 5 seeds x 2,000 test problems (~45 minutes; README table)

Per seed:
1. Problems from `leaf.demo.task` (seeded): a training pool, a validation split and a test set of distractor
   problems with clean twins. Teacher: the checkpoint shipped in the package. Student: a smaller model trained on
   clean problems only, so that distractors mislead it.
2. Detection rules compared on the validation split (`leaf analyze --select --verify` with the true spans): the
   paper's token rule, spans grown to clauses or sentences, the lowest-Δ sentence; one is chosen by its pruned-token
   F1 (or named with --variant).
3. `leaf analyze --select --verify` on the pool with the chosen rule (teacher right, student wrong; counterfactuals
   that both still answer correctly), then the controls on the same selected problems: random and perplexity masks
   with as many flagged tokens per problem, collective pruning, and the oracle (the clean twin, verified alike).
4. `leaf distill` in every setting (leaf.demo.experiment.SETTINGS) on the same originals (the selected problems
   plus clean problems mixed in), steps, batch, learning rate and seed.
5. `leaf serve` on every student and the teacher: greedy accuracy per test problem (distractor and clean twin),
   throughput; attention focus per layer and head at the number-emitting positions, the head chosen on validation.
6. Over seeds: accuracy with bootstrap intervals, paired differences against KD, random masks and the oracle with
   intervals over problems and seeds, the verdict they imply, and the power of the comparison
   (results.json, RESULTS.md, accuracy.png).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.demo.experiment import SETTING_NAMES, SETTINGS, VARIANT_NAMES, VARIANTS, Setting, Variant
from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.options import doc

ASSET_TEACHER = Path(__file__).parent / "assets" / "teacher"
# budgets: (quick, default, full)
BUDGETS = {"seeds": (1, 1, 5), "student_steps": (300, 1200, 1200), "distill_steps": (40, 300, 300),
           "pool": (300, 1500, 1500), "validation": (60, 200, 400), "test_size": (200, 1000, 2000),
           "focus_samples": (40, 200, 300)}


@dataclass
class DemoConfig:
    output: Path = field(default=Path("leaf-demo"), metadata=doc("Results folder."))
    quick: bool = field(default=False, metadata=doc("Small budgets (~2 minutes): a smoke test of every stage and row."))
    full: bool = field(default=False, metadata=doc(
        "The powered setting: 5 seeds x 2,000 test problems (about 45 minutes on 2 CPU cores)."))
    seeds: int | None = field(default=None, metadata=doc("Seeds 0..N-1 (default 1; --full 5)."))
    student_steps: int | None = field(default=None, metadata=doc("Student pre-training steps (default 1200)."))
    distill_steps: int | None = field(default=None, metadata=doc("Steps per distillation setting (default 300)."))
    pool: int | None = field(default=None, metadata=doc("Training problems screened by --select (default 1500)."))
    validation: int | None = field(default=None, metadata=doc(
        "Validation problems for choosing the detection rule and the attention head (default 200)."))
    test_size: int | None = field(default=None, metadata=doc("Distractor test problems (default 1000; --full 2000)."))
    focus_samples: int | None = field(default=None, metadata=doc("Problems for attention focus (default 200)."))
    settings: list[str] = field(default_factory=lambda: list(SETTING_NAMES), metadata=doc(
        "Distillation settings to run (default all): " + ", ".join(SETTING_NAMES) + "."))
    variant: str = field(default="auto", metadata=doc(
        "Detection rule for the LeaF rows: auto (the best pruned-token F1 on validation), paper (token flags, word "
        "spans), clause or sentence (flags grown to their clause / sentence), lowest-sentence (the sentence with the "
        "lowest mean Δ)."))
    select: bool = field(default=True, metadata=doc("Distil on problems the teacher gets right and the student wrong."))
    verify: bool = field(default=True, metadata=doc("Keep counterfactuals both models answer correctly."))
    clean_mix: float = field(default=0.5, metadata=doc(
        "Clean problems (no distractors) added to the distillation originals, as a share of the selected ones."))
    leak: float = field(default=0.0, metadata=doc(
        "Task variant: share of training problems whose first distractor states the answer (a spurious "
        "correlation the teacher does not use); test problems never have it."))
    lr: float = field(default=1e-3, metadata=doc("Distillation learning rate (every setting)."))
    batch_size: int = field(default=16, metadata=doc("Distillation batch (every setting; the 2x-batch KD row doubles it)."))
    teacher: str | None = field(default=None, metadata=doc("Teacher folder (default: the one shipped with leaf)."))
    retrain_teacher: bool = field(default=False, metadata=doc("Train the teacher now (about 20 minutes)."))
    teacher_steps: int = field(default=2000, metadata=doc("Teacher training steps when training it."))
    backend: str = field(default="auto", metadata=doc("Generation backend of the serve step: auto, vllm, hf."))
    device: str = field(default="cpu", metadata=doc("cpu or cuda."))

    def __post_init__(self) -> None:
        self.output = check_output_folder(self.output, allow_nonempty=True)
        unknown = [s for s in self.settings if s not in SETTING_NAMES]
        checks = [
            (not (self.quick and self.full), "Give --quick or --full, not both."),
            (self.seeds is None or self.seeds >= 1, "--seeds must be at least 1."),
            (not unknown, f"Unknown setting(s) {', '.join(map(repr, unknown))}. Available: {', '.join(SETTING_NAMES)}."),
            ("KD w/o mask" in self.settings, "The settings must include 'KD w/o mask': every comparison is against it."),
            (self.variant == "auto" or self.variant in VARIANT_NAMES,
             f"Unknown --variant {self.variant!r}. Available: auto, {', '.join(VARIANT_NAMES)}."),
            (0 <= self.clean_mix <= 4, f"--clean-mix is a share of the selected problems in [0, 4], got {self.clean_mix}."),
            (0 <= self.leak <= 1, f"--leak is a probability, got {self.leak}."),
            (self.lr > 0 and self.batch_size >= 1, "--lr must be positive and --batch-size at least 1."),
        ]
        for ok, message in checks:
            if not ok:
                raise LeafError(message)

    @property
    def preset(self) -> str:
        return "quick" if self.quick else "full" if self.full else "default"

    def budget(self, name: str) -> int:
        value = getattr(self, name)
        return value if value is not None else BUDGETS[name][("quick", "default", "full").index(self.preset)]

    def chosen_settings(self) -> list[Setting]:
        return [s for s in SETTINGS if s.name in self.settings]

    def seed_fingerprint(self, teacher: Path) -> dict:
        """What one seed's results depend on: a rerun into the same folder continues only with the same values, and
        with the same code (`code`: leaf's version and source digest) and teacher weights."""
        from leaf.run_folder import code_version, file_digest

        skip = {"output", "seeds", "quick", "full", "retrain_teacher", "teacher_steps", "teacher", "device", "backend"}
        values = {k: v for k, v in asdict(self).items() if k not in skip and k not in BUDGETS}
        return {**values, **{k: self.budget(k) for k in BUDGETS if k != "seeds"}, "teacher": str(teacher),
                "teacher_sha256": file_digest(teacher / "model.safetensors"), "code": code_version()}


def get_teacher(config: DemoConfig, log) -> Path:
    """The shipped teacher, a given one, or one trained now into OUTPUT/teacher."""
    from leaf.demo.task import teacher_problems
    from leaf.demo.train import TEACHER_SIZE, encode, new_model, train

    if config.teacher:
        return Path(config.teacher)
    if ASSET_TEACHER.exists() and not config.retrain_teacher:
        return ASSET_TEACHER
    folder = config.output / "teacher"
    if (folder / "leaf_demo_training.json").exists():
        return folder
    log(f"training the teacher ({config.teacher_steps} steps, batch 64; about 0.6 s a step on 2 cores)")
    new_model(folder, TEACHER_SIZE, seed=1)
    from transformers import AutoTokenizer

    encoded = encode(AutoTokenizer.from_pretrained(folder), teacher_problems())
    train(folder, encoded, steps=config.teacher_steps, lr=2e-3, seed=0, on_step=_bar("teacher", config.teacher_steps))
    return folder


@functools.lru_cache(maxsize=1)
def _teacher_texts() -> frozenset[str]:
    """The shipped teacher's training questions, as posed and as clean twins (drawn once per process, not per seed)."""
    from leaf.demo.task import teacher_problems, texts

    return frozenset(texts(teacher_problems()))


def _bar(name: str, total: int):
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


class SeedRun:
    """One seed of the experiment in OUTPUT/seed-N; every stage skips work a previous run finished."""

    def __init__(self, config: DemoConfig, teacher: Path, seed: int, log) -> None:
        from leaf.io import write_json_atomic

        self.config, self.teacher, self.seed, self.log = config, teacher, seed, log
        self.out = config.output / f"seed-{seed}"
        fingerprint, stored = config.seed_fingerprint(teacher), self.out / "settings.json"
        if stored.exists():
            before = json.loads(stored.read_text())
            changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
            if changed == ["code"]:  # the same settings on other code: every stage runs again (nothing is reused)
                log(f"seed {seed}: leaf's code changed since {self.out} ran ({before.get('code')} -> "
                    f"{fingerprint['code']}): its stages run again")
                shutil.rmtree(self.out)
            elif changed:
                raise LeafError(f"{self.out} holds a demo run with other settings ({', '.join(changed)} differ), and "
                                "its finished stages would be reused. Choose another --output (nothing was "
                                "overwritten).")
        elif self.out.exists() and any(self.out.iterdir()):
            raise LeafError(f"{self.out} exists and is not a leaf demo seed folder. Choose another --output.")
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(stored, fingerprint)
        self.timing: dict[str, float] = {}
        self.clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timing[name] = round(now - self.clock, 1)
        self.clock = now

    # -- stages ------------------------------------------------------------------------------------------------
    def data(self) -> None:
        from leaf.demo.experiment import write_jsonl
        from leaf.demo.task import demo_splits, texts

        c, seed = self.config, self.seed
        splits = demo_splits(seed, pool=c.budget("pool"), validation=c.budget("validation"),
                             test=c.budget("test_size"), leak=c.leak)
        self.pool, self.validation, self.test = splits["pool"], splits["validation"], splits["test"]
        for name, problems in (("pool", self.pool), ("validation", self.validation), ("test", self.test)):
            write_jsonl(self.out / f"{name}.jsonl", [p.as_record() for p in problems])
        self.held_out = texts(self.test) | texts(self.validation)
        # the shipped teacher's training problems are fixed: how many test problems it saw
        seen = _teacher_texts() if self.teacher == ASSET_TEACHER else frozenset()
        self.splits = {name: len(problems) for name, problems in splits.items()}
        self.splits["test_seen_by_teacher"] = {
            "distractor": sum(p.question in seen for p in self.test),
            "clean_twin": sum(p.clean_question in seen for p in self.test)} if seen else None

    def student(self) -> None:
        from transformers import AutoTokenizer

        from leaf.demo.task import student_problems
        from leaf.demo.train import STUDENT_SIZE, encode, new_model, train

        self.student_path = self.out / "student"
        if (self.student_path / "leaf_demo_training.json").exists():
            return
        if self.student_path.exists():
            shutil.rmtree(self.student_path)
        new_model(self.student_path, STUDENT_SIZE, seed=100 + self.seed)
        steps = self.config.budget("student_steps")
        encoded = encode(AutoTokenizer.from_pretrained(self.student_path),
                         student_problems(20000, self.seed, self.held_out), clean=True)
        self.log(f"seed {self.seed}: training the student on clean problems ({steps} steps)")
        train(self.student_path, encoded, steps=steps, seed=self.seed, on_step=_bar(f"student (seed {self.seed})",
                                                                                    steps))

    def analyze(self, data: Path, output: Path, variant: Variant, **extra) -> dict:
        from leaf.analyze import AnalyzeConfig, run_analyze

        if not (output / "summary.json").exists():
            if output.exists():
                shutil.rmtree(output)
            args = dict(teacher=str(self.teacher), student=str(self.student_path), data=data, output=output,
                        level="both", gold="distractor_spans", batch_size=64, window=512, generator="hf",
                        max_new_tokens=48, device=self.config.device, seed=self.seed, **variant.analyze_args())
            run_analyze(AnalyzeConfig(**{**args, **extra}), progress=True)
        return json.loads((output / "summary.json").read_text())

    def detection_variants(self) -> None:
        """Every detection rule on the validation split, with selection and verification; choose one."""
        from leaf.demo.experiment import person_removed
        from leaf.records import read_samples

        self.log(f"seed {self.seed}: detection rules on the validation split")
        self.detection: dict[str, dict] = {}
        for k, variant in enumerate(VARIANTS):
            folder = self.out / "detection" / f"rule-{k}"
            summary = self.analyze(self.out / "validation.jsonl", folder, variant, level="instruction",
                                   select=self.config.select, verify=self.config.verify)
            records = read_samples(folder, analysed_only=True)
            kept = sum(1 for r in records for _ in r.counterfactuals())
            metrics = dict((summary.get("detection") or {}).get(variant.threshold) or {})
            metrics["distractors"] = {**metrics.get("distractors", {}), "person_removed": person_removed(records)}
            self.detection[variant.name] = {**metrics, "label": variant.label, "counterfactuals_kept": kept,
                                            "counterfactuals_dropped": summary["counts"]["counterfactuals_dropped"],
                                            "analysed": summary["counts"]["analysed"],
                                            "baselines": {m: (summary.get("detection") or {}).get(m)
                                                          for m in ("random", "ppl")}}
        if self.config.variant == "auto":
            best = max(VARIANTS, key=lambda v: self.detection[v.name].get("pruned", {}).get("f1", 0.0))
        else:
            best = next(v for v in VARIANTS if v.name == self.config.variant)
        self.variant = best

    def pool_analysis(self) -> None:
        """The chosen rule on the pool (select + verify), then the controls on the same selected problems."""
        from leaf.demo.experiment import counterfactual_rows, write_jsonl
        from leaf.records import read_samples

        c = self.config
        self.log(f"seed {self.seed}: leaf analyze on the pool ({self.variant.name}), then the controls")
        self.pool_summary = self.analyze(self.out / "pool.jsonl", self.out / "analyze", self.variant,
                                         select=c.select, verify=c.verify)
        records = read_samples(self.out / "analyze", analysed_only=True)
        by_id = {p.id: p for p in self.pool}
        self.kept = [by_id[r.id] for r in records]
        if not self.kept:
            raise LeafError("No training problem has the teacher right and the student wrong: nothing to distil. "
                            "Train the teacher longer (--retrain-teacher --teacher-steps N) or the student less.")
        write_jsonl(self.out / "selected.jsonl", [p.as_record() for p in self.kept])
        self.cf_rows = {"gradient": counterfactual_rows(records)}
        sources = {s.source for s in c.chosen_settings()}
        controls = {"collective": dict(pruning="collective"),
                    "random": dict(threshold="random", baseline_count=self.variant.threshold),
                    "ppl": dict(threshold="ppl", baseline_count=self.variant.threshold)}
        for source, extra in controls.items():
            if source in sources:
                folder = self.out / f"analyze-{source}"
                self.analyze(self.out / "selected.jsonl", folder, self.variant, level="instruction", verify=c.verify,
                             **extra)
                self.cf_rows[source] = counterfactual_rows(read_samples(folder, analysed_only=True))
        if "oracle" in sources:
            self.cf_rows["oracle"] = self.oracle()

    def oracle(self) -> list[dict]:
        """The clean twins of the selected problems, kept when both models answer them correctly (as verified)."""
        from leaf.demo.experiment import oracle_rows
        from leaf.demo.train import evaluate

        kept = [p for p in self.kept if p.distractors]
        if not self.config.verify:
            return oracle_rows(kept, [True] * len(kept))
        ok = [t and s for t, s in zip(evaluate(self.teacher, kept, clean=True),
                                      evaluate(self.student_path, kept, clean=True))]
        return oracle_rows(kept, ok)

    def distill(self) -> None:
        from leaf.demo.experiment import compute, first_step_kl, originals, write_jsonl
        from leaf.distill import DistillConfig, run_distill

        c = self.config
        kept = {p.id for p in self.kept}
        clean = [p for p in self.pool if not p.distractors and p.id not in kept][: round(c.clean_mix * len(kept))]
        data = write_jsonl(self.out / "originals.jsonl", originals(self.kept, clean))
        self.models = {"Pre-KD": str(self.student_path)}
        self.rows: dict[str, dict] = {}
        steps = c.budget("distill_steps")
        for setting in c.chosen_settings():
            folder = self.out / "distill" / setting.folder
            cf_file = None
            levels = {"instr": {"instruction"}, "instr+resp": {"instruction", "response"}}.get(setting.mode, set())
            if setting.source is not None:
                rows = [r for r in self.cf_rows[setting.source] if r["level"] in levels]
                self.rows[setting.name] = {"counterfactuals": len(rows),
                                           "samples_with_counterfactual": len({r["id"] for r in rows})}
                if not rows:
                    self.log(f"seed {self.seed}: {setting.name}: no counterfactual survived verification; skipped")
                    self.rows[setting.name]["skipped"] = "0 counterfactuals kept"
                    continue
                cf_file = write_jsonl(self.out / "counterfactuals" / f"{setting.folder}.jsonl", rows)
            else:
                self.rows[setting.name] = {"counterfactuals": 0, "samples_with_counterfactual": 0}
            if not (folder / "final" / "model.safetensors").exists():
                if folder.exists():
                    shutil.rmtree(folder)
                self.log(f"seed {self.seed}: leaf distill: {setting.name}")
                run_distill(DistillConfig(
                    teacher=str(self.teacher), student=str(self.student_path), data=data, counterfactuals=cf_file,
                    output=folder, mode=setting.mode, lam=setting.lam, max_steps=steps,
                    batch_size=c.batch_size * setting.batch_scale, lr=c.lr, warmup=0.05, save_steps=10**6,
                    seed=self.seed, device=c.device), progress=False)
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            self.rows[setting.name]["forward_tokens"] = compute(folder / "log.jsonl")
            self.rows[setting.name]["first_step_kl"] = first_step_kl(folder / "log.jsonl")
            self.models[setting.name] = str(folder / "final")
        self.models["Teacher"] = str(self.teacher)
        self.originals = {"selected": len(self.kept), "clean_mixed_in": len(clean)}

    def serve(self) -> None:
        from leaf.serve import ServeConfig, run_serve

        c = self.config
        serve_dir = self.out / "serve"
        done = serve_dir / "results.json"
        served = json.loads(done.read_text()) if done.exists() else None
        if served is None or served["settings"]["models"] != list(self.models.values()):
            if serve_dir.exists():
                shutil.rmtree(serve_dir)
            self.log(f"seed {self.seed}: leaf serve on {len(self.models)} models")
            served = run_serve(ServeConfig(
                models=list(self.models.values()), names=list(self.models), data=self.out / "test.jsonl",
                output=serve_dir, backend=c.backend, max_tokens=48, iterations=2, warmup=1,
                focus_samples=c.budget("focus_samples"), device=c.device, batch_size=64, seed=self.seed),
                progress=True)
        order = [p.id for p in self.test]
        verdicts: dict[tuple[str, str], dict[str, bool | None]] = {}   # serve's own grades, per problem
        for line in (serve_dir / "generations.jsonl").read_text().splitlines():
            g = json.loads(line)
            verdicts.setdefault((g["model"], g["set"]), {})[str(g["id"])] = g.get("correct")
        missing = [(name, key) for name in self.models for key in ("original", "clean")
                   if set(verdicts.get((name, key), {})) != set(order)
                   or any(v is None for v in verdicts[(name, key)].values())]
        if missing:
            raise LeafError(f"{serve_dir}/generations.jsonl lacks graded answers for {missing[0][0]} "
                            f"({missing[0][1]}): the serve folder does not match this test set. Delete it and rerun.")
        self.outcomes = {name: {s: [int(verdicts[(name, key)][i]) for i in order]
                                for s, key in (("distractor", "original"), ("clean", "clean"))}
                         for name in self.models}
        self.engine = served["models"]["Pre-KD"]["engine"]["engine"]
        for name in self.models:
            entry = served["models"][name]
            row = self.rows.setdefault(name, {})
            row["output_throughput"] = entry["sets"]["original"]["output_throughput"]
            row["serve_focus"] = (entry.get("attention_focus") or {}).get("focus")

    def focus(self) -> None:
        """Attention focus at the number-emitting positions, per layer and head; the head chosen on validation."""
        from leaf.demo.focus import choose_head, distractor_shares, focus_summary
        from leaf.demo.train import evaluate
        from leaf.hooks import load_model

        n = self.config.budget("focus_samples")
        validation = self.validation[:n]
        pre = load_model(str(self.student_path), device=self.config.device)
        self.head = choose_head(distractor_shares(pre, validation), evaluate(self.student_path, validation))
        test = self.test[:n]
        for name, path in self.models.items():
            model = pre if name == "Pre-KD" else load_model(path, device=self.config.device)
            self.rows[name]["focus"] = focus_summary(distractor_shares(model, test),
                                                     None if name == "Teacher" else self.head)

    def run(self) -> dict:
        self.log(f"seed {self.seed}: data, student, detection rules, analyze + controls, "
                 f"{len(self.config.chosen_settings())} distillations, serve")
        self.data()
        self.student()
        self.lap("student")
        self.detection_variants()
        self.lap("detection_rules")
        self.pool_analysis()
        self.lap("analyze")
        self.distill()
        self.lap("distill")
        self.serve()
        self.lap("serve")
        self.focus()
        self.lap("focus")
        from leaf.io import write_json_atomic

        # a rerun skips finished stages: keep the time each stage took when it last did its work
        timing_file = self.out / "timing.json"
        before = json.loads(timing_file.read_text()) if timing_file.exists() else {}
        self.timing = {k: max(v, before.get(k, 0.0)) for k, v in self.timing.items()}
        write_json_atomic(timing_file, self.timing)
        write_json_atomic(self.out / "outcomes.json", self.outcomes)
        counts = self.pool_summary["counts"]
        names = ["Pre-KD", *(s.name for s in self.config.chosen_settings()), "Teacher"]
        return {"seed": self.seed, "names": names, "rows": self.rows, "splits": self.splits,
                "parameters": {"teacher": parameter_count(self.teacher),
                               "student": parameter_count(self.student_path)}, "engine": self.engine, "timing": self.timing,
                "detection_validation": self.detection, "variant": self.variant.name,
                "pool_detection": self.pool_summary.get("detection"), "head": self.head.as_json(),
                "selection": {"pool": len(self.pool), "analysed": counts["analysed"],
                              "filtered_selection": counts["filtered_selection"],
                              "counterfactuals_kept": sum(r["level"] == "instruction" for r in self.cf_rows["gradient"]),
                              "counterfactuals_dropped": counts["counterfactuals_dropped"], **self.originals}}


def parameter_count(folder: Path) -> int:
    """Parameters of a model folder, from its safetensors header (a tied head is stored, and counted, once)."""
    import math

    from safetensors import safe_open

    with safe_open(str(Path(folder) / "model.safetensors"), "pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


def run_demo(config: DemoConfig, *, log=print) -> dict:
    from leaf.demo.report import aggregate, plot_results, results_markdown
    from leaf.io import write_json_atomic, write_text_atomic

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # keep the demo's output readable
    start = time.perf_counter()
    config.output.mkdir(parents=True, exist_ok=True)
    teacher = get_teacher(config, log)
    per_seed, outcomes = [], []
    for seed in range(config.budget("seeds")):
        per_seed.append(SeedRun(config, teacher, seed, log).run())
        outcomes.append(json.loads((config.output / f"seed-{seed}" / "outcomes.json").read_text()))
    results = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
               "preset": config.preset, "teacher": str(teacher), "per_seed": per_seed,
               "seconds": round(time.perf_counter() - start, 1)}
    results.update(aggregate(per_seed, outcomes))
    write_json_atomic(config.output / "results.json", results)
    write_text_atomic(config.output / "RESULTS.md", results_markdown(results))
    plot_results(results, config.output / "accuracy.png")
    first = config.output / "seed-0"
    shutil.copyfile(first / "analyze" / "report.html", config.output / "analyze_report.html")
    shutil.copyfile(first / "serve" / "results.png", config.output / "serve.png")
    return results
