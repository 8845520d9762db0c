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

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.demo.experiment import SETTING_NAMES, SETTINGS, VARIANT_NAMES, Setting
from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.options import doc

ASSET_TEACHER = Path(__file__).parent / "assets" / "teacher"
# budgets: (quick, default, full)
BUDGETS = {"seeds": (1, 1, 5), "student_steps": (300, 1200, 1200), "distill_steps": (40, 300, 300),
           "pool": (300, 1500, 1500), "validation": (60, 200, 400), "test_size": (200, 1000, 2000),
           "focus_samples": (40, 200, 300), "serve_iterations": (1, 2, 2)}


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
    serve_iterations: int | None = field(default=None, metadata=doc(
        "Timed serve runs of each model and prompt set, for the throughput panel's spread (default 2; --quick 1; "
        "accuracy reads the first)."))
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
            (self.serve_iterations is None or self.serve_iterations >= 1, "--serve-iterations must be at least 1."),
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
    from leaf.demo.stages import progress_bar
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
    train(folder, encoded, steps=config.teacher_steps, lr=2e-3, seed=0,
          on_step=progress_bar("teacher", config.teacher_steps))
    return folder


def prepare_seed_folder(config: DemoConfig, teacher: Path, seed: int, log) -> Path:
    """OUTPUT/seed-N, ready for the stages: a folder of an earlier run continues only with the same settings (its
    finished stages are reused), starts over when only leaf's code changed, and anything else is refused."""
    from leaf.io import write_json_atomic

    out = config.output / f"seed-{seed}"
    fingerprint, stored = config.seed_fingerprint(teacher), out / "settings.json"
    if stored.exists():
        before = json.loads(stored.read_text())
        changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
        if changed == ["code"]:  # the same settings on other code: every stage runs again (nothing is reused)
            log(f"seed {seed}: leaf's code changed since {out} ran ({before.get('code')} -> "
                f"{fingerprint['code']}): its stages run again")
            shutil.rmtree(out)
        elif changed:
            raise LeafError(f"{out} holds a demo run with other settings ({', '.join(changed)} differ), and "
                            "its finished stages would be reused. Choose another --output (nothing was "
                            "overwritten).")
    elif out.exists() and any(out.iterdir()):
        raise LeafError(f"{out} exists and is not a leaf demo seed folder. Choose another --output.")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stored, fingerprint)
    return out


class _Laps:
    """Seconds per stage; a rerun skips finished stages, so a stage keeps the longest time it took."""

    def __init__(self) -> None:
        self.timing: dict[str, float] = {}
        self.clock = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timing[name] = round(now - self.clock, 1)
        self.clock = now


def run_seed(config: DemoConfig, teacher: Path, seed: int, log) -> dict:
    """One seed of the experiment in OUTPUT/seed-N (leaf.demo.stages, in order); its row of results.json."""
    from leaf.demo import stages
    from leaf.io import write_json_atomic

    ctx = stages.SeedContext(config, teacher, seed, prepare_seed_folder(config, teacher, seed, log), log,
                             shipped_teacher=teacher == ASSET_TEACHER)
    laps = _Laps()
    log(f"seed {seed}: data, student, detection rules, analyze + controls, "
        f"{len(config.chosen_settings())} distillations, serve")
    splits = stages.make_splits(ctx)
    student = stages.train_student(ctx, splits)
    laps.lap("student")
    detection = stages.compare_detection_rules(ctx, student)
    laps.lap("detection_rules")
    pool = stages.analyze_pool(ctx, student, splits, detection.variant)
    laps.lap("analyze")
    distilled = stages.distill_settings(ctx, student, splits, pool)
    laps.lap("distill")
    served = stages.serve_models(ctx, splits, distilled.models)
    laps.lap("serve")
    focus = stages.measure_focus(ctx, student, splits, distilled.models)
    laps.lap("focus")

    timing_file = ctx.out / "timing.json"
    before = json.loads(timing_file.read_text()) if timing_file.exists() else {}
    timing = {k: max(v, before.get(k, 0.0)) for k, v in laps.timing.items()}
    write_json_atomic(timing_file, timing)
    write_json_atomic(ctx.out / "outcomes.json", served.outcomes)
    rows = {name: dict(row) for name, row in distilled.rows.items()}   # skipped settings keep their reason
    for name in distilled.models:
        rows.setdefault(name, {}).update({**served.figures[name], "focus": focus.summaries[name]})
    counts = pool.summary["counts"]
    return {"seed": seed, "names": ["Pre-KD", *(s.name for s in config.chosen_settings()), "Teacher"],
            "rows": rows, "splits": splits.counts,
            "parameters": {"teacher": parameter_count(teacher), "student": parameter_count(student)},
            "engine": served.engine, "timing": timing, "detection_validation": detection.rules,
            "variant": detection.variant.name, "pool_detection": pool.summary.get("detection"),
            "head": focus.head.as_json(),
            "selection": {"pool": len(splits.pool), "analysed": counts["analysed"],
                          "filtered_selection": counts["filtered_selection"],
                          "counterfactuals_kept": sum(r["level"] == "instruction"
                                                      for r in pool.counterfactuals["gradient"]),
                          "counterfactuals_dropped": counts["counterfactuals_dropped"], **distilled.originals}}


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
        per_seed.append(run_seed(config, teacher, seed, log))
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
