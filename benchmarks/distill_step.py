"""Step time of LeaF distillation against plain KD, and of the teacher cache against the online teacher.

    python benchmarks/distill_step.py           # ~10M Llama teacher and student, batch 4, 8 steps per setting
    python benchmarks/distill_step.py --quick   # tiny models, 3 steps (the test suite runs this)

Three runs of `leaf distill` on the same `leaf analyze` output: kd (originals only, the paper's KD w/o mask: one
input per sample), LeaF instr+resp with the online teacher (the original plus up to one instruction- and one
response-level counterfactual per sample: up to three inputs), and the same from the top-k teacher cache (the
teacher's forward is what it saves). Step time = median of the logged per-step seconds after the first step; each
step's input tokens come from the same log. LeaF does per token what KD does (the student's forward and backward,
the teacher's forward), so the target is on the time per input token: LeaF / KD <= 1.15 (the pairing's overhead).
The step-time ratio is printed beside it, with the tokens per step that explain it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from transformers.utils import logging as hf_logging

from leaf.analyze import AnalyzeConfig, run_analyze
from common import benchmark_parser, emit_json, parse_benchmark_args, print_table, tiny_pair_and_data
from leaf.distill import DistillConfig, run_distill

hf_logging.disable_progress_bar()
GSM_PLUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"


def step_figures(folder: Path) -> dict:
    """Median seconds per step, input tokens per step and seconds per 1k input tokens, steps 2 on."""
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()][1:]
    return {"seconds": statistics.median(line["step_seconds"] for line in log),
            "tokens": statistics.median(line["tokens"] for line in log),
            "ms_per_1k_tokens": statistics.median(1e6 * line["step_seconds"] / line["tokens"] for line in log)}


TARGET = 1.15


def main() -> None:
    parser = benchmark_parser(__doc__, "tiny models, 3 steps")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parse_benchmark_args(parser)
    size, steps = ("tiny", args.steps or 3) if args.quick else ("small", args.steps or 8)
    samples = 8 if args.quick else 32
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()]
    rows = sorted(rows, key=lambda r: len(r["question"]) + len(r["solution"]))[:samples]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher, student, data = tiny_pair_and_data(tmp, size, rows)
        run_analyze(AnalyzeConfig(teacher=teacher, student=student, data=data, output=tmp / "analyze",
                                  threshold="quantile", quantile=0.05, level="both"), progress=False)
        common = dict(teacher=teacher, student=student, data=tmp / "analyze", max_steps=steps,
                      batch_size=args.batch_size, save_steps=10_000, lam="0.5")
        runs = {"kd": dict(mode="kd"), "leaf": dict(mode="instr+resp"),
                "leaf_cache": dict(mode="instr+resp", cache_teacher=True, top_k=64)}
        figures = {}
        for name, extra in runs.items():
            run_distill(DistillConfig(output=tmp / name, **common, **extra), progress=False)
            figures[name] = step_figures(tmp / name)
    kd = figures["kd"]
    per_token = figures["leaf"]["ms_per_1k_tokens"] / kd["ms_per_1k_tokens"]
    labels = {"kd": "KD w/o mask (originals only)", "leaf": "LeaF instr+resp, online teacher",
              "leaf_cache": "LeaF instr+resp, teacher cache top-64"}
    print_table(f"leaf distill step time, llama {size}, batch {args.batch_size}, median of steps 2..{steps}",
                ["setting", "seconds/step", "input tokens/step", "ms / 1k tokens", "per-token ratio",
                 "step ratio"],
                [[labels[name], f["seconds"], f["tokens"], f["ms_per_1k_tokens"],
                  f["ms_per_1k_tokens"] / kd["ms_per_1k_tokens"], f["seconds"] / kd["seconds"]]
                 for name, f in figures.items()])
    print(f"\nLeaF / KD per input token {per_token:.3f} (target <= {TARGET}): "
          f"{'PASS' if per_token <= TARGET else 'FAIL'}; per step {figures['leaf']['seconds'] / kd['seconds']:.3f} "
          f"with {figures['leaf']['tokens'] / kd['tokens']:.2f}x the input tokens; cache / online per step "
          f"{figures['leaf_cache']['seconds'] / figures['leaf']['seconds']:.3f}")
    emit_json({"benchmark": "distill_step", "quick": args.quick, "steps": steps, "batch_size": args.batch_size,
               "figures": figures, "leaf_over_kd_per_token": per_token,
               "leaf_over_kd_per_step": figures["leaf"]["seconds"] / kd["seconds"],
               "input_tokens_ratio": figures["leaf"]["tokens"] / kd["tokens"],
               "cache_over_online": figures["leaf_cache"]["seconds"] / figures["leaf"]["seconds"], "target": TARGET})


if __name__ == "__main__":
    main()
