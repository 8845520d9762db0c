"""Overhead of leaf.hooks against the same computation written in plain PyTorch.

    python benchmarks/hooks_overhead.py            # ~10M-parameter Llama, batch 8 x 256, memory at T = 1024
    python benchmarks/hooks_overhead.py --quick    # tiny model, seconds (the test suite runs this)

1. Time: token saliency (||d NLL / d e_i||, one backward) + attention mass from response onto prompt tokens, per
   layer and head, in one pass. leaf: `run(model, ids, HookPlan(...))` through nnsight. Plain: inputs_embeds with
   requires_grad, forward hooks on the attention modules doing the same reduction, autograd.grad. Target: ratio
   leaf / plain <= 1.15.
2. Memory: peak RSS growth of the attention-mass reduction (leaf) against a plain forward that returns all
   attentions (output_attentions=True), at sequence length 1024, each in a fresh subprocess. Target: <= 0.5.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from common import emit_json, median_times, peak_rss, peak_rss_reset, print_table
from leaf.hooks import HookPlan, load_model, run
from leaf.hooks.reductions import attention_mass
from leaf.models.tiny import build_tiny_model
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()


TIME_TARGET = 1.05  # leaf's hooks against the same plain PyTorch computation

def make_inputs(batch: int, length: int, vocab: int, seed: int = 0):
    """Random byte ids after a BOS; the first half is the 'prompt', the second half the 'response'."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (batch, length), generator=g)
    ids[:, 0] = 256
    prompt = torch.zeros(batch, length, dtype=torch.bool)
    prompt[:, 1: length // 2] = True
    response = torch.zeros_like(prompt)
    response[:, length // 2:] = True
    return ids, prompt, response


def leaf_pass(model, ids, prompt, response, grad: bool = True):
    plan = HookPlan(saliency="grad" if grad else None, target_mask=response if grad else None, query_mask=response,
                    key_masks={"prompt": prompt})
    return run(model, list(ids), plan, batch_size=len(ids))


def plain_pass(model, ids, prompt, response):
    """The same computation with plain PyTorch: forward hooks for the attention reduction, autograd for saliency."""
    keys = prompt.clone()
    keys[:, 0] = False
    masses, handles = [], []

    def hook(_module, _args, output):
        masses.append(attention_mass(output[1].detach(), response, keys[:, None]))

    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(hook))
    try:
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits
        shifted = response[:, 1:]
        nll = F.cross_entropy(logits[:, :-1][shifted].float(), ids[:, 1:][shifted], reduction="none")
        per_sample = torch.zeros(len(ids)).index_add(0, shifted.nonzero()[:, 0], nll) / shifted.sum(-1)
        (grad,) = torch.autograd.grad(per_sample.sum(), embeds)
        return grad.float().norm(dim=-1), torch.stack(masses, 1)
    finally:
        for handle in handles:
            handle.remove()


def memory_child(model_dir: str, mode: str, batch: int, length: int) -> None:
    """Run in a subprocess: print the peak RSS growth (bytes) of one attention pass as JSON."""
    torch.set_num_threads(2)
    model = load_model(model_dir, attn_implementation="eager")
    hf = model.hf_model
    ids, prompt, response = make_inputs(batch, length, hf.config.vocab_size)

    def once():
        if mode == "leaf":
            leaf_pass(model, ids, prompt, response, grad=False)
        else:
            with torch.no_grad():
                out = hf(ids, output_attentions=True)
            assert len(out.attentions) == model.arch.num_layers

    small = make_inputs(batch, 64, hf.config.vocab_size)
    if mode == "leaf":  # warm up code paths and caches at a short length, then measure
        leaf_pass(model, *small, grad=False)
    else:
        with torch.no_grad():
            hf(small[0], output_attentions=True)
    base = peak_rss_reset()
    once()
    print(json.dumps({"peak_growth_bytes": peak_rss() - base}))


def measure_memory(model_dir: str, mode: str, batch: int, length: int) -> int:
    out = subprocess.run([sys.executable, __file__, "--memory-child", mode, "--model-dir", model_dir,
                          "--batch", str(batch), "--mem-length", str(length)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and sizes: a smoke run in seconds")
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--memory-child", choices=["leaf", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--mem-length", type=int, default=None)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.model_dir, args.memory_child, args.batch, args.mem_length)

    size, batch, length = ("tiny", 2, 64) if args.quick else ("small", 8, 256)
    mem_batch, mem_length = (1, 256) if args.quick else (1, 1024)
    iters = args.iters or (2 if args.quick else 7)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model("llama", Path(tmp) / "model", size=size, seed=0))
        model = load_model(model_dir, attn_implementation="eager")
        hf = model.hf_model
        params = sum(p.numel() for p in hf.parameters())
        ids, prompt, response = make_inputs(batch, length, hf.config.vocab_size)

        # Same numbers first: the two passes compute the same thing.
        results = leaf_pass(model, ids, prompt, response)
        plain_scores, plain_mass = plain_pass(hf, ids, prompt, response)
        max_diff = max(float((plain_scores - torch.stack([r.saliency for r in results])).abs().max()),
                       float((plain_mass[:, :, 0] - torch.stack([r.attention_mass["prompt"] for r in results]))
                             .abs().max()))
        times = median_times({"leaf": lambda: leaf_pass(model, ids, prompt, response),
                              "plain": lambda: plain_pass(hf, ids, prompt, response)}, iters=iters)
        t_leaf, t_plain = statistics.median(times["leaf"]), statistics.median(times["plain"])
        mem_leaf = measure_memory(model_dir, "leaf", mem_batch, mem_length)
        mem_plain = measure_memory(model_dir, "plain", mem_batch, mem_length)

    time_ratio, mem_ratio = t_leaf / t_plain, mem_leaf / mem_plain
    print_table(f"saliency + attention mass, llama {params / 1e6:.1f}M params, batch {batch} x {length}, "
                f"median of {iters}", ["path", "seconds", "ratio"],
                [["plain PyTorch", t_plain, 1.0], ["leaf.hooks (nnsight)", t_leaf, time_ratio]])
    print_table(f"peak memory growth, attention reduction, batch {mem_batch} x {mem_length}",
                ["path", "MiB", "ratio"],
                [["plain forward, all attentions", mem_plain / 2**20, 1.0],
                 ["leaf attention_mass", mem_leaf / 2**20, mem_ratio]])
    print(f"\nmax |leaf - plain| over saliency and mass: {max_diff:.2e}")
    print(f"time ratio {time_ratio:.3f} (target <= {TIME_TARGET}): {'PASS' if time_ratio <= TIME_TARGET else 'FAIL'}; "
          f"memory ratio {mem_ratio:.3f} (target <= 0.5): {'PASS' if mem_ratio <= 0.5 else 'FAIL'}")
    emit_json({"benchmark": "hooks_overhead", "quick": args.quick, "params": params, "batch": batch,
               "seq_len": length, "iters": iters, "leaf_seconds": t_leaf, "plain_seconds": t_plain,
               "time_ratio": time_ratio, "time_target": TIME_TARGET, "mem_seq_len": mem_length, "mem_batch": mem_batch,
               "leaf_peak_bytes": mem_leaf, "plain_peak_bytes": mem_plain, "memory_ratio": mem_ratio,
               "memory_target": 0.5, "max_abs_diff": max_diff})


if __name__ == "__main__":
    main()
