"""The examples page runs: each script on its defaults (the shipped demo teacher, generated problems)."""

import subprocess
import sys
from pathlib import Path

import pytest

# the demo-teacher examples; 04_real_model.py runs in tests/models/test_real_model.py (it needs the SmolLM2 wheel)
EXAMPLES = sorted(p for p in (Path(__file__).parent.parent / "examples").glob("0*.py") if p.stem != "04_real_model")


def test_there_are_three_examples():
    assert [p.name for p in EXAMPLES] == ["01_activation_patching.py", "02_head_focus.py",
                                          "03_attribution_methods.py"]


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_and_writes_its_pictures(script, tmp_path):
    result = subprocess.run([sys.executable, str(script), "--output", str(tmp_path), "--problems", "4"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pictures = sorted(tmp_path.glob("*.png"))
    assert pictures and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pictures)
    assert "wrote" in result.stdout
