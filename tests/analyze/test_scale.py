"""Past one process: data-parallel analyze under accelerate launch (gloo on CPU), the standalone merge, teacher
scores computed once and reused, and the big-teacher options (device_map, gradient checkpointing)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from leaf.cli import app
from leaf.models.tiny import build_tiny_model
from tests.shared import shortest_gsm_plus, write_jsonl

runner = CliRunner()
FINAL = ("samples.jsonl", "scores.safetensors", "summary.json", "report.html")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run of this module, in this process and in the launched ones, on one thread: a sharded run is compared
    with the one-process run to the last bit, and float32 sums are reduced in another order by another thread count
    (CPU kernels split a reduction per thread), which moves a threshold by an ulp."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """A llama teacher and a qwen2 student with different tokenizers, seven GSM-Plus problems, and the
    one-process analyze run every sharded run is compared with (windows of 2: four windows)."""
    root = tmp_path_factory.mktemp("scale")
    teacher = str(build_tiny_model("llama", root / "teacher", seed=1, tokenizer="bpe"))
    student = str(build_tiny_model("qwen2", root / "student", seed=2))
    data = write_jsonl(root / "data.jsonl", shortest_gsm_plus(7))
    args = ["--teacher", teacher, "--student", student, "--data", str(data), "--gold-pair", "question,seed_question",
            "--window", "2", "--batch-size", "2"]
    single = root / "single"
    result = runner.invoke(app, ["analyze", *args, "--output", str(single)])
    assert result.exit_code == 0, result.output
    return {"root": root, "teacher": teacher, "student": student, "data": data, "args": args, "single": single}


def _launch(*leaf_args, processes=2):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    return subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "leaf", *leaf_args],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        timeout=600)


def _records(folder):
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def _flags(folder):
    return [[[t["flag"] for t in unit["tokens"]] for unit in r.get("units", [])] for r in _records(folder)]


def _close(x, y, atol, where="record"):
    """Equal JSON values, floats within atol."""
    if isinstance(x, float) or isinstance(y, float):
        assert x == pytest.approx(y, abs=atol, rel=0), where
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for key in x:
            _close(x[key], y[key], atol, f"{where}.{key}")
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for i, (u, v) in enumerate(zip(x, y)):
            _close(u, v, atol, f"{where}[{i}]")
    else:
        assert x == y, where


def assert_same_analysis(a, b, atol=0.0):
    """Same records in the same order (flags, spans, counterfactuals), scores within atol, same counts."""
    _close(_records(a), _records(b), atol)
    sa, sb = load_file(str(a / "scores.safetensors")), load_file(str(b / "scores.safetensors"))
    assert sa.keys() == sb.keys() and len(sa) > 0
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=atol, rtol=0)
    summary_a, summary_b = (json.loads((f / "summary.json").read_text()) for f in (a, b))
    assert summary_a["counts"] == summary_b["counts"] and summary_a["detection"] == summary_b["detection"]


@pytest.fixture(scope="module")
def two_processes(setup):
    """The same analyze run under `accelerate launch` with two processes (gloo on CPU): its folder and result."""
    out = setup["root"] / "two"
    return out, _launch("analyze", *setup["args"], "--output", str(out))


def test_two_processes_give_the_one_process_output(setup, two_processes):
    out, result = two_processes
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote ") == 1                     # only the main process reports
    assert_same_analysis(setup["single"], out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["timing"]["processes"] == 2 and summary["timing"]["samples_this_run"] == 7
    # each process wrote its own windows (round-robin): all four parts exist, merged in sample order
    assert sorted(p.name for p in (out / "parts").glob("part-*.jsonl")) == [f"part-0000{w}.jsonl" for w in range(4)]
    assert [r["row"] for r in _records(out)] == list(range(7))


def test_an_interrupted_two_process_run_resumes_per_shard(setup, two_processes):
    finished, result = two_processes
    assert result.returncode == 0, result.stderr[-3000:]
    out = setup["root"] / "resumed"       # a copy of the two-process run, then what a crash leaves
    shutil.copytree(finished, out)
    # a crash: window 1 (process 1's) never finished, window 2 (process 0's) was cut short, nothing was merged
    (out / "parts" / "part-00001.jsonl").unlink()
    (out / "parts" / "part-00002.safetensors").write_bytes(b"\0" * 8)
    for name in FINAL:
        (out / name).unlink()
    kept = {w: (out / "parts" / f"part-0000{w}.jsonl").stat().st_mtime_ns for w in (0, 3)}
    again = _launch("analyze", *setup["args"], "--output", str(out))
    assert again.returncode == 1 and "--resume" in again.stderr        # never overwrites without --resume
    # `leaf analyze --num-processes 2` is the same accelerate launch, started by leaf
    resumed = subprocess.run([sys.executable, "-m", "leaf", "analyze", *setup["args"], "--output", str(out),
                              "--resume", "--num-processes", "2"], capture_output=True, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert {w: (out / "parts" / f"part-0000{w}.jsonl").stat().st_mtime_ns for w in (0, 3)} == kept  # not redone
    assert_same_analysis(setup["single"], out)
    assert json.loads((out / "summary.json").read_text())["timing"]["samples_this_run"] == 4  # windows 1 and 2


def test_merge_on_its_own_rebuilds_the_final_files(setup, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(setup["single"], out)
    before = {name: (out / name).read_bytes() for name in ("samples.jsonl", "scores.safetensors", "report.html")}
    for name in FINAL:
        (out / name).unlink()
    result = runner.invoke(app, ["analyze", "--merge", str(out)])
    assert result.exit_code == 0, result.output
    assert {name: (out / name).read_bytes() for name in before} == before
    (out / "parts" / "part-00003.jsonl").unlink()
    missing = runner.invoke(app, ["analyze", "--merge", str(out)])
    assert missing.exit_code == 1 and "windows 3" in missing.output and "--resume" in missing.output
    empty = runner.invoke(app, ["analyze", "--merge", str(tmp_path)])
    assert empty.exit_code == 1 and "no analyze parts" in empty.output


def test_teacher_scores_computed_once_give_the_online_flags(setup, tmp_path):
    scores = tmp_path / "teacher"
    # the teacher-only pass: other batching, and two processes, must not matter
    result = _launch("analyze", "--teacher", setup["teacher"], "--student", setup["student"], "--teacher-only",
                     "--data", str(setup["data"]), "--output", str(scores), "--window", "3", "--batch-size", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (scores / "tokenizer" / "tokenizer.json").exists()
    summary = json.loads((scores / "summary.json").read_text())
    assert summary["counts"]["scored"] == 7 and summary["models"]["teacher"]["class"] == "LlamaForCausalLM"
    assert "student" not in summary["models"]                         # the student's weights were never loaded
    reuse = tmp_path / "reuse"
    args = [a for a in setup["args"] if a not in ("--teacher", setup["teacher"])]
    result = runner.invoke(app, ["analyze", *args, "--teacher-scores", str(scores), "--output", str(reuse)])
    assert result.exit_code == 0, result.output
    assert _flags(reuse) == _flags(setup["single"]) and any(any(any(u) for u in r) for r in _flags(reuse))
    assert_same_analysis(setup["single"], reuse, atol=2e-5)  # JSON rounds to 5 places
    assert json.loads((reuse / "summary.json").read_text())["models"]["teacher"]["scores_from"] == str(scores)
    # scores of other text are refused before any work, and claim no folder
    other = runner.invoke(app, ["analyze", *args, "--teacher-scores", str(scores), "--output", str(tmp_path / "x"),
                                "--template", "none"])
    assert other.exit_code == 1 and "do not cover sample" in other.output and not (tmp_path / "x").exists()
    wrong = runner.invoke(app, ["analyze", *args, "--teacher-scores", str(setup["single"]), "--output",
                                str(tmp_path / "y")])
    assert wrong.exit_code == 1 and "--teacher-only" in wrong.output


@pytest.mark.parametrize("args, message", [
    (["--teacher-only", "--teacher-scores", "s"], "not both"),
    (["--teacher-only", "--select"], "not with --teacher-only"),
])
def test_teacher_score_options_are_checked(setup, tmp_path, args, message):
    result = runner.invoke(app, ["analyze", *setup["args"], "--output", str(tmp_path / "o"), *args])
    assert result.exit_code == 1 and message in result.output, result.output


def test_teacher_only_with_the_student_template_needs_the_student(setup, tmp_path):
    result = runner.invoke(app, ["analyze", "--teacher", setup["teacher"], "--teacher-only", "--template",
                                 "student", "--data", str(setup["data"]), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "needs --student" in result.output
    own = runner.invoke(app, ["analyze", "--teacher", setup["teacher"], "--teacher-only", "--data",
                              str(setup["data"]), "--output", str(tmp_path / "own")])   # own template: no student
    assert own.exit_code == 0, own.output
    plain = runner.invoke(app, ["analyze", "--teacher", setup["teacher"], "--teacher-only", "--template", "none",
                                "--data", str(setup["data"]), "--output", str(tmp_path / "p")])
    assert plain.exit_code == 0, plain.output


def test_big_teacher_options_leave_the_scores_unchanged(setup, tmp_path):
    """device_map (accelerate's dispatch; here every layer on the CPU) and gradient checkpointing change memory,
    not results: same flags and scores as the plain run."""
    out = tmp_path / "big"
    result = runner.invoke(app, ["analyze", *setup["args"], "--output", str(out), "--device-map", "cpu",
                                 "--gradient-checkpointing"])
    assert result.exit_code == 0, result.output
    assert_same_analysis(setup["single"], out, atol=2e-5)


def test_gradient_checkpointing_recomputes_every_layer_and_changes_no_score(setup, monkeypatch):
    """The layers really run under torch.utils.checkpoint (counted), the saliency equals the plain backward's, and
    the model comes back as it was (eval mode, no checkpointing)."""
    import transformers.modeling_utils as modeling_utils

    from leaf.hooks import HookPlan, load_model, run

    model = load_model(setup["teacher"])
    ids = [torch.randint(5, 200, (n,)) for n in (30, 24, 18)]
    targets = [torch.arange(len(x)) > 10 for x in ids]
    plain = run(model, ids, HookPlan(saliency="grad", target_mask=targets), batch_size=2)
    calls = []
    original = modeling_utils.checkpoint
    monkeypatch.setattr(modeling_utils, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    checkpointed = run(model, ids, HookPlan(saliency="grad", target_mask=targets, gradient_checkpointing=True),
                       batch_size=2)
    assert len(calls) == model.arch.num_layers * 2                      # every layer of both batches
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a.saliency, b.saliency)
        assert a.loss == pytest.approx(b.loss)
    assert not model.hf_model.training and not model.hf_model.is_gradient_checkpointing
    assert not any(m.training for m in model.hf_model.modules())


def test_a_teacher_only_run_killed_before_its_first_window_resumes(setup, tmp_path):
    """The folder is claimed (manifest, tokenizer/) before any window finishes: --resume continues it, and a run
    without --resume refuses to overwrite it; a memory-only setting may change on resume."""
    out = tmp_path / "teacher"
    args = ["analyze", "--teacher", setup["teacher"], "--teacher-only", "--template", "none", "--data",
            str(setup["data"]), "--output", str(out), "--window", "3"]
    assert runner.invoke(app, args).exit_code == 0
    for path in (out / "parts").glob("part-*"):
        path.unlink()
    for name in ("teacher_scores.safetensors", "teacher_scores.jsonl", "summary.json"):
        (out / name).unlink()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "--resume" in refused.output
    resumed = runner.invoke(app, [*args, "--resume", "--gradient-checkpointing"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "summary.json").read_text())["counts"]["scored"] == 7


def test_merge_needs_neither_models_nor_vllm(setup, tmp_path, monkeypatch):
    """A run recorded with --select --generator vllm merges on a machine without vLLM: the recorded settings are
    read, not re-validated."""
    import leaf.serve.backends

    out = tmp_path / "copy"
    shutil.copytree(setup["single"], out)
    run_info = json.loads((out / "parts" / "run.json").read_text())
    run_info["config"].update(select=True, generator="vllm")
    (out / "parts" / "run.json").write_text(json.dumps(run_info))

    def no_vllm(name):
        raise AssertionError("the merge must not resolve a generator")

    monkeypatch.setattr(leaf.serve.backends, "resolve_backend", no_vllm)
    for name in FINAL:
        (out / name).unlink()
    result = runner.invoke(app, ["analyze", "--merge", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("samples.jsonl", "scores.safetensors"):   # the merged output is the one-process run's
        assert (out / name).read_bytes() == (setup["single"] / name).read_bytes(), name
