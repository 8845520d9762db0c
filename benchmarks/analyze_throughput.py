"""Throughput of `leaf analyze` against its floor: one forward + one backward of each model per batch.

    python benchmarks/analyze_throughput.py           # ~10M Llama teacher + ~10M Qwen2 student, 48 GSM-Plus samples
    python benchmarks/analyze_throughput.py --quick   # tiny models, 8 samples (the test suite runs this)

leaf: `run_analyze` on the samples (instruction level, iqr, gold metrics on), timed over its analysis windows
(model and data loading excluded; end-to-end time reported too). Floor: the same token sequences, sorted and
batched the same way, through a plain PyTorch forward + backward to the input embeddings of each model, weights
frozen: the least work that per-token gradients of both models need. Target: leaf / floor <= 1.3.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from leaf.analyze import AnalyzeConfig, run_analyze
from common import benchmark_parser, emit_json, parse_benchmark_args, pad_encodings, print_table
from leaf.hooks import encode_text, load_model, render_prompt_response
from leaf.models.tiny import build_tiny_model

hf_logging.disable_progress_bar()
GSM_PLUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"


# the analysis windows and the whole command against one plain fwd+bwd of both models per batch
TARGET, END_TO_END_TARGET = 1.15, 1.20

def floor_seconds(model_dir: str, rows: list[dict], batch_size: int, renderer_dir: str) -> float:
    """Plain PyTorch: forward + backward to inputs_embeds over the same sorted batches leaf forms."""
    model = load_model(model_dir)
    renderer = load_model(renderer_dir).tokenizer
    hf = model.hf_model
    for p in hf.parameters():
        p.requires_grad_(False)
    encs = []
    for row in rows:
        text, pspan, rspan = render_prompt_response(renderer, row["question"], row["solution"])
        encs.append(encode_text(model.tokenizer, text, pspan, rspan))
    encs.sort(key=lambda e: -len(e.input_ids))
    total = 0.0
    for start in range(0, len(encs), batch_size):
        batch = encs[start: start + batch_size]
        ids, mask, target = pad_encodings(batch, model.pad_token_id)
        t0 = time.perf_counter()
        embeds = hf.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = hf(inputs_embeds=embeds, attention_mask=mask).logits
        shifted = target[:, 1:]
        loss = F.cross_entropy(logits[:, :-1][shifted].float(), ids[:, 1:][shifted])
        torch.autograd.grad(loss, embeds)
        total += time.perf_counter() - t0
    return total


def main() -> None:
    parser = benchmark_parser(__doc__, "tiny models, 8 samples")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parse_benchmark_args(parser)
    size = "tiny" if args.quick else "small"
    n = args.samples or (8 if args.quick else 48)
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()]
    rows = sorted(rows, key=lambda r: len(r["question"]) + len(r["solution"]))[:n]  # fit the tiny context
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = str(build_tiny_model("llama", tmp / "teacher", size=size, seed=1))
        student = str(build_tiny_model("qwen2", tmp / "student", size=size, seed=2))
        data = tmp / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        params = {name: load_model(path).hf_model.num_parameters() for name, path in
                  (("teacher", teacher), ("student", student))}
        t0 = time.perf_counter()
        summary = run_analyze(AnalyzeConfig(teacher=teacher, student=student, data=data, output=tmp / "out",
                                            gold_pair="question,seed_question", batch_size=args.batch_size,
                                            window=max(n, args.batch_size)), progress=False)
        end_to_end = time.perf_counter() - t0
        floor = sum(floor_seconds(m, rows, args.batch_size, student) for m in (teacher, student))
    leaf_seconds = summary["timing"]["window_seconds"]
    ratio = leaf_seconds / floor
    print_table(f"leaf analyze, {n} GSM-Plus samples, batch {args.batch_size}, teacher {params['teacher'] / 1e6:.1f}M "
                f"+ student {params['student'] / 1e6:.1f}M params",
                ["what", "seconds", "samples/s", "ratio to floor"],
                [["floor: fwd+bwd of both models (plain PyTorch)", floor, n / floor, 1.0],
                 ["leaf analyze (analysis windows)", leaf_seconds, n / leaf_seconds, ratio],
                 ["leaf analyze end to end (load, merge, report)", end_to_end, n / end_to_end, end_to_end / floor]])
    e2e = end_to_end / floor
    ok = ratio <= TARGET and e2e <= END_TO_END_TARGET
    print(f"\nratio {ratio:.3f} (target <= {TARGET}), end to end {e2e:.3f} (target <= {END_TO_END_TARGET}): "
          f"{'PASS' if ok else 'FAIL'}")
    emit_json({"benchmark": "analyze_throughput", "quick": args.quick, "samples": n, "batch_size": args.batch_size,
               "params": params, "floor_seconds": floor, "leaf_seconds": leaf_seconds,
               "end_to_end_seconds": end_to_end, "samples_per_second": n / leaf_seconds,
               "floor_samples_per_second": n / floor, "ratio": ratio, "end_to_end_ratio": end_to_end / floor,
               "target": TARGET, "end_to_end_target": END_TO_END_TARGET})


if __name__ == "__main__":
    main()
