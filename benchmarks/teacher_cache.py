"""Teacher-cache throughput: HF forward passes against vLLM's prompt_logprobs, on the same sequences, in one run.

    python benchmarks/teacher_cache.py            # SmolLM2-135M-Instruct, 64 GSM-Plus problems, top-64
    python benchmarks/teacher_cache.py --quick    # a tiny Llama, 8 problems (the test suite runs this)

What `leaf distill --cache-teacher` spends its time on: the teacher's top-k log-probs at every response position of
every sequence. Both engines score the same sequences through leaf's one engine layer (leaf.serve.engines
`top_logprobs`, which TeacherCache.write calls): HF with one forward pass per sequence and the LM head only at the
response positions, vLLM with every sequence in flight at once (its prompt_logprobs). Throughput = sequence tokens
scored per second, engine start-up excluded (printed apart: it is paid once per cache). The agreement of the two
caches is printed beside it (top-k ids equal where the k-th and (k+1)-th log-probs are not tied; the largest
log-prob difference). Target: vLLM / HF >= 3x in tokens per second (issue 25's goal on CPU; more on a GPU).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from common import benchmark_parser, emit_json, parse_benchmark_args, print_table

hf_logging.disable_progress_bar()
GSM_PLUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"
TARGET = 3.0


def sequences(model_path: str, rows: int) -> tuple[list[list[int]], list[list[int]]]:
    """The first `rows` GSM-Plus problems with their solutions, rendered as distill renders them: token ids and the
    logit positions the loss reads."""
    from transformers import AutoTokenizer

    from leaf.distill.data import build_examples, read_dataset
    from leaf.distill.teacher_cache import cache_positions

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data.jsonl"
        data.write_text("".join(GSM_PLUS.read_text().splitlines(keepends=True)[:rows]))
        records, _ = read_dataset(data, None, prompt_field="question", response_field="solution")
    context = json.loads((Path(model_path) / "config.json").read_text())["max_position_embeddings"]
    examples, _ = build_examples(records, AutoTokenizer.from_pretrained(model_path), "kd", context - 1)
    return [e.input_ids for e in examples], [cache_positions(e.response_mask) for e in examples]


def forward_flops(config: dict, prompts: list[list[int]], positions: list[list[int]], *, head_everywhere: bool
                  ) -> float:
    """Multiply-adds x 2 of the forward passes: per token the projections and MLP of every layer, attention over its
    prefix (scores and values), and the LM head where it runs (HF: the scored positions; vLLM: every position)."""
    d, layers, ff, vocab = (config[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                                                 "vocab_size"))
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads", heads) * (config.get("head_dim") or d // heads)
    per_token = layers * (2 * d * (2 * d + 2 * kv) + 2 * 3 * d * ff)
    total = 0.0
    for ids, keep in zip(prompts, positions):
        n = len(ids)
        total += n * per_token + layers * 4 * d * n * (n + 1) / 2 + 2 * d * vocab * (n if head_everywhere else len(keep))
    return total


def matmul_ceiling(seconds: float = 2.0) -> float:
    """FLOP/s of a float32 (2048 x 576) @ (576 x 1536) product on this machine's threads: the rate the model's
    biggest products could reach, which bounds what any engine gets out of the CPU."""
    a, b = torch.randn(2048, 576), torch.randn(576, 1536)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return count * 2 * 2048 * 576 * 1536 / (time.perf_counter() - start)


def agreement(a: list, b: list) -> dict:
    """Top-k ids compared where the boundary is not tied (k-th vs (k+1)-th unknown here: the k-th vs (k-1)-th of
    both caches stand in), and the largest |Δ log-prob| of the sorted values."""
    same, compared, worst = 0, 0, 0.0
    for (la, ia), (lb, ib) in zip(a, b):
        worst = max(worst, float((la - lb).abs().max()))
        clear = (la[:, -2] - la[:, -1]).abs() > 1e-4
        compared += int(clear.sum())
        same += int((ia.sort(-1).values == ib.sort(-1).values).all(-1)[clear].sum())
    return {"positions_compared": compared, "same_top_k_ids": same, "max_abs_logprob_diff": worst}


def main() -> None:
    parser = benchmark_parser(__doc__, "a tiny Llama and 8 problems: checks the script, not the figure")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=64)
    args = parse_benchmark_args(parser)

    from leaf.hooks import load_model
    from leaf.serve.engines import HFEngine, VLLMEngine

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            from leaf.models.tiny import build_tiny_model

            path, rows = str(build_tiny_model("llama", Path(tmp) / "teacher", seed=1)), 8
        else:
            from leaf.models.pretrained import smollm2

            path, rows = str(smollm2()), args.rows
        prompts, positions = sequences(path, rows)
        tokens = sum(len(p) for p in prompts)
        config = json.loads((Path(path) / "config.json").read_text())
        vocab = config["vocab_size"]
        hf_flops = forward_flops(config, prompts, positions, head_everywhere=False)
        vllm_flops = forward_flops(config, prompts, positions, head_everywhere=True)

        ceiling = matmul_ceiling()  # before vLLM starts: its CPU worker binds this process's threads
        hf = HFEngine(load_model(path))
        start = time.perf_counter()
        hf_out = hf.top_logprobs(prompts, positions, args.top_k, vocab=vocab)
        hf_seconds = time.perf_counter() - start
        hf.close()

        start = time.perf_counter()
        engine = VLLMEngine(path, engine_args={"max_logprobs": args.top_k},
                            max_model_len=max(len(p) for p in prompts) + 1)
        vllm_start = time.perf_counter() - start
        engine.top_logprobs(prompts[:2], positions[:2], args.top_k, vocab=vocab)  # first-call set-up, not timed
        start = time.perf_counter()
        vllm_out = engine.top_logprobs(prompts, positions, args.top_k, vocab=vocab)
        vllm_seconds = time.perf_counter() - start
        engine.close()

    ratio = hf_seconds / vllm_seconds
    agree = agreement(hf_out, vllm_out)
    verdict = "PASS" if ratio >= TARGET else "FAIL"
    hf_rate, vllm_rate = hf_flops / hf_seconds, vllm_flops / vllm_seconds
    bound = ceiling / hf_rate * hf_flops / vllm_flops  # if vLLM ran at the ceiling
    model = "tiny llama" if args.quick else "SmolLM2-135M-Instruct"
    print_table(f"Teacher cache, {model}: {len(prompts)} sequences, {tokens} tokens, top-{args.top_k}, "
                f"{torch.get_num_threads()} threads",
                ["engine", "seconds", "tokens/s", "GFLOP", "GFLOP/s", "of ceiling", "start-up s"],
                [["hf (forward passes)", hf_seconds, tokens / hf_seconds, hf_flops / 1e9, hf_rate / 1e9,
                  f"{hf_rate / ceiling:.0%}", "-"],
                 ["vllm (prompt_logprobs)", vllm_seconds, tokens / vllm_seconds, vllm_flops / 1e9, vllm_rate / 1e9,
                  f"{vllm_rate / ceiling:.0%}", vllm_start]])
    print(f"\nmatmul ceiling of this machine ({torch.get_num_threads()} threads, float32): {ceiling / 1e9:.1f} "
          f"GFLOP/s; vLLM at that ceiling would be {bound:.2f}x HF")
    print(f"vLLM / HF tokens per second: {ratio:.2f}x (target >= {TARGET}x): "
          f"{verdict if not args.quick else 'not judged (--quick)'}")
    print(f"agreement: {agree['same_top_k_ids']}/{agree['positions_compared']} untied positions with the same top-k "
          f"ids; largest |Δ log-prob| {agree['max_abs_logprob_diff']:.2e}")
    emit_json({"benchmark": "teacher_cache", "model": model, "sequences": len(prompts), "tokens": tokens,
               "top_k": args.top_k, "hf_seconds": hf_seconds, "vllm_seconds": vllm_seconds,
               "vllm_startup_seconds": vllm_start, "ratio": ratio, "target": TARGET, "hf_gflops": hf_flops / 1e9,
               "vllm_gflops": vllm_flops / 1e9, "matmul_ceiling_gflops_per_s": ceiling / 1e9,
               "ratio_bound_at_ceiling": bound,
               "verdict": verdict if not args.quick else None, **agree})


if __name__ == "__main__":
    main()
