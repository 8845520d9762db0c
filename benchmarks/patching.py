"""A full layer x position activation-patching sweep: leaf's batched sweep against the naive loop of one forward
per (layer, position), measured in one run, with the two maps checked equal.

    python benchmarks/patching.py            # ~10M-parameter Llama, a GSM-Plus problem and its clean twin
    python benchmarks/patching.py --quick    # tiny model, seconds (the test suite runs this)

All rows are `leaf.hooks.patching_sweep` on the residual stream. The naive loop is batch_size=1 without prefix
reuse: L x P full forwards of one sequence. The sweep puts `--batch-size` patched copies in each forward and runs
only the positions from each batch's first patched one on, over the clean run's KV cache (nothing before a patch
changes in a causal model); a middle row shows batching alone.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from common import emit_json, print_table
from leaf.gold import spans_from_pair
from leaf.hooks import counterfactual_pair, load_model, patching_sweep
from leaf.models.tiny import build_tiny_model
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()
GSM_PLUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, a short problem")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()]
    rows = sorted(rows, key=lambda r: len(r["question"]) + len(r["solution"]))
    row = rows[0]
    size = "tiny" if args.quick else "small"
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(build_tiny_model("llama", Path(tmp) / "m", seed=0, size=size, tokenizer="bpe"))
    tok = model.tokenizer
    spans = spans_from_pair(row["question"], row["seed_question"])
    pair = counterfactual_pair(tok, row["question"], row["solution"], spans)
    x, xs, alignment, target = pair.original, pair.counterfactual, pair.alignment, pair.target
    times, maps = {}, {}
    variants = (("naive loop (batch 1, full sequences)", 1, False),
                (f"batched (batch {args.batch_size}, full sequences)", args.batch_size, False),
                (f"batched sweep (batch {args.batch_size}, prefix reuse)", args.batch_size, True))
    for name, batch, reuse in variants:
        patching_sweep(model, x.input_ids, xs.input_ids, alignment, target, batch_size=batch, reuse_prefix=reuse,
                       positions=[p for p, _ in alignment.pairs][:4])                      # warm-up
        start = time.perf_counter()
        maps[name] = patching_sweep(model, x.input_ids, xs.input_ids, alignment, target, batch_size=batch,
                                    reuse_prefix=reuse).effect
        times[name] = time.perf_counter() - start
    naive, batched_only, batched = times.values()
    reference = maps[variants[0][0]]
    max_diff = max(float((m - reference).nan_to_num(0).abs().max()) for m in maps.values())
    patches = len(alignment.pairs) * model.arch.num_layers
    print_table(f"residual-stream patching sweep, llama {size}, {model.arch.num_layers} layers x "
                f"{len(x.input_ids)} positions ({patches} patches)", ["method", "seconds", "patches/s"],
                [[name, t, patches / t] for name, t in times.items()])
    print(f"\nnaive / sweep time {naive / batched:.2f}x (batching alone {naive / batched_only:.2f}x); "
          f"max |difference| between the maps {max_diff:.2e}")
    emit_json({"benchmark": "patching", "quick": args.quick, "layers": model.arch.num_layers,
               "positions": len(x.input_ids), "patches": patches, "batch_size": args.batch_size,
               "naive_seconds": naive, "batched_full_seconds": batched_only, "batched_seconds": batched,
               "speedup": naive / batched, "speedup_batching_alone": naive / batched_only,
               "max_abs_difference": max_diff})


if __name__ == "__main__":
    main()
