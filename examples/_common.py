"""Shared setup of the examples: a model (default: leaf's shipped demo teacher, a 1.1M-parameter Llama trained on
the demo's distractor task, so the maps mean something) and distractor problems with exact distractor spans; each
example pairs a problem with its counterfactual through leaf.hooks.counterfactual_pair."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()

from leaf.demo.run import ASSET_TEACHER  # noqa: E402
from leaf.demo.task import generate  # noqa: E402
from leaf.hooks import load_model  # noqa: E402


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


def load(args):
    return load_model(args.model, device=args.device)
