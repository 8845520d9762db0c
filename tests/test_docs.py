"""The documentation site (mkdocs.yml) builds with --strict: every page, every API reference entry (leaf.hooks
first), the command-line reference rendered from the commands, no broken link."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_with_the_api_and_cli_references(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=600, env={"NO_MKDOCS_2_WARNING": "1",
                                                                              "PATH": str(Path(sys.executable).parent),
                                                                              "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    hooks = (tmp_path / "site" / "api" / "hooks" / "index.html").read_text()
    for name in ("token_saliency", "attention_mass", "patching_sweep", "load_model"):
        assert f'id="leaf.hooks.{name}"' in hooks, name                      # documented from its docstring
    assert "Per-token gradient sensitivity" in hooks
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    for command in ("analyze", "distill", "serve", "eval", "doctor"):
        assert f"leaf {command}" in cli, command
    assert "--teacher-engine" in cli                                          # rendered from the live commands
