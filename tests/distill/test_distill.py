"""`leaf distill` on tiny models: every mode trains and saves a loadable student, the KL falls, resume is exact."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from leaf.analyze import AnalyzeConfig, run_analyze
from leaf.distill import DistillConfig, run_distill
from leaf.errors import LeafError
from leaf.records import SCHEMA_VERSION, AnalysedSample, samples_text
from leaf.models.tiny import build_tiny_model
from tests.shared import GSM_PLUS
from tests.tolerances import EPS32, sum_atol


@pytest.fixture(scope="module")
def setup(analyzed):
    """(teacher, student, analyze folder): conftest's shared analyze run (Qwen2 pair, one tokenizer, both levels)."""
    return analyzed.teacher, analyzed.student, analyzed.folder


def _config(setup, out, **kwargs):
    teacher, student, analyze = setup
    defaults = dict(teacher=teacher, student=student, data=analyze, output=out, max_steps=4, batch_size=2,
                    save_steps=2, lr=1e-3)
    return DistillConfig(**{**defaults, **kwargs})


@pytest.mark.parametrize("mode", ["kd", "instr", "instr+resp"])
def test_four_steps_save_a_student_that_reloads_and_generates(setup, tmp_path, mode):
    summary = run_distill(_config(setup, tmp_path / "out", mode=mode), progress=False)
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2, 3, 4] and summary["steps"] == 4
    assert all(line["kd_original"] > 0 for line in log)
    if mode == "kd":
        assert all(line["kd_counterfactual"] is None for line in log)
    else:
        assert all(line["kd_counterfactual"] is not None and line["kd_counterfactual"] > 0 for line in log)
    assert [line["lambda"] for line in log] == pytest.approx([0.8, 0.7, 0.6, 0.5])  # linear:0.8:0.5
    final = tmp_path / "out" / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.chat_template and (final / "model.safetensors").exists()
    ids = tok.apply_chat_template([{"role": "user", "content": "2+3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5
    start = AutoModelForCausalLM.from_pretrained(setup[1])
    assert not torch.equal(model.model.embed_tokens.weight, start.model.embed_tokens.weight)  # it trained
    if mode == "kd":  # TensorBoard curves by default when tensorboard is installed (it is in the test extra),
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        board = EventAccumulator(str(tmp_path / "out" / "tensorboard"))
        board.Reload()  # through the Trainer's log at the last step (--logging-steps 10): the mean of the 4 steps
        assert [e.step for e in board.Scalars("train/kd_original")] == [4]
        # the Trainer averages the 4 float32 values and TensorBoard stores a float32: a mean of 4 terms, then one
        # rounding (Higham's bound, tests/tolerances.py), against the exact mean of the logged values
        values = torch.tensor([line["kd_original"] for line in log])
        assert board.Scalars("train/kd_original")[0].value == pytest.approx(
            float(values.double().mean()), rel=0, abs=sum_atol(values) / 4 + EPS32 * float(values.abs().max()))


def test_bf16_distill_keeps_float32_master_weights_and_serves_in_bf16(setup, tmp_path, monkeypatch):
    """--dtype bfloat16 on CPU: the teacher loads in bf16, the student in float32 (the optimizer's master weights,
    saved in final/ as float32) and trains under bf16 autocast; the first step's KL lies within the bf16 rounding
    bound of the float32 run's (tests/tolerances.kd_atol with bf16's unit, over every position of the data: a
    batch mean moves by no more than its largest term); the student serves in vLLM in bf16."""
    import leaf.hooks
    from typer.testing import CliRunner

    from leaf.cli import app
    from leaf.distill.data import build_examples
    from leaf.distill.losses import logit_mask
    from leaf.distill.run import load_records_for
    from tests.tolerances import kd_atol

    loaded = []
    real_load = leaf.hooks.load_model
    monkeypatch.setattr(leaf.hooks, "load_model",
                        lambda name, **kw: loaded.append((name, kw["dtype"])) or real_load(name, **kw))
    half = run_distill(_config(setup, tmp_path / "bf16", mode="kd", max_steps=2, dtype="bfloat16"), progress=False)
    assert loaded == [(setup[1], "float32"), (setup[0], "bfloat16")]
    full = run_distill(_config(setup, tmp_path / "f32", mode="kd", max_steps=2), progress=False)
    weights = load_file(half["final"] + "/model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    config = _config(setup, tmp_path / "unused", mode="kd")
    records, _ = load_records_for(config)
    tok = AutoTokenizer.from_pretrained(setup[1])
    examples, _ = build_examples(records, tok, "kd", None)
    teacher, student = (AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval() for p in setup[:2])
    bound = 0.0
    with torch.no_grad():
        for ex in examples:
            ids = torch.tensor([ex.input_ids])
            mask = logit_mask(torch.tensor([ex.response_mask]))
            bound = max(bound, kd_atol(student(ids).logits, teacher(ids).logits, mask,
                                       eps=torch.finfo(torch.bfloat16).eps))
    first = [json.loads((tmp_path / run / "log.jsonl").read_text().splitlines()[0])["kd_original"]
             for run in ("bf16", "f32")]
    assert first[0] == pytest.approx(first[1], rel=0, abs=bound) and first[0] != first[1]

    served = CliRunner().invoke(app, ["serve", "--model", half["final"], "--data", str(setup[2]), "--dtype",
                                      "bfloat16", "--output", str(tmp_path / "served"), "--max-tokens", "8",
                                      "--iterations", "1"])
    assert served.exit_code == 0, served.output
    [entry] = json.loads((tmp_path / "served" / "results.json").read_text())["models"].values()
    assert entry["engine"]["dtype"] == "bfloat16" and entry["sets"]["original"]["total_output_tokens"] > 0
    assert full["steps"] == half["steps"] == 2


def _other_template(source, folder):
    """A copy of a model whose chat template writes "# " after the BOS: same vocabulary, other text."""
    shutil.copytree(source, folder)
    jinja = folder / "chat_template.jinja"
    jinja.write_text(jinja.read_text().replace("{{ bos_token }}", "{{ bos_token }}# ", 1))
    return str(folder)


def test_distill_uses_the_rendering_analyze_recorded_and_refuses_another(setup, tmp_path):
    """The originals are encoded from the text and spans analyze recorded, counterfactuals rendered under its
    --template (here the teacher's, whose chat template differs from the student's own); a student whose tokenizer
    no longer gives the recorded text is refused instead of being silently re-rendered."""
    from leaf.distill.data import build_examples, read_analyze_output
    from leaf.hooks import encode_text
    from leaf.records import check_finished
    from leaf.rendering import own_rendering, recorded_template

    teacher, student, analyze = setup
    odd = _other_template(student, tmp_path / "odd-student")
    folder = tmp_path / "analyze-teacher-template"
    run_analyze(AnalyzeConfig(teacher=teacher, student=odd, data=analyze.parent / "data.jsonl", output=folder,
                              threshold="quantile", quantile=0.05, level="both", template="teacher"), progress=False)
    records = read_analyze_output(folder)
    tok = AutoTokenizer.from_pretrained(odd)
    template = recorded_template(check_finished(folder))
    assert template.mode == "teacher"
    examples, _ = build_examples(records, tok, "instr+resp", None, template=template, what=str(folder))
    for record, example in zip(records, examples):
        recorded = encode_text(tok, record.text, tuple(record.prompt_span), tuple(record.response_span))
        assert example.input_ids == recorded.input_ids.tolist()
        own = own_rendering(tok, record.prompt, record.response)
        assert own.text != record.text                        # the student's own template would differ
    assert sum(len(e.counterfactuals) for e in examples) > 0
    summary = run_distill(_config(setup, tmp_path / "ok", data=folder, student=odd, max_steps=1), progress=False)
    assert summary["steps"] == 1

    with pytest.raises(LeafError, match="rendered by leaf analyze"):  # analyze rendered for the plain student
        run_distill(_config(setup, tmp_path / "refused", student=odd, max_steps=1), progress=False)


def test_the_student_moves_towards_the_teacher(setup, tmp_path):
    run_distill(_config(setup, tmp_path / "out", max_steps=12, lam="1.0", save_steps=100), progress=False)
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    first = sum(line["kd_original"] for line in log[:3]) / 3
    last = sum(line["kd_original"] for line in log[-3:]) / 3
    assert last < 0.7 * first, (first, last)


def test_resume_after_an_interruption_gives_the_same_weights(setup, tmp_path):
    run_distill(_config(setup, tmp_path / "full"), progress=False)
    run_distill(_config(setup, tmp_path / "cut"), progress=False)
    # the state a kill after step 2 leaves: checkpoint-2 on disk, nothing after it
    import shutil

    shutil.rmtree(tmp_path / "cut" / "checkpoints" / "checkpoint-4")
    shutil.rmtree(tmp_path / "cut" / "final")
    with pytest.raises(LeafError, match="Pass --resume"):
        run_distill(_config(setup, tmp_path / "cut"), progress=False)
    run_distill(_config(setup, tmp_path / "cut", resume=True), progress=False)
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    cut = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for name in full:
        torch.testing.assert_close(cut[name], full[name], atol=1e-6, rtol=1e-5)
    log = [json.loads(line)["step"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]
    with pytest.raises(LeafError, match="differs in: lr"):
        run_distill(_config(setup, tmp_path / "cut", resume=True, lr=5e-4), progress=False)


def test_bad_input(setup, tmp_path):
    teacher, student, analyze = setup
    other = build_tiny_model("qwen2", tmp_path / "bpe-teacher", tokenizer="bpe")
    with pytest.raises(LeafError, match=r"vocabularies differ \(teacher tokenizer 401 tokens / logits 408, student "
                                        r"tokenizer 264 tokens / logits 264\)"):
        with pytest.MonkeyPatch.context() as patch:  # the check runs before any model loads
            patch.setattr("leaf.hooks.load_model", lambda *a, **k: pytest.fail("a model was loaded first"))
            run_distill(_config(setup, tmp_path / "a", teacher=str(other)), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    text = samples_text([AnalysedSample(row=0, id="0", status="skipped_too_long", prompt="p", response="r")])
    (empty / "samples.jsonl").write_text(text)  # a finished run that analysed nothing
    (empty / "summary.json").write_text(json.dumps({"schema": SCHEMA_VERSION, "files": {
        "samples.jsonl": {"records": 1, "sha256": hashlib.sha256(text.encode()).hexdigest()}}}))
    with pytest.raises(LeafError, match="holds no analysed samples"):
        run_distill(_config(setup, tmp_path / "b", data=empty), progress=False)
    with pytest.raises(LeafError, match="no samples.jsonl"):
        run_distill(_config(setup, tmp_path / "c", data=tmp_path), progress=False)
    with pytest.raises(LeafError, match="--mode must be one of"):
        _config(setup, tmp_path / "d", mode="mask")
    with pytest.raises(LeafError, match="λ must stay in"):
        _config(setup, tmp_path / "d", lam="linear:1.5:0.5")


def test_cli_distill_runs_and_prints_the_summary(setup, tmp_path):
    from typer.testing import CliRunner

    from leaf.cli import app

    teacher, student, analyze = setup
    result = CliRunner().invoke(app, ["distill", "--teacher", teacher, "--student", student, "--data", str(analyze),
                                      "--output", str(tmp_path / "out"), "--mode", "instr", "--max-steps", "2",
                                      "--lambda", "0.7", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert '"steps": 2' in result.output and (tmp_path / "out" / "final" / "model.safetensors").exists()
    bad = CliRunner().invoke(app, ["distill", "--teacher", teacher, "--student", student, "--data", str(tmp_path),
                                   "--output", str(tmp_path / "o2")])
    assert bad.exit_code == 1 and "no samples.jsonl" in bad.output


def test_training_from_a_full_teacher_cache_equals_the_online_teacher(setup, tmp_path):
    """k = vocabulary: the cached loss is the online loss, so the logged terms and the weights agree."""
    online = run_distill(_config(setup, tmp_path / "online", max_steps=3), progress=False)
    cached = run_distill(_config(setup, tmp_path / "cached", max_steps=3, cache_teacher=True, top_k=264),
                         progress=False)
    assert (tmp_path / "cached" / "teacher_cache" / "shard-00000.safetensors").exists()
    a = [json.loads(line) for line in (tmp_path / "online" / "log.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "cached" / "log.jsonl").read_text().splitlines()]
    for x, y in zip(a, b):
        assert y["kd_original"] == pytest.approx(x["kd_original"], rel=1e-4, abs=1e-6)
        assert y["kd_counterfactual"] == pytest.approx(x["kd_counterfactual"], rel=1e-4, abs=1e-6)
    wa = load_file(online["final"] + "/model.safetensors")
    wb = load_file(cached["final"] + "/model.safetensors")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], atol=1e-5, rtol=1e-4)
    # a small k keeps the tail mass: the loss stays positive and finite
    small = run_distill(_config(setup, tmp_path / "small", max_steps=2, cache_teacher=True, top_k=4),
                        progress=False)
    assert 0 < small["last"]["kd_original"] < float("inf")


def test_resume_after_killing_the_process_gives_the_same_weights(setup, tmp_path):
    """A real interruption: SIGKILL the `leaf distill` process once checkpoint-4 is complete, then --resume."""
    import os
    import signal
    import subprocess
    import sys
    import time

    teacher, student, analyze = setup
    steps = 24
    run_distill(_config(setup, tmp_path / "full", max_steps=steps), progress=False)
    cut = tmp_path / "cut"
    command = [sys.executable, "-m", "leaf", "distill", "--teacher", teacher, "--student", student,
               "--data", str(analyze), "--output", str(cut), "--max-steps", str(steps), "--batch-size", "2",
               "--save-steps", "2", "--lr", "1e-3"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    while not (cut / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before checkpoint-4"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (cut / "final").exists()  # it really stopped before the end
    subprocess.run(command + ["--resume"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})
    full = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    resumed = load_file(str(cut / "final" / "model.safetensors"))
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], atol=1e-6, rtol=1e-5)
    steps_logged = [json.loads(line)["step"] for line in (cut / "log.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, steps + 1))


def test_a_partly_written_checkpoint_is_skipped_on_resume(setup, tmp_path):
    run_distill(_config(setup, tmp_path / "out"), progress=False)
    last = tmp_path / "out" / "checkpoints" / "checkpoint-4"
    (last / "trainer_state.json").unlink()  # what a kill in the middle of saving checkpoint-4 leaves
    (tmp_path / "out" / "final" / "model.safetensors").unlink()
    summary = run_distill(_config(setup, tmp_path / "out", resume=True), progress=False)
    assert summary["steps"] == 4 and (last / "trainer_state.json").exists()


def _plain_dataset(tmp_path):
    """GSM-Plus rows with ids, and a counterfactual file in the same format: the clean seed question, which is the
    distractor question with the inserted sentence pruned."""
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()][:4]
    data, cfs = tmp_path / "data.jsonl", tmp_path / "cf.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": r["question"], "solution": r["solution"]}) + "\n"
                            for i, r in enumerate(rows)))
    cfs.write_text("".join(json.dumps({"id": f"q{i}", "question": r["seed_question"], "solution": r["solution"]})
                           + "\n" for i, r in enumerate(rows) if i != 2))
    return data, cfs, rows


def test_a_plain_dataset_with_a_counterfactual_file(setup, tmp_path):
    from leaf.distill.data import read_dataset

    data, cfs, rows = _plain_dataset(tmp_path)
    records, identical = read_dataset(data, cfs)
    assert [r.id for r in records] == ["q0", "q1", "q2", "q3"] and identical == 0
    assert [len(r.units) for r in records] == [1, 1, 0, 1]
    unit = records[0].units[0]
    assert unit.level == "instruction" and unit.counterfactuals[0].prompt == rows[0]["seed_question"]
    summary = run_distill(_config(setup, tmp_path / "out", data=data, counterfactuals=cfs, mode="instr",
                                  lam="0.5"), progress=False)
    assert summary["samples"] == 4 and summary["with_counterfactual"] == 3
    log = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert any(line["kd_counterfactual"] is not None for line in log)
    # without counterfactuals a plain dataset trains in kd mode (the paper's KD w/o mask)
    assert run_distill(_config(setup, tmp_path / "kd", data=data, mode="kd"), progress=False)["steps"] == 4


def test_counterfactual_file_errors(setup, tmp_path):
    data, cfs, _ = _plain_dataset(tmp_path)
    stray = tmp_path / "stray.jsonl"
    stray.write_text(cfs.read_text() + json.dumps({"id": "q9", "question": "x", "solution": "y"}) + "\n")
    with pytest.raises(LeafError, match=r"1 counterfactual id\(s\) match no original in .*: 'q9'"):
        run_distill(_config(setup, tmp_path / "a", data=data, counterfactuals=stray), progress=False)
    with pytest.raises(LeafError, match="plain dataset without counterfactuals"):
        run_distill(_config(setup, tmp_path / "b", data=data, mode="instr"), progress=False)
    with pytest.raises(LeafError, match="holds its own counterfactuals"):
        run_distill(_config(setup, tmp_path / "c", counterfactuals=cfs), progress=False)
    no_ids = tmp_path / "noid.jsonl"
    no_ids.write_text(json.dumps({"question": "x", "solution": "y"}) + "\n")
    with pytest.raises(LeafError, match="needs the id of its original"):
        run_distill(_config(setup, tmp_path / "d", data=data, counterfactuals=no_ids), progress=False)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(data.read_text() + data.read_text().splitlines()[0] + "\n")
    with pytest.raises(LeafError, match="id 'q0' appears twice"):
        run_distill(_config(setup, tmp_path / "e", data=twice, counterfactuals=cfs), progress=False)
    assert not any((tmp_path / name).exists() for name in "abcde")  # nothing written on bad input


@pytest.fixture(scope="module")
def ddp(setup, tmp_path_factory):
    """`leaf distill` on 2 CPU processes under accelerate launch (DDP), 4 steps with checkpoints every 2: its
    folder and result, for the tests that read it (the resume test works on a copy)."""
    out = tmp_path_factory.mktemp("ddp") / "out"
    return out, _launch_distill(setup, out)


def test_two_processes_under_accelerate_launch(setup, ddp):
    """Data-parallel on CPU: accelerate launch starts 2 gloo processes (its torchrun launcher; `--multi_gpu` is
    accelerate's name for it even without GPUs); the main one writes checkpoints and a student that reloads."""
    out, result = ddp
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count('"final"') == 1  # one report, from the main process
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["distributed"] == "MULTI_CPU" and summary["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    model = AutoModelForCausalLM.from_pretrained(out / "final")
    assert not torch.equal(model.model.embed_tokens.weight,
                           AutoModelForCausalLM.from_pretrained(setup[1]).model.embed_tokens.weight)


def _launch_distill(setup, out, *extra, config_file=None):
    """`leaf distill` on 2 CPU processes under accelerate launch: DDP, or the accelerate config file given."""
    import os
    import shutil
    import subprocess
    import sys

    teacher, student, analyze = setup
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    how = ["--config_file", str(config_file)] if config_file else ["--multi_gpu", "--num_machines", "1"]
    return subprocess.run(
        [accelerate, "launch", *how, "--num_processes", "2", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "leaf", "distill", "--teacher", teacher, "--student", student,
         "--data", str(analyze), "--output", str(out), "--max-steps", "4", "--save-steps", "2", "--batch-size", "2",
         "--lr", "1e-3", *extra],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)


def test_fsdp2_on_two_cpu_processes_equals_one_process_resumes_and_serves(setup, tmp_path):
    """configs/accelerate/fsdp.yaml as shipped (FSDP2 `fully_shard`, sharded checkpoints, the student read by rank 0
    and broadcast) on 2 gloo processes of 2 samples each ends where 1 process with the same global batch of 4 ends
    (same data per step; only the float32 order of the gradient average differs: 1e-7 measured; 1e-5 is 1% of what
    four steps at lr 1e-3 move a weight, far below the 4e-3 a rank with a zero teacher gave before
    leaf.distill.sharding kept FSDP's loading away from the teacher); resumes from its sharded checkpoint to the
    same weights; and writes a final/ that `leaf serve` runs in vLLM."""
    from pathlib import Path

    from typer.testing import CliRunner

    from leaf.cli import app

    fsdp = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / "fsdp.yaml"
    out = tmp_path / "fsdp"
    result = _launch_distill(setup, out, config_file=fsdp)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed"] == "FSDP" and summary["processes"] == 2
    shards = out / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp_0"     # sharded: one file per rank
    assert sorted(p.name for p in shards.iterdir() if p.suffix == ".distcp") == ["__0_0.distcp", "__1_0.distcp"]
    one = run_distill(_config(setup, tmp_path / "one", batch_size=4), progress=False)
    sharded = load_file(str(out / "final" / "model.safetensors"))
    reference = load_file(one["final"] + "/model.safetensors")
    for name in reference:
        torch.testing.assert_close(sharded[name], reference[name], rtol=0, atol=1e-5)
    start = load_file(str(Path(setup[1]) / "model.safetensors"))
    assert max(float((reference[k] - start[k]).abs().max()) for k in start) > 1e-3   # it trained

    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    resumed = _launch_distill(setup, out, "--resume", config_file=fsdp)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    again = load_file(str(out / "final" / "model.safetensors"))
    for name in sharded:
        torch.testing.assert_close(again[name], sharded[name], rtol=0, atol=1e-5)

    served = CliRunner().invoke(app, ["serve", "--model", str(out / "final"), "--data", str(setup[2]),
                                      "--output", str(tmp_path / "served"), "--max-tokens", "8", "--iterations", "1"])
    assert served.exit_code == 0, served.output
    [entry] = json.loads((tmp_path / "served" / "results.json").read_text())["models"].values()
    assert entry["engine"]["backend"] == "vllm" and entry["sets"]["original"]["total_output_tokens"] > 0


def test_a_two_process_checkpoint_resumes_in_one_process(setup, ddp, tmp_path):
    """DDP checkpoints hold full weights and optimizer state, so a run started on 2 processes continues on 1 (the
    per-process RNG state of the missing rank is not needed; the data order after the resume follows the new
    process count, as the Trainer documents). On a copy of the 2-process run, cut after checkpoint-2."""
    finished, result = ddp
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    summary = run_distill(_config(setup, out, resume=True), progress=False)
    assert summary["steps"] == 4 and summary["processes"] == 1
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]                                     # 1-2 from the 2-process run, 3-4 resumed
    AutoModelForCausalLM.from_pretrained(out / "final")


def test_cache_only_then_training_without_the_teacher(setup, tmp_path, monkeypatch):
    """The 70B-class path: write the teacher cache (here by 2 processes), then train from it; the training run
    never loads the teacher's weights and equals training from a cache written in one go."""
    import leaf.hooks

    out = tmp_path / "out"
    result = _launch_distill(setup, out, "--cache-only")
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"teacher_cache"' in result.stdout and not (out / "checkpoints").exists()
    assert (out / "teacher_cache" / "meta.json").exists()
    loaded = []
    real_load = leaf.hooks.load_model
    monkeypatch.setattr(leaf.hooks, "load_model", lambda name, **kw: loaded.append(name) or real_load(name, **kw))
    trained = run_distill(_config(setup, out, cache_teacher=True), progress=False)
    assert loaded == [setup[1]] and trained["steps"] == 4              # the student only
    reference = run_distill(_config(setup, tmp_path / "ref", cache_teacher=True), progress=False)
    wa, wb = load_file(trained["final"] + "/model.safetensors"), load_file(reference["final"] + "/model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name])
    spread = _launch_distill(setup, tmp_path / "map", "--teacher-device-map", "auto")
    assert spread.returncode != 0 and "needs one process" in spread.stderr


def test_a_teacher_cache_from_vllm_trains_the_student_as_one_from_hf(setup, tmp_path):
    """--teacher-engine vllm: the cache written from vLLM's prompt_logprobs (cache-only, by the CLI) holds the same
    entries as HF's within float32 rounding, a run trains from it without the flag (the engines write the same
    quantity), and the weights it ends with equal those of training from the HF cache within the tolerance of
    training from the full cache against the online teacher (test above)."""
    pytest.importorskip("vllm")
    from typer.testing import CliRunner

    from leaf.cli import app

    teacher, student, analyze = setup
    out = tmp_path / "vllm"
    result = CliRunner().invoke(app, ["distill", "--teacher", teacher, "--student", student, "--data", str(analyze),
                                      "--output", str(out), "--teacher-engine", "vllm", "--cache-only", "--top-k", "8",
                                      "--temperature", "2", "--max-steps", "3", "--batch-size", "2", "--lr", "1e-3"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "teacher_cache" / "meta.json").read_text())["engine"] == "vllm"
    trained = run_distill(_config(setup, out, cache_teacher=True, top_k=8, temperature=2.0, max_steps=3),
                          progress=False)
    reference = run_distill(_config(setup, tmp_path / "hf", cache_teacher=True, top_k=8, temperature=2.0,
                                    max_steps=3), progress=False)
    a = load_file(str(out / "teacher_cache" / "shard-00000.safetensors"))
    b = load_file(str(tmp_path / "hf" / "teacher_cache" / "shard-00000.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        if key.endswith(".logp"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5)  # tiny logits: ~1e-6 apart
        else:  # equal ids wherever the values are not within rounding of each other
            untied = (b[key.replace(".ids", ".logp")].diff(dim=-1).abs() > 1e-5).all(-1)
            assert torch.equal(a[key][untied], b[key][untied])
    for x, y in zip(*[[json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
                      for folder in (out, tmp_path / "hf")]):
        assert x["kd_original"] == pytest.approx(y["kd_original"], rel=1e-4, abs=1e-6)
    wa, wb = load_file(trained["final"] + "/model.safetensors"), load_file(reference["final"] + "/model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-4)


def test_the_vllm_teacher_engine_writes_in_one_process(setup, tmp_path):
    from types import SimpleNamespace

    from leaf.distill.run import vllm_teacher

    with pytest.raises(LeafError, match="one process"):
        vllm_teacher(_config(setup, tmp_path / "x", teacher_engine="vllm"), [], SimpleNamespace(num_processes=2),
                     print)
    assert _config(setup, tmp_path / "y", teacher_engine="vllm").cache_teacher  # vllm writes a cache


def test_the_teacher_cache_is_split_across_processes_by_shard(setup, tmp_path, monkeypatch):
    """Shard s is written by process s mod N; the union equals a one-process cache."""
    import leaf.distill.teacher_cache
    from leaf.distill.data import build_examples
    from leaf.distill.run import load_records_for
    from leaf.distill.teacher_cache import TeacherCache
    from leaf.hooks import load_model
    from leaf.serve.engines import HFEngine

    monkeypatch.setattr(leaf.distill.teacher_cache, "SHARD", 2)
    config = _config(setup, tmp_path / "x", cache_teacher=True)
    teacher = load_model(setup[0])
    records, _ = load_records_for(config)
    examples, _ = build_examples(records, teacher.tokenizer, config.mode, 1024)
    vocab = teacher.hf_model.get_output_embeddings().weight.shape[0]
    engine = HFEngine(teacher)
    TeacherCache.write(tmp_path / "one", engine, examples, config, vocab)
    for rank in (0, 1):
        TeacherCache.write(tmp_path / "two", engine, examples, config, vocab, rank=rank, processes=2)
        written = sorted(p.name for p in (tmp_path / "two").glob("shard-*"))
        assert written == (["shard-00000.safetensors", "shard-00002.safetensors"] if rank == 0 else
                           [f"shard-0000{k}.safetensors" for k in range(3)])
    for shard in range(3):
        a = load_file(str(tmp_path / "one" / f"shard-0000{shard}.safetensors"))
        b = load_file(str(tmp_path / "two" / f"shard-0000{shard}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_loss_covers_the_end_of_turn_token(setup):
    """Distillation teaches the student where to stop: the response mask runs through the template's <|end|>."""
    from transformers import AutoTokenizer

    from leaf.distill.data import build_examples

    tok = AutoTokenizer.from_pretrained(setup[1])
    [example], _ = build_examples([AnalysedSample(row=0, id="0", status="ok", prompt="2+3?", response="5", units=[])],
                                  tok, "kd", None)
    masked = [tok.convert_ids_to_tokens(i) for i, m in zip(example.input_ids, example.response_mask) if m]
    assert masked == ["5", "<|end|>"]


def test_every_counterfactual_is_used_and_levels_do_not_compete():
    """PairedData: over a sample's appearances each of its counterfactuals is paired once per round, one slot per
    level; the collator's cf_index maps each counterfactual row to its original's batch row."""
    from leaf.distill.data import Example, PairedData, make_collator

    cf = lambda n: ([n, n], [False, True])  # noqa: E731
    examples = [Example([1, 2, 3], [False, True, True], [cf(10), cf(11), cf(12), cf(20)],
                        ["instruction", "instruction", "instruction", "response"]),
                Example([4, 5], [False, True], [], []),
                Example([6, 7], [False, True], [cf(30)], ["response"])]
    data = PairedData(examples, seed=3)
    assert data.rounds == 3 and len(data) == 9
    seen = [tuple(data[k]["cfs"][i][0][0] for i in range(len(data[k]["cfs"]))) for k in (0, 3, 6)]
    assert sorted(s[0] for s in seen) == [10, 11, 12]          # every instruction counterfactual once
    assert all(s[1] == 20 for s in seen)                        # the response one alongside, every time
    assert data[1]["cfs"] == [] and data[2]["cfs"] == [cf(30)]
    batch = make_collator(0)([data[0], data[1], data[2]])
    assert batch["cf_index"].tolist() == [0, 0, 2]
    assert batch["cf_input_ids"][:, 0].tolist() == [seen[0][0], 20, 30]
    assert PairedData(examples, seed=3).choices(0, 1) == data.choices(0, 1)   # deterministic for a seed


def test_cross_tokenizer_identity_and_a_teacher_with_another_tokenizer(setup, tmp_path):
    """--cross-tokenizer with the same tokenizer computes plain KD (same first-step loss, same weights after 2
    steps); with a BPE teacher and the byte-level student it trains, and the KL-like term falls."""
    teacher, student, analyze = setup
    plain = run_distill(_config(setup, tmp_path / "plain", max_steps=2, save_steps=100), progress=False)
    cross = run_distill(_config(setup, tmp_path / "cross", max_steps=2, save_steps=100, cross_tokenizer=True),
                        progress=False)
    logs = [[json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("plain", "cross")]
    for a, b in zip(*logs):
        assert b["kd_original"] == pytest.approx(a["kd_original"], rel=1e-4)
        assert b["kd_counterfactual"] == pytest.approx(a["kd_counterfactual"], rel=1e-4)
    a, b = (load_file(str(tmp_path / name / "final" / "model.safetensors")) for name in ("plain", "cross"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4)
    assert plain["steps"] == cross["steps"] == 2
    other = build_tiny_model("llama", tmp_path / "bpe-teacher", seed=9, tokenizer="bpe")
    with pytest.raises(LeafError, match="or pass --cross-tokenizer"):
        run_distill(_config(setup, tmp_path / "refused", teacher=str(other)), progress=False)
    run_distill(_config(setup, tmp_path / "bpe", teacher=str(other), cross_tokenizer=True, max_steps=12, lam="1.0",
                        save_steps=100), progress=False)
    log = [json.loads(line) for line in (tmp_path / "bpe" / "log.jsonl").read_text().splitlines()]
    first = sum(line["kd_original"] for line in log[:3]) / 3
    last = sum(line["kd_original"] for line in log[-3:]) / 3
    assert last < 0.8 * first, (first, last)


def test_the_console_shows_losses_on_stderr_and_stdout_is_only_json(setup, tmp_path):
    """stdout carries the JSON summary alone (the Trainer's final dict used to precede it); a line with the
    losses goes to stderr every --logging-steps and at the last step."""
    from typer.testing import CliRunner

    from leaf.cli import app

    teacher, student, analyze = setup
    result = CliRunner().invoke(app, ["distill", "--teacher", teacher, "--student", student, "--data", str(analyze),
                                      "--output", str(tmp_path / "out"), "--mode", "instr", "--max-steps", "3",
                                      "--batch-size", "2", "--logging-steps", "2"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["steps"] == 3
    lines = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/3", "3/3"], result.stderr
    assert "kd_original" in lines[0] and "kd_counterfactual" in lines[0] and "λ" in lines[0]


def _reference_kl(student, teacher, batch, prefix, temperature, bounds=None):
    """Per-row mean over the response positions of KL(p_T || p_S) · t² for the rows `prefix` names in the batch
    ("" originals, "cf_" counterfactuals), by hand on the full logits: logit t predicts token t + 1.

    `bounds` (a list) gets, per position, what a logit shift moves that term by: the largest |logit| (the float32
    rounding of the logits scales with it) and the sensitivity s with |δ(KL·t²)| <= t·s·max|δz| for shifts δz of
    either model's logits: ∂KL/∂z_S = (p_S - p_T)/t sums to at most 2/t in absolute value, ∂KL/∂z_T = p_T·(log p_T/p_S
    - KL)/t to Σ p_T·|log p_T/p_S - KL| / t."""
    ids, attention = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"]
    with torch.no_grad():
        s_logits = student(input_ids=ids, attention_mask=attention).logits
        t_logits = teacher(input_ids=ids, attention_mask=attention).logits
    out = []
    for s, t, mask in zip(s_logits, t_logits, batch[f"{prefix}response_mask"]):
        rows = []
        for pos in range(len(mask) - 1):
            if mask[pos + 1]:
                p_t = torch.softmax(t[pos, :s.shape[-1]].double() / temperature, -1)
                p_s = torch.softmax(s[pos].double() / temperature, -1)
                kl = (p_t * (p_t.log() - p_s.log())).sum()
                rows.append(kl * temperature ** 2)
                if bounds is not None:
                    size = max(float(s[pos].abs().max()), float(t[pos].abs().max()))
                    bounds.append((size, 2 + float((p_t * (p_t.log() - p_s.log() - kl).abs()).sum())))
        out.append(torch.stack(rows).mean())
    return torch.stack(out)


def _kl_atol(bounds, temperature) -> float:
    """How far the step's float32 KL may lie from the reference's: both run the same models on the same rows, in
    other batch layouts (the step's chunks vs whole rows), so each logit may differ by float32 reordering of its
    sums, bounded here by 16 ulps of the largest |logit| (a few layers of 64-wide dot products, each adding a few
    ulps); a term then moves by at most t·s·δz (see _reference_kl), and a mean of terms by no more than its largest."""
    eps = torch.finfo(torch.float32).eps
    return max(temperature * sensitivity * 16 * eps * size for size, sensitivity in bounds)


def test_one_training_step_equals_a_plain_pytorch_computation(tmp_path):
    """distill_step without a Trainer: the loss is λ·KL(original) + (1-λ)·KL(counterfactual) per sample (the mean
    of a sample's instruction- and response-level terms; KL(original) alone without one), averaged over the batch,
    computed here on full logits in plain PyTorch; gradients reach the student and not the teacher."""
    from leaf.distill.data import PairedData, build_examples, make_collator, read_dataset
    from leaf.distill.losses import forward_kl
    from leaf.distill.step import distill_step

    teacher = AutoModelForCausalLM.from_pretrained(build_tiny_model("qwen2", tmp_path / "t", seed=1)).eval()
    student = AutoModelForCausalLM.from_pretrained(build_tiny_model("qwen2", tmp_path / "s", seed=2))
    tok = AutoTokenizer.from_pretrained(tmp_path / "s")
    rows = [("q0", "Tom has 3 apples and a red hat. How many apples?", "3 apples."), ("q1", "2+3?", "5"),
            ("q2", "Ann is 7. She runs. Age?", "7")]
    pruned = [("q0", "Tom has 3 apples. How many apples?", "3 apples."),     # instruction level
              ("q0", "Tom has 3 apples and a red hat. How many apples?", "3."),  # response level
              ("q2", "Ann is 7. Age?", "7")]
    for name, lines in (("data", rows), ("cf", pruned)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"id": i, "question": q, "solution": a}) + "\n"
                                                        for i, q, a in lines))
    records, _ = read_dataset(tmp_path / "data.jsonl", tmp_path / "cf.jsonl")
    lam, temperature = 0.3, 2.0
    for mode in ("instr+resp", "kd"):
        examples, _ = build_examples(records, tok, mode, None)
        data = PairedData(examples, seed=0)
        batch = make_collator(tok.pad_token_id)([data[i] for i in range(3)])
        assert ("cf_index" in batch) == (mode != "kd")
        student.zero_grad()
        loss, terms = distill_step(student, teacher, batch, lam=lam, divergence=forward_kl, temperature=temperature,
                                   chunk_size=5)
        bounds: list = []
        original = _reference_kl(student, teacher, batch, "", temperature, bounds)
        mixed = original.clone()
        if mode != "kd":
            per_row = _reference_kl(student, teacher, batch, "cf_", temperature, bounds)
            owners = batch["cf_index"].tolist()
            assert owners == [0, 0, 2]          # sample 0: an instruction and a response counterfactual
            counterfactual = {i: per_row[[k for k, o in enumerate(owners) if o == i]].mean() for i in set(owners)}
            for i, value in counterfactual.items():
                mixed[i] = lam * original[i] + (1 - lam) * value
        atol = _kl_atol(bounds, temperature)   # ~1e-5 here, against terms of ~0.05: an off-by-one moves them ~100%
        if mode != "kd":
            assert terms.kd_counterfactual == pytest.approx(float(sum(counterfactual.values()) / 2), abs=atol, rel=0)
        else:
            assert terms.kd_counterfactual is None
        assert float(loss.detach()) == pytest.approx(float(mixed.mean()), abs=atol, rel=0)
        assert terms.lam == lam and terms.kd_original == pytest.approx(float(original.mean()), abs=atol, rel=0)
        assert terms.tokens == int(batch["attention_mask"].sum()) + (
            int(batch["cf_attention_mask"].sum()) if mode != "kd" else 0)
        loss.backward()
        grads = [p.grad for p in student.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        assert all(p.grad is None for p in teacher.parameters())
    # ce_weight adds that weight x the student's mean NLL of the response (here on the kd batch)
    with_ce, _ = distill_step(student, teacher, batch, lam=lam, divergence=forward_kl, temperature=temperature,
                              ce_weight=0.5)
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = logits.log_softmax(-1)
        nll = [-torch.stack([logp[b, p - 1, batch["input_ids"][b, p]] for p in range(1, logp.shape[1])
                             if batch["response_mask"][b, p]]).mean() for b in range(logp.shape[0])]
    # the KL parts differ by the chunking (atol, as above); an NLL moves by at most 2·δz (|∂NLL/∂z| sums to <= 2)
    ce_atol = atol + 0.5 * 2 * 16 * torch.finfo(torch.float32).eps * float(logits.abs().max())
    assert float((with_ce - loss).detach()) == pytest.approx(0.5 * float(torch.stack(nll).mean()), abs=ce_atol, rel=0)
