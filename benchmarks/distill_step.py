"""Step time of LeaF distillation against plain KD, and of the teacher cache against the online teacher.

    python benchmarks/distill_step.py           # ~10M Llama teacher and student, batch 4, 8 steps per setting
    python benchmarks/distill_step.py --quick   # tiny models, 3 steps (the test suite runs this)

Three runs of `leaf distill` on the same `leaf analyze` output: kd (originals only, the paper's KD w/o mask: one
input per sample), LeaF instr+resp with the online teacher (original + counterfactual: two inputs per sample), and
the same from the top-k teacher cache (the teacher's forward is what it saves). Step time = median of the logged
per-step seconds after the first step. Target: LeaF / KD <= 2.1.
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


def step_seconds(folder: Path) -> float:
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return statistics.median(line["step_seconds"] for line in log[1:])


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
        times = {}
        for name, extra in runs.items():
            run_distill(DistillConfig(output=tmp / name, **common, **extra), progress=False)
            times[name] = step_seconds(tmp / name)
    ratio, cache_ratio = times["leaf"] / times["kd"], times["leaf_cache"] / times["leaf"]
    print_table(f"leaf distill step time, llama {size}, batch {args.batch_size}, median of steps 2..{steps}",
                ["setting", "seconds/step", "ratio"],
                [["KD w/o mask (1 input/sample)", times["kd"], 1.0],
                 ["LeaF instr+resp, online teacher (2 inputs)", times["leaf"], ratio],
                 ["LeaF instr+resp, teacher cache top-64", times["leaf_cache"], times["leaf_cache"] / times["kd"]]])
    print(f"\nLeaF / KD {ratio:.3f} (target <= 2.1): {'PASS' if ratio <= 2.1 else 'FAIL'}; "
          f"cache / online {cache_ratio:.3f}")
    emit_json({"benchmark": "distill_step", "quick": args.quick, "steps": steps, "batch_size": args.batch_size,
               "kd_seconds": times["kd"], "leaf_seconds": times["leaf"], "leaf_cache_seconds": times["leaf_cache"],
               "leaf_over_kd": ratio, "cache_over_online": cache_ratio, "target": 2.1})


if __name__ == "__main__":
    main()
