"""Shared fixtures: tiny random models of every test family, built offline once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers.utils import logging as hf_logging

from leaf.hooks import encode_prompt_response
from leaf.models.tiny import FAMILIES, build_tiny_model

hf_logging.disable_progress_bar()
torch.set_num_threads(2)

PROMPTS = [
    ("Tom has 3 apples. His hat is red. He buys 2 more apples. How many apples does he have?",
     "Tom has 3 + 2 = 5 apples.\n#### 5"),
    ("What is 7 times 6?", "7 * 6 = 42\n#### 42"),
    ("Ann reads 4 pages a day for 5 days. The book is blue. How many pages?", "4 * 5 = 20 pages. #### 20"),
]


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {family: str(build_tiny_model(family, root / family, seed=7)) for family in FAMILIES}


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def samples():
    """The PROMPTS rendered with the tiny models' byte tokenizer, for tests that use one model."""
    from leaf.models.tiny import byte_tokenizer

    tok = byte_tokenizer()
    return [encode_prompt_response(tok, p, r) for p, r in PROMPTS]


@pytest.fixture
def encoded(model_dirs, family):
    """The PROMPTS rendered with the family's chat template: three samples of different lengths."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dirs[family])
    return [encode_prompt_response(tok, p, r) for p, r in PROMPTS]
