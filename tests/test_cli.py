"""The `leaf` command: help, unbuilt commands, tiny-model + saliency end to end, errors without tracebacks."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from leaf.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("analyze", "distill", "serve", "demo", "inspect", "tiny-model", "saliency"):
        assert command in result.output


def test_version_short_help_and_brackets_in_help():
    from leaf import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"leaf {__version__}"
    short = runner.invoke(app, ["analyze", "-h"], env={"COLUMNS": "250"})
    assert short.exit_code == 0 and "--teacher" in short.output
    # rich markup used to swallow bracketed text ("whose  section", "a list of  spans")
    assert "whose [analyze] section" in short.output and "list of [start, end]" in short.output
    assert "--max-tokens" in short.output and "--max-new-tokens" not in short.output  # vLLM's name, as in serve
    old = runner.invoke(app, ["analyze", "--teacher", "t", "--student", "s", "--data", "d", "--output", "o",
                              "--max-new-tokens", "0"])   # the old name: a hidden alias, still read
    assert old.exit_code == 1 and "--max-tokens must be at least 1, got 0" in old.output
    for panel in ("Inputs and output", "Detection", "Performance and scale", "Safety and reproducibility"):
        assert panel in short.output  # 40-odd flags grouped by what they are for


def test_serve_without_prompts_is_a_clear_error():
    result = runner.invoke(app, ["serve", "--model", "x", "--output", "y"])
    assert result.exit_code == 1 and "No prompts" in result.output and "Traceback" not in result.output


def test_tiny_model_then_saliency_json(tmp_path):
    result = runner.invoke(app, ["tiny-model", "--family", "gpt2", "--output", str(tmp_path / "m"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["saliency", "--model", str(tmp_path / "m"), "--prompt", "Tom has 3 red apples.",
                                 "--response", "3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "response NLL" in result.output
    report = json.loads(out.read_text())
    assert "".join(t["text"] for t in report["tokens"]) == "Tom has 3 red apples."
    assert max(t["saliency_norm"] for t in report["tokens"]) == 1.0
    assert min(t["saliency_norm"] for t in report["tokens"]) == 0.0
    # per-token shares add up to the share on the whole prompt (sink excluded in both)
    assert sum(t["attention"] for t in report["tokens"]) == pytest.approx(report["attention_on_prompt"], rel=1e-4)


def test_saliency_method_names_match_inspect_and_the_old_names_still_work(tmp_path):
    """saliency is inseq's id and inspect's name for the same quantity; the unsigned ||g * e|| is
    input_x_gradient_norm (inspect's input_x_gradient is signed); grad and grad_x_input still read as before."""
    assert runner.invoke(app, ["tiny-model", "--output", str(tmp_path / "m")]).exit_code == 0
    scores = {}
    for method in ("saliency", "grad", "input_x_gradient_norm", "grad_x_input"):
        result = runner.invoke(app, ["saliency", "--model", str(tmp_path / "m"), "--prompt", "Tom has 3 apples.",
                                     "--response", "3", "--method", method, "--json"])
        assert result.exit_code == 0, result.output
        scores[method] = [t["saliency"] for t in json.loads(result.output)["tokens"]]
    assert scores["saliency"] == scores["grad"] and scores["input_x_gradient_norm"] == scores["grad_x_input"]
    assert scores["saliency"] != scores["input_x_gradient_norm"]


def test_bad_model_path_is_a_clean_error(tmp_path):
    result = runner.invoke(app, ["saliency", "--model", str(tmp_path / "missing"), "--prompt", "a",
                                 "--response", "b"])
    assert result.exit_code == 1
    assert "does not exist" in result.output
    assert "Traceback" not in result.output


def test_installed_import_names_from_another_folder(tmp_path):
    """leaf.hooks and leaf.serve import from anywhere; hooks/serve are not top-level names."""
    code = ("import leaf.hooks, leaf.serve, importlib.util;"
            "assert importlib.util.find_spec('hooks') is None and importlib.util.find_spec('serve') is None;"
            "print(leaf.hooks.token_saliency.__module__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "leaf.hooks.tracing"
    help_out = subprocess.run([sys.executable, "-m", "leaf", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert help_out.returncode == 0 and "analyze" in help_out.stdout


def test_cli_choices_match_the_library_registries():
    from leaf.analyze import THRESHOLD_MODES
    from leaf.cli import Family, Threshold
    from leaf.analyze.scoring import list_thresholds
    from leaf.models.tiny import FAMILIES

    assert list(THRESHOLD_MODES) == list_thresholds() == [m.value for m in Threshold]
    from leaf.analyze import SPAN_UNITS
    from leaf.spans import SPAN_UNITS as units

    assert SPAN_UNITS == units
    assert [f.value for f in Family] == list(FAMILIES)


def test_json_puts_only_the_summary_on_stdout(tmp_path):
    """--json: stdout is the JSON summary alone (progress and stage lines go to stderr)."""
    from tests.test_answers_gold_segments import GSM_PLUS

    for seed, name in ((1, "t"), (2, "s")):
        assert runner.invoke(app, ["tiny-model", "--output", str(tmp_path / name), "--seed", str(seed)]).exit_code == 0
    result = runner.invoke(app, ["analyze", "--teacher", str(tmp_path / "t"), "--student", str(tmp_path / "s"),
                                 "--data", str(GSM_PLUS), "--limit", "2", "--output", str(tmp_path / "a"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == json.loads((tmp_path / "a" / "summary.json").read_text())
    assert "loading the models" in result.stderr
    result = runner.invoke(app, ["serve", "--model", str(tmp_path / "s"), "--data", str(tmp_path / "a"), "--output",
                                 str(tmp_path / "v"), "--backend", "hf", "--max-tokens", "4", "--iterations", "1",
                                 "--focus-samples", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"]
