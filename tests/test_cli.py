"""The `leaf` command: help, unbuilt commands, tiny-model + saliency end to end, errors without tracebacks."""

import dataclasses
import inspect
import json
import subprocess
import sys
import typing
from enum import Enum

import pytest
import typer
from typer.testing import CliRunner

from leaf import cli
from leaf.analyze import AnalyzeConfig
from leaf.cli import app
from leaf.demo.run import DemoConfig
from leaf.distill import DistillConfig
from leaf.inspect import InspectConfig
from leaf.inspect.saliency import SaliencyReportConfig
from leaf.options import _without_none, field_help
from leaf.serve.run import ServeConfig

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


def test_every_help_is_readable_in_80_columns():
    """No option name, type or help text cut with "…" at 80 columns (rich cut 20 in distill's help before
    leaf.help_format): every command's every option name appears whole, and no line is wider than the terminal."""
    import click

    commands = typer.main.get_command(app).commands
    assert len(commands) >= 10
    for name, command in commands.items():
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert result.exit_code == 0, (name, result.output)
        assert "…" not in result.output, name
        assert max(len(line) for line in result.output.splitlines()) <= 80, name
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for opt in [o for o in param.opts + param.secondary_opts if o.startswith("--")]:
                    assert opt in result.output, (name, opt)


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


def _annotation(command, name: str):
    """The type a command's option has (typer reads it from the command's signature, made from its config)."""
    return typing.get_args(inspect.signature(getattr(cli, command)).parameters[name].annotation)[0]


def _choices(command: str, name: str) -> list[str]:
    enum = _without_none(_annotation(command, name))
    return [m.value for m in (typing.get_args(enum)[0] if typing.get_origin(enum) is list else enum)]


def test_cli_choices_match_the_library_registries():
    from leaf.analyze import SPAN_UNITS, THRESHOLD_MODES
    from leaf.analyze.thresholds import gradient_modes, list_thresholds
    from leaf.distill import MODES
    from leaf.hooks import COMPONENTS
    from leaf.distill.losses import DIVERGENCES
    from leaf.models.tiny import FAMILIES, SIZES
    from leaf.serve.backends import BACKENDS
    from leaf.spans import SPAN_UNITS as units

    assert list(THRESHOLD_MODES) == list_thresholds() == _choices("analyze", "threshold")
    assert _choices("analyze", "baseline_count") == gradient_modes()
    assert SPAN_UNITS == units and _choices("analyze", "span_unit") == list(units)
    assert _choices("distill", "mode") == list(MODES) and _choices("distill", "divergence") == list(DIVERGENCES)
    assert _choices("inspect", "components") == list(COMPONENTS)
    assert _choices("serve", "backend") == _choices("demo", "backend") == _choices("analyze", "generator") == list(
        BACKENDS)
    assert [f.value for f in cli.Family] == list(FAMILIES) and [s.value for s in cli.Size] == list(SIZES)


CONFIG_COMMANDS = {"analyze": AnalyzeConfig, "distill": DistillConfig, "serve": ServeConfig,
                   "inspect": InspectConfig, "demo": DemoConfig, "saliency": SaliencyReportConfig}


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
def test_every_config_field_is_an_option_with_its_type_default_and_help(command):
    """The options of a config-backed command are made from its dataclass: a field without an option, or an option
    whose type, default or help differs from its field's, fails here."""
    config_class = CONFIG_COMMANDS[command]
    params = {p.name: p for p in typer.main.get_command(app).commands[command.replace("_", "-")].params}
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        param = params[f.name]
        assert param.help == field_help(config_class, f.name), f.name
        default = param.default.value if isinstance(param.default, Enum) else param.default
        if f.default is not dataclasses.MISSING:
            assert default == f.default and not param.required, f.name
        elif f.default_factory is not dataclasses.MISSING:
            assert default is None and not param.required, f.name   # not given: the factory's value
        else:
            assert param.required or (command, f.name) == ("serve", "output"), f.name  # --openai needs no --output
        field_type = _without_none(hints[f.name])
        if f.name in cli.FLAGS and cli.FLAGS[f.name].choices:   # a str field offered as its choices
            assert field_type in (str, list[str]) and _choices(command, f.name) == list(cli.FLAGS[f.name].choices)
        else:
            assert _without_none(_annotation(command, f.name)) == field_type, f.name


def test_flags_keep_their_names_aliases_and_switches():
    commands = typer.main.get_command(app).commands
    opts = {(c, p.name): (p.opts, p.secondary_opts, p.hidden) for c, cmd in commands.items() for p in cmd.params}
    assert opts["distill", "lam"][0] == ["--lambda", "--lambda-schedule"]
    assert opts["analyze", "max_new_tokens"][0] == ["--max-tokens"]
    assert [o for (c, _), o in opts.items() if c == "analyze" and "--max-new-tokens" in o[0]] == [
        (["--max-new-tokens"], [], True)]                                     # the old name: read, not shown
    assert opts["serve", "models"][0] == ["--model"] and opts["serve", "names"][0] == ["--name"]
    assert [opts["inspect", n][0] for n in ("samples", "components", "methods", "layers")] == [
        ["--sample"], ["--component"], ["--method"], ["--layer"]]
    assert opts["demo", "settings"][0] == ["--setting"]
    for command in set(CONFIG_COMMANDS) - {"demo"}:                          # one switch, no --no-allow-pickle
        assert opts[command, "allow_pickle"][:2] == (["--allow-pickle"], [])
    assert opts["demo", "quick"][:2] == (["--quick"], []) and opts["analyze", "select"][1] == ["--no-select"]


def test_the_command_line_loads_no_torch():
    code = "import sys, leaf.cli; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'vllm')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_json_puts_only_the_summary_on_stdout(tmp_path):
    """--json: stdout is the JSON summary alone (progress and stage lines go to stderr)."""
    from tests.shared import GSM_PLUS

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
