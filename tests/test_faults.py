"""Faults and crafted inputs that used to lose data or get in (issue 15): each test failed before its fix."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from leaf.analyze import AnalyzeConfig, run_analyze, window_done
from leaf.cli import app
from leaf.distill import DistillConfig, run_distill
from leaf.errors import LeafError
from leaf.models.tiny import build_tiny_model
from tests.shared import GSM_PLUS, free_port

runner = CliRunner()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    data = tmp_path_factory.mktemp("faults") / "rows.jsonl"
    lines = sorted(GSM_PLUS.read_text().splitlines(), key=len)[:6]
    data.write_text("\n".join(lines) + "\n")
    return data


@pytest.fixture(scope="module")
def neox(tmp_path_factory):
    """GPT-NeoX (Pythia's layout: untied `embed_out`, renamed to lm_head when transformers loads it) as teacher
    and student, and an analyze folder."""
    root = tmp_path_factory.mktemp("neox")
    teacher = str(build_tiny_model("gpt_neox", root / "teacher", seed=1))
    student = str(build_tiny_model("gpt_neox", root / "student", seed=2))
    return teacher, student


def test_the_neox_checkpoint_keeps_embed_out(neox):
    """The premise: checkpoints keep the hub name while the loaded model calls it lm_head."""
    from transformers import AutoModelForCausalLM

    saved = load_file(os.path.join(neox[1], "model.safetensors"))
    assert "embed_out.weight" in saved and "lm_head.weight" not in saved
    model = AutoModelForCausalLM.from_pretrained(neox[1])
    assert "lm_head.weight" in model.state_dict() and not model.config.tie_word_embeddings


def test_resume_restores_the_untied_renamed_head_of_a_neox_student(neox, rows, tmp_path):
    """A GPT-NeoX student cut after step 2 and resumed ends with the uninterrupted run's weights, head included
    (the Trainer's own loader skipped `embed_out` and left the head at its step-0 values)."""
    teacher, student = neox

    def config(out, **kw):
        return DistillConfig(teacher=teacher, student=student, data=rows, output=out, mode="kd", max_steps=4,
                             batch_size=2, save_steps=2, lr=1e-2, **kw)

    run_distill(config(tmp_path / "full"), progress=False)
    run_distill(config(tmp_path / "cut"), progress=False)
    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(tmp_path / "cut" / "final")
    run_distill(config(tmp_path / "cut", resume=True), progress=False)
    full, cut = (load_file(str(tmp_path / run / "final" / "model.safetensors")) for run in ("full", "cut"))
    start = load_file(os.path.join(student, "model.safetensors"))
    assert full.keys() == cut.keys() and "embed_out.weight" in full
    assert not torch.allclose(full["embed_out.weight"], start["embed_out.weight"])  # the head trained
    for name in full:
        torch.testing.assert_close(cut[name], full[name], atol=1e-6, rtol=1e-5)


def test_a_checkpoint_with_a_missing_key_is_an_error_on_resume(neox, rows, tmp_path):
    from safetensors.torch import save_file

    teacher, student = neox
    config = dict(teacher=teacher, student=student, data=rows, output=tmp_path / "run", mode="kd", max_steps=4,
                  batch_size=2, save_steps=2, lr=1e-3)
    run_distill(DistillConfig(**config), progress=False)
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(tmp_path / "run" / "final")
    weights = tmp_path / "run" / "checkpoints" / "checkpoint-2" / "model.safetensors"
    tensors = load_file(str(weights))
    del tensors["embed_out.weight"]
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(LeafError, match="does not fit the student.*embed_out|does not fit the student.*lm_head"):
        run_distill(DistillConfig(**config, resume=True), progress=False)


def test_tiny_model_refuses_a_non_empty_folder(tmp_path):
    folder = tmp_path / "trained"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"trained weights")
    result = runner.invoke(app, ["tiny-model", "--output", str(folder)])
    assert result.exit_code == 1 and "not empty" in result.output and "nothing was overwritten" in result.output
    assert (folder / "model.safetensors").read_bytes() == b"trained weights"


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("analyzed")
    teacher = str(build_tiny_model("llama", root / "teacher", seed=3))
    student = str(build_tiny_model("llama", root / "student", seed=4))
    out = root / "analyze"
    run_analyze(AnalyzeConfig(teacher=teacher, student=student, data=rows, output=out, window=3,
                              threshold="quantile", quantile=0.1), progress=False)
    return teacher, student, out


def test_a_part_file_that_lost_a_line_is_redone_on_resume(analyzed, rows, tmp_path):
    teacher, student, out = analyzed
    copy = tmp_path / "analyze"
    shutil.copytree(out, copy)
    part = copy / "parts" / "part-00001.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:-1]))  # a whole line lost: every remaining line still parses
    assert not window_done(copy, 1) and window_done(copy, 0)
    run_analyze(AnalyzeConfig(teacher=teacher, student=student, data=rows, output=copy, window=3,
                              threshold="quantile", quantile=0.1, resume=True), progress=False)
    records = (copy / "samples.jsonl").read_text().splitlines()
    assert len(records) == 6 and records == (out / "samples.jsonl").read_text().splitlines()


def test_consumers_refuse_an_analyze_folder_whose_run_did_not_finish(analyzed, tmp_path):
    """What a full disk leaves: a complete-looking samples.jsonl without summary.json (written last); and a
    samples.jsonl cut short after the summary. distill, serve and inspect refuse both."""
    teacher, student, out = analyzed
    unfinished = tmp_path / "unfinished"
    shutil.copytree(out, unfinished)
    (unfinished / "summary.json").unlink()
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    lines = (cut / "samples.jsonl").read_text().splitlines(keepends=True)
    (cut / "samples.jsonl").write_text("".join(lines[:-1]))
    for folder, message in ((unfinished, "unfinished `leaf analyze` run"), (cut, "does not match summary.json")):
        with pytest.raises(LeafError, match=message):
            run_distill(DistillConfig(teacher=teacher, student=student, data=folder, output=tmp_path / "d"),
                        progress=False)
        result = runner.invoke(app, ["serve", "--model", student, "--data", str(folder), "--output",
                                     str(tmp_path / "s"), "--backend", "hf"])
        assert result.exit_code == 1 and message in result.output.replace("\n", " "), result.output
        result = runner.invoke(app, ["inspect", "--analyze", str(folder), "--output", str(tmp_path / "i")])
        assert result.exit_code == 1 and message in result.output.replace("\n", " "), result.output
    assert not (tmp_path / "d").exists() and not (tmp_path / "s").exists() and not (tmp_path / "i").exists()


def test_the_loading_policy_holds_on_the_vllm_paths(tmp_path):
    """A folder with only pickle weights: refused by every serve backend and by --openai unless --allow-pickle,
    before vLLM starts; with it, vLLM may load (load_format auto), else it is told to read safetensors only."""
    from leaf.serve.engines import check_vllm_can_load
    from leaf.serve.openai_server import server_command

    folder = build_tiny_model("llama", tmp_path / "m", seed=0)
    state = load_file(str(folder / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n")
    for backend in ("vllm", "auto", "hf"):
        result = runner.invoke(app, ["serve", "--model", str(folder), "--data", str(data), "--output",
                                     str(tmp_path / backend), "--backend", backend])
        assert result.exit_code == 1 and "only pickle weights" in result.output, result.output
    result = runner.invoke(app, ["serve", "--openai", "--model", str(folder), "--port", "1"])
    assert result.exit_code == 1 and "only pickle weights" in result.output, result.output
    assert check_vllm_can_load(str(folder), "cpu", allow_pickle=True) == "auto"
    assert "--load-format safetensors" in " ".join(server_command(str(folder), 8000))
    assert "--load-format auto" in " ".join(server_command(str(folder), 8000, allow_pickle=True))


def test_inspect_never_turns_a_row_field_into_a_path(analyzed, tmp_path):
    teacher, student, out = analyzed
    crafted = tmp_path / "crafted"
    shutil.copytree(out, crafted)
    records = [json.loads(line) for line in (crafted / "samples.jsonl").read_text().splitlines()]
    records[0]["row"] = "x/../../../escaped"
    text = "".join(json.dumps(r) + "\n" for r in records)
    (crafted / "samples.jsonl").write_text(text)
    summary = json.loads((crafted / "summary.json").read_text())  # an attacker rewrites the digest too
    import hashlib

    summary["files"]["samples.jsonl"]["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (crafted / "summary.json").write_text(json.dumps(summary))
    result = runner.invoke(app, ["inspect", "--analyze", str(crafted), "--output", str(tmp_path / "o" / "i")])
    assert result.exit_code == 1 and "'row' must be a non-negative integer" in result.output, result.output
    assert not (tmp_path / "escaped").exists() and not any(tmp_path.glob("**/sample-*"))


@pytest.fixture(scope="module")
def remote_code(tmp_path_factory):
    """A causal LM whose architecture lives in the checkpoint's own code (auto_map), as on the hub."""
    folder = build_tiny_model("llama", tmp_path_factory.mktemp("remote") / "custom", seed=5)
    (folder / "configuration_custom.py").write_text(
        "from transformers import LlamaConfig\n\n\nclass CustomConfig(LlamaConfig):\n    model_type = 'custom_lm'\n")
    (folder / "modeling_custom.py").write_text(
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_custom import CustomConfig\n\n\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="custom_lm", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_remote_code_runs_only_with_the_flag_and_then_in_every_command(remote_code, rows, tmp_path):
    saliency = ["saliency", "--model", remote_code, "--prompt", "Tom has 3 apples.", "--response", "3"]
    result = runner.invoke(app, saliency)
    assert result.exit_code == 1 and "--trust-remote-code" in result.output, result.output
    result = runner.invoke(app, [*saliency, "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    analyze = ["analyze", "--teacher", remote_code, "--student", remote_code, "--data", str(rows), "--limit", "2",
               "--output", str(tmp_path / "a")]
    result = runner.invoke(app, analyze)
    assert result.exit_code == 1 and "--trust-remote-code" in result.output, result.output
    result = runner.invoke(app, [*analyze, "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    distill = ["distill", "--teacher", remote_code, "--student", remote_code, "--data", str(tmp_path / "a"),
               "--mode", "kd", "--max-steps", "1", "--batch-size", "1", "--output", str(tmp_path / "d")]
    result = runner.invoke(app, distill)
    assert result.exit_code == 1 and "--trust-remote-code" in result.output, result.output
    result = runner.invoke(app, [*distill, "--trust-remote-code"])
    assert result.exit_code == 0, result.output
    serve = ["serve", "--model", remote_code, "--data", str(tmp_path / "a"), "--backend", "hf", "--max-tokens", "4",
             "--iterations", "1", "--focus-samples", "1", "--output", str(tmp_path / "s")]
    result = runner.invoke(app, serve)
    assert result.exit_code == 1 and "--trust-remote-code" in result.output, result.output
    result = runner.invoke(app, [*serve, "--trust-remote-code"])
    assert result.exit_code == 0, result.output


def test_a_missing_local_path_is_never_taken_for_a_hub_id(tmp_path, monkeypatch):
    from leaf.hooks.loading import resolve_source

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(LeafError, match=r"'runs/teacher' does not exist \(runs/ exists"):
        resolve_source("runs/teacher")
    for path in ("./teacher", "/no/such/folder", "~/no-such-model", "a/b/c", "teacher"):
        with pytest.raises(LeafError, match="does not exist"):
            resolve_source(path)
    assert resolve_source("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"  # no Qwen/ folder here
    (tmp_path / "runs" / "teacher").mkdir()
    assert resolve_source("runs/teacher") == "runs/teacher"
    result = runner.invoke(app, ["saliency", "--model", "runs/student", "--prompt", "a", "--response", "b"])
    assert result.exit_code == 1 and "does not exist (runs/ exists" in result.output


def test_openai_refuses_a_busy_port_before_starting_vllm(analyzed):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["serve", "--openai", "--model", analyzed[1], "--port", str(port)])
    assert result.exit_code == 1 and f"Port {port}" in result.output and "in use" in result.output


def test_messages_not_tracebacks(analyzed, tmp_path):
    teacher, student, out = analyzed
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps({"question": "caf\u00e9", "solution": "1"}).encode().replace(b"\\u00e9", b"\xe9")
                      + b"\n")
    result = runner.invoke(app, ["analyze", "--teacher", teacher, "--student", student, "--data", str(latin),
                                 "--output", str(tmp_path / "a")])
    assert result.exit_code == 1 and "not UTF-8" in result.output, result.output
    result = runner.invoke(app, ["distill", "--teacher", teacher, "--student", student, "--data", str(latin),
                                 "--output", str(tmp_path / "d"), "--mode", "kd"])
    assert result.exit_code == 1 and "not UTF-8" in result.output, result.output
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    for output in (a_file, a_file / "below"):
        for args in (["analyze", "--teacher", teacher, "--student", student, "--data", str(GSM_PLUS)],
                     ["distill", "--teacher", teacher, "--student", student, "--data", str(out)],
                     ["serve", "--model", student, "--data", str(out)],
                     ["inspect", "--analyze", str(out)], ["tiny-model"], ["demo"]):
            with pytest.MonkeyPatch.context() as patch:  # refused before any model loads
                patch.setattr("leaf.hooks.load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
                result = runner.invoke(app, [*args, "--output", str(output)])
            assert result.exit_code == 1 and ("is a file" in result.output or "which is a file" in result.output), \
                (args, result.output)
    assert a_file.read_text() == "keep me"


def test_a_full_disk_is_a_message_and_loses_nothing(analyzed, tmp_path, monkeypatch):
    """ENOSPC while writing: exit 1 with what happened and what to do; the previous file stays whole."""
    import errno

    import leaf.io

    target = tmp_path / "result.json"
    leaf.io.write_json_atomic(target, {"old": True})

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(leaf.io, "write_bytes_atomic", full)
    with pytest.raises(OSError):
        leaf.io.write_json_atomic(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    teacher, student, out = analyzed
    result = runner.invoke(app, ["saliency", "--model", student, "--prompt", "a b", "--response", "c",
                                 "--output", str(target)])
    assert result.exit_code == 1 and "No space left" in result.output and "Traceback" not in result.output, \
        result.output


def test_an_unpickling_error_under_allow_pickle_is_a_message(tmp_path):
    folder = build_tiny_model("llama", tmp_path / "m", seed=0)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle at all")
    result = runner.invoke(app, ["saliency", "--model", str(folder), "--prompt", "a", "--response", "b",
                                 "--allow-pickle"])
    assert result.exit_code == 1 and "Could not load" in result.output and "Traceback" not in result.output, \
        result.output


def test_a_second_analyze_on_a_running_folder_is_refused(analyzed, rows, tmp_path):
    """Two `leaf analyze --resume` on one folder: the second is refused, naming the first one's PID; the lock goes
    with its process, so after a kill a resume runs."""
    from leaf.run_folder import FolderLock

    teacher, student, out = analyzed
    folder = tmp_path / "analyze"
    shutil.copytree(out, folder)
    shutil.rmtree(folder / "parts" / "part-00001.jsonl", ignore_errors=True)
    (folder / "parts" / "part-00001.jsonl").unlink(missing_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom leaf.run_folder import FolderLock\n"
                               f"FolderLock({str(folder / 'parts')!r}, 'analyze').acquire()\nprint('held', flush=True)"
                               "\ntime.sleep(600)"], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        config = AnalyzeConfig(teacher=teacher, student=student, data=rows, output=folder, window=3,
                               threshold="quantile", quantile=0.1, resume=True)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("leaf.hooks.load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
            with pytest.raises(LeafError, match=f"in use by another running leaf analyze \\(PID, host: {holder.pid} "):
                run_analyze(config, progress=False)
    finally:
        holder.kill()
        holder.wait()
    run_analyze(config, progress=False)  # the dead holder's lock is gone
    assert len((folder / "samples.jsonl").read_text().splitlines()) == 6
    FolderLock(folder / "parts", "analyze").acquire().release()


def test_a_server_that_dies_is_reported_with_its_code_and_log(analyzed, tmp_path, monkeypatch):
    """When vLLM's server exits on its own, leaf exits 1 with the server's exit code and the tail of its log (it
    used to exit 0, with the log sent to /dev/null)."""
    from leaf.serve import openai_server

    log = tmp_path / "server.log"

    def fake_start(model, port, **kwargs):
        log.write_text("... CUDA out of memory (the last words of the server)\n")
        process = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"])
        process.log = log
        return process

    monkeypatch.setattr(openai_server, "start", fake_start)
    result = runner.invoke(app, ["serve", "--openai", "--model", analyzed[1], "--port", str(free_port())])
    assert result.exit_code == 1, result.output
    assert "exited on its own with code 3" in result.output and "the last words of the server" in result.output


def test_checks_that_need_no_model_run_before_any_model_loads(analyzed, rows, tmp_path):
    """An existing output folder, --resume with other settings, a typo in --gold-pair or --prompt-field: each is
    said before a model loads (with a 70B teacher each used to cost minutes)."""
    teacher, student, out = analyzed
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    cases = [
        (dict(output=taken), "exists and is not empty"),
        (dict(output=resumed), "already holds an analyze run. Pass --resume"),
        (dict(output=resumed, resume=True, quantile=0.2), "differs in: quantile"),
        (dict(output=tmp_path / "a", gold_pair="question,seed_questoin"), "no field 'seed_questoin'"),
        (dict(output=tmp_path / "b", prompt_field="questoin"), "no field 'questoin'"),
    ]
    for overrides, message in cases:
        settings = dict(teacher=teacher, student=student, data=rows, window=3, threshold="quantile", quantile=0.1)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("leaf.hooks.load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
            patch.setattr("leaf.hooks.loading.load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
            with pytest.raises(LeafError, match=message):
                run_analyze(AnalyzeConfig(**{**settings, **overrides}), progress=False)
    assert (taken / "notes.txt").read_text() == "mine" and not (tmp_path / "a").exists()
