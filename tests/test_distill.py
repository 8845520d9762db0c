"""`leaf distill` on tiny models: every mode trains and saves a loadable student, the KL falls, resume is exact."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from leaf.analyze import AnalyzeConfig, run_analyze
from leaf.distill import DistillConfig, run_distill
from leaf.errors import LeafError
from leaf.tiny_models import build_tiny_model
from tests.test_answers_gold_segments import GSM_PLUS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A Qwen2 teacher and student (same tokenizer) and a leaf analyze folder with counterfactuals at both levels."""
    root = tmp_path_factory.mktemp("distill")
    teacher = str(build_tiny_model("qwen2", root / "teacher", seed=11))
    student = str(build_tiny_model("qwen2", root / "student", seed=12))
    rows = sorted((json.loads(line) for line in GSM_PLUS.read_text().splitlines()),
                  key=lambda r: len(r["question"]) + len(r["solution"]))[:6]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_analyze(AnalyzeConfig(teacher=teacher, student=student, data=data, output=root / "analyze",
                              threshold="quantile", quantile=0.05, level="both"), progress=False)
    return teacher, student, root / "analyze"


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
        run_distill(_config(setup, tmp_path / "a", teacher=str(other)), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "samples.jsonl").write_text(json.dumps({"prompt": "p", "response": "r", "status": "skipped_too_long"})
                                         + "\n")
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
