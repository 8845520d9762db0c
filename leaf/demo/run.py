"""`leaf demo`: the whole method end to end on the embedded task, in the shape of the paper's results table.

    leaf demo                 # ~10 minutes on 2 CPU cores
    leaf demo --quick         # ~2 minutes, smaller budgets (smoke test)
    leaf demo --seeds 3       # mean ± std over 3 seeds

1. Problems from `leaf.demo.task` (seeded): a training pool, and a test set of distractor problems with clean twins.
2. Teacher: the checkpoint shipped in the package (trained by `leaf demo --retrain-teacher`, recipe in its
   leaf_demo_training.json), or trained now. Student: a smaller model trained on clean problems only, per seed, so
   that distractors mislead it.
3. `leaf analyze` on the training problems where the teacher is right and the student wrong: detection precision,
   recall and F1 against the true distractor spans for every threshold mode and the random / ppl baselines. Then
   on the whole training pool, whose counterfactuals the distillation uses.
4. `leaf distill` from the same student in three settings with the same steps and data (the pool): KD w/o mask
   (λ = 1), LeaF instr, LeaF instr+resp; plus Pre-KD (no distillation).
5. `leaf serve` on the students (and the teacher): accuracy on the distractor test set and on its clean twins,
   throughput, attention focus on the distractor spans.
6. results.json, RESULTS.md (the table), results.png, the analyze report.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.options import doc

ASSET_TEACHER = Path(__file__).parent / "assets" / "teacher"
SETTINGS = ("Pre-KD", "KD w/o mask", "LeaF instr", "LeaF instr+resp")


@dataclass
class DemoConfig:
    output: Path = field(default=Path("leaf-demo"), metadata=doc("Results folder."))
    quick: bool = field(default=False, metadata=doc("Smaller budgets (~2 minutes): a smoke test of the pipeline."))
    seeds: int = field(default=1, metadata=doc("Repeat with seeds 0..N-1 and report mean ± std."))
    student_steps: int | None = field(default=None, metadata=doc("Student pre-training steps (default 1200; quick 300)."))
    distill_steps: int | None = field(default=None, metadata=doc("Steps per distillation setting (default 300; quick 30)."))
    pool: int | None = field(default=None, metadata=doc("Training problems screened for analysis (default 1500; quick 300)."))
    test_size: int | None = field(default=None, metadata=doc("Distractor test problems (default 1000; quick 200)."))
    teacher: str | None = field(default=None, metadata=doc("Teacher folder (default: the one shipped with leaf)."))
    retrain_teacher: bool = field(default=False, metadata=doc("Train the teacher now (about 15 minutes)."))
    teacher_steps: int = field(default=2000, metadata=doc("Teacher training steps when training it."))
    backend: str = field(default="auto", metadata=doc("Generation backend of the serve step: auto, vllm, hf."))
    device: str = field(default="cpu", metadata=doc("cpu or cuda."))

    def __post_init__(self) -> None:
        self.output = Path(self.output)
        if self.seeds < 1:
            raise LeafError("--seeds must be at least 1.")

    def budget(self, name: str) -> int:
        defaults = {"student_steps": (1200, 300), "distill_steps": (300, 30), "pool": (1500, 240),
                    "test_size": (1000, 200)}
        value = getattr(self, name)
        return value if value is not None else defaults[name][int(self.quick)]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    from leaf.io import write_text_atomic

    return write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def get_teacher(config: DemoConfig, log) -> Path:
    """The shipped teacher, a given one, or one trained now into OUTPUT/teacher."""
    from leaf.demo.task import generate
    from leaf.demo.train import TEACHER_SIZE, encode, new_model, train

    if config.teacher:
        return Path(config.teacher)
    if ASSET_TEACHER.exists() and not config.retrain_teacher:
        return ASSET_TEACHER
    folder = config.output / "teacher"
    if (folder / "leaf_demo_training.json").exists():
        return folder
    log(f"training the teacher ({config.teacher_steps} steps, batch 64; about 0.4 s a step on 2 cores)")
    new_model(folder, TEACHER_SIZE, seed=1)
    from transformers import AutoTokenizer

    encoded = encode(AutoTokenizer.from_pretrained(folder), generate(40000, 11, prefix="train-"))
    train(folder, encoded, steps=config.teacher_steps, lr=2e-3, seed=0, on_step=_bar("teacher", config.teacher_steps))
    return folder


def _bar(name: str, total: int):
    from rich.progress import Progress

    progress = Progress(transient=True)
    task = progress.add_task(f"training {name}", total=total)

    def step(done: int, loss: float) -> None:
        if done == 1:
            progress.start()
        progress.update(task, completed=done, description=f"training {name} (loss {loss:.3f})")
        if done == total:
            progress.stop()

    return step


def run_seed(config: DemoConfig, teacher: Path, seed: int, log) -> dict:
    from transformers import AutoTokenizer

    from leaf.analyze import AnalyzeConfig, run_analyze
    from leaf.demo.task import generate
    from leaf.demo.train import STUDENT_SIZE, encode, evaluate, new_model, train
    from leaf.distill import DistillConfig, run_distill
    from leaf.serve import ServeConfig, run_serve

    out = config.output / f"seed-{seed}"
    out.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[name] = round(now - clock, 1)
        clock = now

    # 1. data
    pool = generate(config.budget("pool"), 1000 + seed, prefix="pool-")
    test = generate(config.budget("test_size"), 2000 + seed, distractors=(1, 2), prefix="test-")
    _write_jsonl(out / "test.jsonl", [p.as_record() for p in test])
    # 2. student on clean problems only
    student = out / "student"
    if not (student / "leaf_demo_training.json").exists():
        new_model(student, STUDENT_SIZE, seed=100 + seed)
        tokenizer = AutoTokenizer.from_pretrained(student)
        steps = config.budget("student_steps")
        train(student, encode(tokenizer, generate(20000, 3000 + seed, prefix="clean-"), clean=True), steps=steps,
              seed=seed, on_step=_bar(f"student (seed {seed})", steps))
    lap("student_training")
    # 3. analyze where the teacher is right and the student wrong
    distracted = [p for p in pool if p.distractors]
    t_right = evaluate(teacher, distracted)
    s_right = evaluate(student, distracted)
    chosen = [p for p, t, s in zip(distracted, t_right, s_right) if t and not s]
    if not chosen:
        raise LeafError("No training problem has the teacher right and the student wrong: nothing to analyse. "
                        "Train the teacher longer (--retrain-teacher --teacher-steps N) or the student less.")
    _write_jsonl(out / "selected.jsonl", [p.as_record() for p in chosen])
    lap("screening")
    analyze = dict(teacher=str(teacher), student=str(student), threshold="iqr", tau=0.10, level="both",
                   gold="distractor_spans", batch_size=32, window=256, device=config.device)
    analyze_dir = out / "analyze"  # detection, on the problems the student gets wrong and the teacher right
    if not (analyze_dir / "summary.json").exists():
        run_analyze(AnalyzeConfig(data=out / "selected.jsonl", output=analyze_dir, **analyze), progress=True)
    summary = json.loads((analyze_dir / "summary.json").read_text())
    # the distillation data: the whole training pool (clean and distractor problems, as the paper distils on its
    # training set), with counterfactuals where confounders were found; distilling on distractor problems alone
    # costs a student this small its clean accuracy
    _write_jsonl(out / "pool.jsonl", [p.as_record() for p in pool])
    pool_dir = out / "analyze-pool"
    if not (pool_dir / "summary.json").exists():
        run_analyze(AnalyzeConfig(data=out / "pool.jsonl", output=pool_dir, **analyze), progress=True)
    lap("analyze")
    # 4. distill: same data, steps, batch and learning rate in every setting
    steps = config.budget("distill_steps")
    common = dict(teacher=str(teacher), student=str(student), data=pool_dir, max_steps=steps, batch_size=16,
                  lr=1e-3, warmup=0.05, save_steps=10**6, seed=seed, device=config.device)
    runs = {"KD w/o mask": dict(mode="kd", lam="1.0"), "LeaF instr": dict(mode="instr", lam="linear:0.8:0.5"),
            "LeaF instr+resp": dict(mode="instr+resp", lam="linear:0.8:0.5")}
    models = {"Pre-KD": str(student)}
    for name, extra in runs.items():
        folder = out / "distill" / name.split()[0].lower().replace("w/o", "") / extra["mode"].replace("+", "-")
        if not (folder / "final" / "model.safetensors").exists():
            if folder.exists():
                shutil.rmtree(folder)
            run_distill(DistillConfig(output=folder, **common, **extra), progress=True)
        models[name] = str(folder / "final")
    models["Teacher"] = str(teacher)
    lap("distill")
    # 5. serve: accuracy (distractor and clean twins), throughput, attention focus on the true distractor spans
    serve_dir = out / "serve"
    if serve_dir.exists():
        shutil.rmtree(serve_dir)
    served = run_serve(ServeConfig(models=list(models.values()), names=list(models), data=out / "test.jsonl",
                                   output=serve_dir, backend=config.backend, max_tokens=48, iterations=1, warmup=1,
                                   focus_samples=200, device=config.device, batch_size=64, seed=seed),
                       progress=True)
    lap("serve")
    rows = {}
    for name in models:
        entry = served["models"][name]
        rows[name] = {"distractor_accuracy": entry["sets"]["original"].get("accuracy"),
                      "clean_accuracy": entry["sets"]["clean"].get("accuracy"),
                      "attention_focus": (entry.get("attention_focus") or {}).get("focus"),
                      "output_throughput": entry["sets"]["original"]["output_throughput"]}
    detection = {mode: {f"token_{k}": m["token"][k] for k in ("precision", "recall", "f1")}
                 for mode, m in (summary.get("detection") or {}).items()}
    return {"seed": seed, "rows": rows, "detection": detection, "selected": len(chosen),
            "screened": len(distracted), "pool": len(pool), "teacher_pool_accuracy": sum(t_right) / len(t_right),
            "student_pool_accuracy": sum(s_right) / len(s_right), "timing": timing,
            "engine": served["models"]["Pre-KD"]["engine"]["engine"]}


def aggregate(per_seed: list[dict]) -> dict:
    """Mean and std (population; 0 for one seed) of every figure over seeds."""
    def stats(values):
        values = [v for v in values if v is not None]
        if not values:
            return None
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                "n": len(values)}

    names = list(per_seed[0]["rows"])
    keys = list(per_seed[0]["rows"][names[0]])
    table = {n: {k: stats([s["rows"][n][k] for s in per_seed]) for k in keys} for n in names}
    modes = list(per_seed[0]["detection"])
    detection = {m: {k: stats([s["detection"].get(m, {}).get(k) for s in per_seed])
                     for k in per_seed[0]["detection"][m]} for m in modes}
    return {"table": table, "detection": detection}


def _pm(stat, percent: bool = True) -> str:
    if stat is None:
        return "-"
    scale = 100 if percent else 1
    text = f"{stat['mean'] * scale:.1f}" if percent else f"{stat['mean']:.4f}"
    if stat["n"] > 1:
        text += f" ± {stat['std'] * scale:.1f}" if percent else f" ± {stat['std']:.4f}"
    return text


def results_markdown(results: dict) -> str:
    agg = results["aggregate"]
    seeds = ", ".join(str(s["seed"]) for s in results["per_seed"])
    f1 = agg["detection"].get(results["threshold"], {}).get("token_f1")
    lines = ["# leaf demo results", "",
             f"Embedded distractor task, seeds {seeds}; engine: {results['per_seed'][0]['engine']}. Accuracy in %, "
             "greedy, exact answer match; attention focus = share of the response's attention to the question that "
             "lands off the distractor sentences (higher is better).", "",
             "| setting | distractor acc | clean acc | attention focus | detection F1 |", "|---|---|---|---|---|"]
    for name, row in agg["table"].items():
        det = _pm(f1) if name.startswith("LeaF") else "-"
        lines.append(f"| {name} | {_pm(row['distractor_accuracy'])} | {_pm(row['clean_accuracy'])} | "
                     f"{_pm(row['attention_focus'], percent=False)} | {det} |")
    lines += ["", "Confounder detection on the analysed problems (token level, % against the true distractor "
              "tokens):", "", "| mode | precision | recall | F1 |", "|---|---|---|---|"]
    for mode, m in agg["detection"].items():
        lines.append(f"| {mode} | {_pm(m.get('token_precision'))} | {_pm(m.get('token_recall'))} | "
                     f"{_pm(m.get('token_f1'))} |")
    s0 = results["per_seed"][0]
    lines += ["", f"Screening (seed {s0['seed']}): teacher {s0['teacher_pool_accuracy']:.1%}, student "
              f"{s0['student_pool_accuracy']:.1%} on {s0['screened']} training problems with distractors; "
              f"{s0['selected']} with the teacher right and the student wrong were analysed for detection; "
              f"distillation used the whole pool of {s0['pool']} problems (counterfactuals where spans were found), "
              "300 steps of batch 16 per setting by default.", ""]
    lines.append(results["verdict"])
    return "\n".join(lines) + "\n"


def verdict(agg: dict, per_seed: list[dict]) -> str:
    """What the table says about LeaF vs KD, from paired per-seed differences (same student, data and steps)."""
    table = agg["table"]
    pre, kd = (table[n]["distractor_accuracy"]["mean"] for n in ("Pre-KD", "KD w/o mask"))
    lines = [f"On distractor problems: Pre-KD {pre:.1%}, KD {kd:.1%}."]
    for name in ("LeaF instr", "LeaF instr+resp"):
        diffs = [100 * (s["rows"][name]["distractor_accuracy"] - s["rows"]["KD w/o mask"]["distractor_accuracy"])
                 for s in per_seed]
        mean = statistics.fmean(diffs)
        if len(diffs) > 1:
            spread = statistics.stdev(diffs) / len(diffs) ** 0.5
            call = ("beats KD" if mean > 2 * spread else "falls behind KD" if mean < -2 * spread
                    else "is not distinguishable from KD")
            lines.append(f"{name} − KD: {mean:+.1f} points (paired over {len(diffs)} seeds, ±{spread:.1f} standard "
                         f"error): {name} {call} here.")
        else:
            lines.append(f"{name} − KD: {mean:+.1f} points on one seed; run --seeds 3 to tell a difference from "
                         "noise.")
    lines.append("These numbers come from this run; nothing is fixed in advance.")
    return " ".join(lines)


def plot_results(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leaf.io import write_bytes_atomic

    table = results["aggregate"]["table"]
    names = list(table)
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.38
    for k, (key, label) in enumerate((("distractor_accuracy", "distractor"), ("clean_accuracy", "clean twin"))):
        means = [(table[n][key] or {}).get("mean", 0) * 100 for n in names]
        stds = [(table[n][key] or {}).get("std", 0) * 100 for n in names]
        axis.bar([i + k * width for i in range(len(names))], means, width, yerr=stds, label=label, capsize=3)
    axis.set_xticks([i + width / 2 for i in range(len(names))], names, rotation=10)
    axis.set_ylabel("accuracy (%)")
    axis.set_title("leaf demo: greedy accuracy on the distractor test set and its clean twins")
    axis.legend()
    figure.tight_layout()
    write_bytes_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)


def run_demo(config: DemoConfig, *, log=print) -> dict:
    from leaf.io import write_json_atomic, write_text_atomic

    import os

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # keep the demo's output readable
    start = time.perf_counter()
    config.output.mkdir(parents=True, exist_ok=True)
    teacher = get_teacher(config, log)
    per_seed = []
    for seed in range(config.seeds):
        log(f"seed {seed}: student, screening, analyze, distill x3, serve")
        per_seed.append(run_seed(config, teacher, seed, log))
    agg = aggregate(per_seed)
    results = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
               "teacher": str(teacher), "per_seed": per_seed, "aggregate": agg, "threshold": "iqr",
               "seconds": round(time.perf_counter() - start, 1)}
    results["verdict"] = verdict(agg, per_seed)
    write_json_atomic(config.output / "results.json", results)
    write_text_atomic(config.output / "RESULTS.md", results_markdown(results))
    plot_results(results, config.output / "accuracy.png")
    first = config.output / "seed-0"
    shutil.copyfile(first / "analyze" / "report.html", config.output / "analyze_report.html")
    shutil.copyfile(first / "serve" / "results.png", config.output / "serve.png")
    return results
