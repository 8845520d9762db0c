"""vLLM against the HF generate backend on the same model, and pruned against original prompts, in one run.

    python benchmarks/serve_throughput.py           # ~10M Llama, 32 GSM-Plus problems, 64 new tokens, 3 iterations
    python benchmarks/serve_throughput.py --quick   # tiny model, 8 problems (the test suite runs this)

`leaf analyze` detects confounders on the problems (a second ~10M model as teacher), then `leaf serve` runs the
student on the original and the pruned prompts with each backend. Generation ignores EOS, so every request produces
exactly --max-tokens tokens in both backends and the comparison is of engines, not of answer lengths.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from leaf.analyze import AnalyzeConfig, run_analyze
from common import emit_json, print_table, tiny_pair_and_data
from leaf.serve.engines import make_engine
from leaf.serve.metrics import summarize_iterations
from leaf.serve.prompts import from_analyze, render

hf_logging.disable_progress_bar()
GSM_PLUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"


def measure(engine, prompts: list[list[int]], max_tokens: int, iterations: int) -> dict:
    engine.generate(prompts[:4], [8] * min(4, len(prompts)), ignore_eos=True)  # warmup
    runs = []
    for _ in range(iterations):
        completions, seconds = engine.generate(prompts, [max_tokens] * len(prompts), ignore_eos=True)
        runs.append(([c.timing for c in completions], seconds))
    return summarize_iterations(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, 8 problems, 1 iteration")
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--hf-batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM: GPUs per replica")
    parser.add_argument("--data-parallel-size", type=int, default=1, help="vLLM: replicas")
    args = parser.parse_args()
    torch.set_num_threads(2)
    size, samples, iterations = ("tiny", 8, 1) if args.quick else ("small", 32, 3)
    max_tokens = args.max_tokens or (16 if args.quick else 64)
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()][:samples]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher, student, data = tiny_pair_and_data(tmp, size, rows)
        run_analyze(AnalyzeConfig(teacher=teacher, student=student, data=data, output=tmp / "analyze",
                                  threshold="iqr"), progress=False)
        problems = from_analyze(tmp / "analyze")
        figures, settings = {}, {}
        for backend in ("vllm", "hf"):
            engine = make_engine(backend, student, batch_size=args.hf_batch_size, device=args.device,
                                 dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
                                 data_parallel_size=args.data_parallel_size)
            settings[backend] = engine.settings   # the parallel settings go on record with the figures
            try:
                sets = {"original": [render(engine.tokenizer, p.prompt) for p in problems],
                        "pruned": [render(engine.tokenizer, p.pruned or p.prompt) for p in problems]}
                for name, prompts in sets.items():
                    figures[backend, name] = measure(engine, prompts, max_tokens, iterations)
            finally:
                engine.close()
    v, h = figures["vllm", "original"], figures["hf", "original"]
    rows_out = [[f"{b} / {s}", f["requests_per_second"], f["output_throughput"], f["mean_ttft_ms"],
                 f["mean_tpot_ms"], f["total_input_tokens"] // f["iterations"]] for (b, s), f in figures.items()]
    print_table(f"leaf serve engines, llama {size}, {len(problems)} problems, {max_tokens} new tokens, "
                f"{iterations} iteration(s)", ["backend / prompts", "req/s", "out tok/s", "TTFT ms", "TPOT ms",
                                                "input tokens"], rows_out)
    engine_ratio = v["output_throughput"] / h["output_throughput"]
    pruned = {b: figures[b, "pruned"]["requests_per_second"] / figures[b, "original"]["requests_per_second"]
              for b in ("vllm", "hf")}
    token_ratio = v["total_input_tokens"] / figures["vllm", "pruned"]["total_input_tokens"]
    print(f"\nvLLM / HF output throughput {engine_ratio:.3f}; pruned / original req/s: vLLM {pruned['vllm']:.3f}, "
          f"HF {pruned['hf']:.3f}; original / pruned input tokens {token_ratio:.3f}")
    emit_json({"benchmark": "serve_throughput", "quick": args.quick, "problems": len(problems),
               "max_tokens": max_tokens, "iterations": iterations, "vllm_over_hf": engine_ratio,
               "pruned_speedup_vllm": pruned["vllm"], "pruned_speedup_hf": pruned["hf"],
               "input_token_ratio": token_ratio, "engines": settings,
               "figures": {f"{b}/{s}": {k: f[k] for k in ("requests_per_second", "output_throughput", "mean_ttft_ms",
                                                         "mean_tpot_ms", "p99_e2el_ms", "total_input_tokens")}
                           for (b, s), f in figures.items()}})


if __name__ == "__main__":
    main()
