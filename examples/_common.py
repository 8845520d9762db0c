"""Shared setup of the examples: a model (default: leaf's shipped demo teacher, a 1.1M-parameter Llama trained on
the demo's distractor task, so the maps mean something) and distractor problems with exact distractor spans."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()

from leaf.demo.run import ASSET_TEACHER  # noqa: E402
from leaf.demo.task import generate  # noqa: E402
from leaf.hooks import align_tokens, encode_text, load_model, render_prompt_response  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=str(ASSET_TEACHER), help="HF folder or hub id (default: the demo teacher)")
    p.add_argument("--output", type=Path, default=Path("example-output"), help="folder for PNG and JSON")
    p.add_argument("--problems", type=int, default=8, help="distractor problems to use")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--device", default="cpu")
    return p


def problems(count: int, seed: int):
    """(question, solution, distractor character spans in the question) of problems with one or two distractors."""
    return [(p.question, p.solution, p.distractor_spans) for p in generate(count, seed, distractors=(1, 2))]


def encode_pair(tokenizer, question: str, solution: str, spans):
    """X (with the distractor), X\\A (without), their alignment, and the response tokens of each."""
    from leaf.gold import token_gold
    from leaf.spans import remove_spans

    text, pspan, rspan = render_prompt_response(tokenizer, question, solution)
    cf_text, cf_pspan, cf_rspan = render_prompt_response(tokenizer, remove_spans(question, spans), solution)
    x, xs = encode_text(tokenizer, text, pspan, rspan), encode_text(tokenizer, cf_text, cf_pspan, cf_rspan)
    pruned = [(pspan[0] + a, pspan[0] + b) for a, b in spans]
    target, cf_target = x.response_mask.clone(), xs.response_mask.clone()
    target[0] = cf_target[0] = False
    confounder = token_gold(x.offsets, spans, base=pspan[0]) & x.prompt_mask   # tokens overlapping a distractor
    return {"x": x, "xs": xs, "alignment": align_tokens(text, x.offsets, cf_text, xs.offsets, pruned),
            "target": target, "cf_target": cf_target, "confounder": confounder}


def load(args):
    return load_model(args.model, device=args.device)
