"""`leaf distill`'s Trainer options with TRL's names: LoRA through peft (only the adapter trains; final/ is the merged
model, final/adapter/ the adapter; --resume restores it), --num-train-epochs, --eval-data / --eval-steps (the
held-out terms equal a direct distill_step), --report-to (leaf's terms reach TensorBoard through the Trainer)."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from leaf.distill import DistillConfig, run_distill
from leaf.errors import LeafError
from tests.distill.test_distill import _config
from tests.tolerances import EPS32, kd_atol


@pytest.fixture(scope="module")
def setup(analyzed):
    """(teacher, student, analyze folder): conftest's shared analyze run."""
    return analyzed.teacher, analyzed.student, analyzed.folder


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _scalars(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(folder))
    board.Reload()
    return {tag: [(e.step, e.value) for e in board.Scalars(tag)] for tag in board.Tags()["scalars"]}


def test_lora_trains_only_the_adapter_the_final_folder_merges_it_and_resume_restores_it(setup, tmp_path):
    r, alpha = 4, 8
    lora = dict(lora_r=r, lora_alpha=alpha, lora_dropout=0.0, report_to=["none"])
    full = tmp_path / "full"
    summary = run_distill(_config(setup, full, **lora), progress=False)
    assert summary["final_kind"] == "merged" and summary["adapter"] == str(full / "final" / "adapter")
    adapter_files = sorted(p.name for p in (full / "final" / "adapter").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(adapter_files)
    checkpoint = full / "checkpoints" / "checkpoint-4"
    assert (checkpoint / "adapter_model.safetensors").exists() and not (checkpoint / "model.safetensors").exists()

    # merged = original + (α / r)·B·A on every adapted layer; every other weight is the original's, bit for bit
    start = load_file(f"{setup[1]}/model.safetensors")
    merged = load_file(str(full / "final" / "model.safetensors"))
    adapter = load_file(str(full / "final" / "adapter" / "adapter_model.safetensors"))
    adapted = {k.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
               for k in adapter if k.endswith("lora_A.weight")}
    assert merged.keys() == start.keys() and adapted and adapted < set(merged)
    moved = 0.0
    for name, weight in merged.items():
        if name not in adapted:
            assert torch.equal(weight, start[name]), name
            continue
        prefix = "base_model.model." + name.removesuffix(".weight")
        delta = adapter[f"{prefix}.lora_B.weight"] @ adapter[f"{prefix}.lora_A.weight"] * (alpha / r)
        torch.testing.assert_close(weight, start[name] + delta, atol=1e-6, rtol=1e-5)
        moved = max(moved, float(delta.abs().max()))
    assert moved > 0  # it trained

    # the final folder is a plain model that reloads and generates; the adapter on the base model gives the same
    model = AutoModelForCausalLM.from_pretrained(full / "final").eval()
    tok = AutoTokenizer.from_pretrained(full / "final")
    ids = tok.apply_chat_template([{"role": "user", "content": "2+3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5
    from peft import PeftModel

    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(setup[1]),
                                             str(full / "final" / "adapter")).eval()
    with torch.no_grad():
        torch.testing.assert_close(with_adapter(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-4)

    # a kill after checkpoint-2: --resume loads the adapter (and only it) and ends where the whole run ended
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    for path in (cut / "checkpoints" / "checkpoint-4", cut / "final"):
        shutil.rmtree(path)
    (cut / "summary.json").unlink()
    run_distill(_config(setup, cut, resume=True, **lora), progress=False)
    resumed = load_file(str(cut / "final" / "model.safetensors"))
    for name in merged:
        torch.testing.assert_close(resumed[name], merged[name], atol=1e-6, rtol=1e-5)
    assert [line["step"] for line in _log(cut)] == [1, 2, 3, 4]


def test_a_checkpoint_without_an_adapter_is_refused_by_a_lora_student(setup, tmp_path):
    from leaf.distill.checkpoints import load_checkpoint_weights, with_lora

    run_distill(_config(setup, tmp_path / "plain", max_steps=2, report_to=["none"]), progress=False)
    student = with_lora(AutoModelForCausalLM.from_pretrained(setup[1]), r=2, alpha=4, dropout=0.0,
                        target_modules=["q_proj", "v_proj"])
    with pytest.raises(LeafError, match="holds no LoRA adapter"):
        load_checkpoint_weights(student, tmp_path / "plain" / "checkpoints" / "checkpoint-2")
    with pytest.raises(LeafError, match="--lora-target-modules nonexistent"):
        with_lora(AutoModelForCausalLM.from_pretrained(setup[1]), r=2, alpha=4, dropout=0.0,
                  target_modules=["nonexistent"])


def test_one_epoch_runs_ceil_n_over_b_steps_and_the_schedule_reaches_its_end(setup, tmp_path):
    """--mode kd: one epoch is one pass over the originals (with counterfactuals, each original comes once per
    counterfactual it has at one level); the λ schedule spans the steps the Trainer derives from the epochs. A plain
    dataset as --eval-data is scored on its originals; --eval-steps 0 evaluates at the end only."""
    out = tmp_path / "out"
    summary = run_distill(_config(setup, out, mode="kd", max_steps=None, num_train_epochs=1, batch_size=2,
                                  report_to=["none"], eval_data=setup[2].parent / "data.jsonl", eval_steps=0),
                          progress=False)
    steps = math.ceil(summary["samples"] / 2)
    assert summary["steps"] == steps == 3
    log = [line for line in _log(out) if not line.get("eval")]
    assert [line["step"] for line in log] == [1, 2, 3]
    assert [line["lambda"] for line in log] == pytest.approx([0.8, 0.65, 0.5])  # linear:0.8:0.5 to its end
    [held_out] = [line for line in _log(out) if line.get("eval")]
    assert held_out["step"] == 3 and held_out["eval_kd_original"] > 0 and held_out["eval_kd_counterfactual"] is None
    state = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["max_steps"] == steps and state["epoch"] == 1.0
    assert not (out / "tensorboard").exists()  # --report-to none: no integration writes anything
    assert summary["final_kind"] == "full" and summary["adapter"] is None


def test_held_out_terms_equal_a_direct_distill_step_and_reach_tensorboard(setup, tmp_path):
    from leaf.distill.data import PairedData, build_examples, make_collator, read_analyze_output
    from leaf.distill.losses import forward_kl, lambda_at
    from leaf.distill.step import distill_step

    teacher, student, analyze = setup
    out = tmp_path / "out"
    summary = run_distill(_config(setup, out, eval_data=analyze, eval_steps=2, logging_steps=2,
                                  report_to=["tensorboard"]), progress=False)
    log = _log(out)
    evals = [line for line in log if line.get("eval")]
    assert [line["step"] for line in evals] == [2, 4]
    assert [line["step"] for line in log if not line.get("eval")] == [1, 2, 3, 4]
    assert summary["eval"] == evals[-1] and summary["last"]["step"] == 4 and "eval" not in summary["last"]

    # the last evaluation ran on the final weights: recompute it in one batch, without the Trainer
    tok = AutoTokenizer.from_pretrained(student)
    examples, _ = build_examples(read_analyze_output(analyze), tok, "instr+resp", None)
    paired = PairedData(examples, seed=0)
    batch = make_collator(tok.pad_token_id)([paired[i] for i in range(len(examples))])
    final = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    with torch.no_grad():
        loss, terms = distill_step(final, teacher_model, batch, lam=lambda_at("linear:0.8:0.5", 4, 4),
                                   divergence=forward_kl, score_counterfactuals=True)
        atol = max(kd_atol(final(input_ids=batch[f"{p}input_ids"], attention_mask=batch[f"{p}attention_mask"]).logits,
                           teacher_model(input_ids=batch[f"{p}input_ids"],
                                         attention_mask=batch[f"{p}attention_mask"]).logits,
                           batch[f"{p}response_mask"][:, 1:]) for p in ("", "cf_"))
    # the Trainer's evaluation batches the samples otherwise: the same KLs, float32-reordered (tests/tolerances.py)
    assert evals[-1]["eval_kd_original"] == pytest.approx(terms.kd_original, rel=0, abs=atol)
    assert evals[-1]["eval_kd_counterfactual"] == pytest.approx(terms.kd_counterfactual, rel=0, abs=atol)
    assert evals[-1]["eval_loss"] == pytest.approx(float(loss), rel=0, abs=atol)

    # TensorBoard through the Trainer: leaf's terms averaged over each --logging-steps window, and the eval terms
    scalars = _scalars(out / "tensorboard")
    steps = [line for line in log if not line.get("eval")]
    expected = [(2, (steps[0]["kd_original"] + steps[1]["kd_original"]) / 2),
                (4, (steps[2]["kd_original"] + steps[3]["kd_original"]) / 2)]
    assert [s for s, _ in scalars["train/kd_original"]] == [2, 4]
    # a mean of two float32 values stored as a float32: one rounding of each, and of the sum (Higham)
    assert [v for _, v in scalars["train/kd_original"]] == pytest.approx([v for _, v in expected], rel=4 * EPS32)
    assert [v for _, v in scalars["train/lambda"]] == pytest.approx([0.7, 0.5])
    assert "train/kd_counterfactual" in scalars and "train/tokens_per_second" in scalars
    assert [v for _, v in scalars["eval/kd_counterfactual"]] == pytest.approx(   # stored as float32: one rounding
        [line["eval_kd_counterfactual"] for line in evals], rel=EPS32)


def test_option_errors_and_parsing(setup, tmp_path):
    from typer.testing import CliRunner

    from leaf.cli import app

    teacher, student, analyze = setup
    base = ["distill", "--teacher", teacher, "--student", student, "--data", str(analyze), "--output",
            str(tmp_path / "o")]
    both = CliRunner().invoke(app, base + ["--max-steps", "3", "--num-train-epochs", "1"])
    assert both.exit_code == 1 and "--max-steps 3 and --num-train-epochs 1" in both.output
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("leaf.distill.run_distill", lambda config: seen.append(config) or {"rank": 1})
        result = CliRunner().invoke(app, base + ["--lora-r", "8", "--lora-target-modules", "q_proj,v_proj",
                                                 "--lora-target-modules", "o_proj", "--report-to", "none"])
    assert result.exit_code == 0, result.output
    assert seen[0].lora_target_modules == ["q_proj", "v_proj", "o_proj"] and seen[0].report_to == []
    assert seen[0].max_steps == 100 and seen[0].num_train_epochs is None
    config = _config(setup, tmp_path / "a")
    assert config.report_to == ["tensorboard"]  # installed in the test extra: the default keeps leaf's old curves
    assert config.lora_target_modules == ["all-linear"] and config.lora_r == 0
    assert "lora_r" not in config.fingerprint() and "report_to" not in config.fingerprint()
    for kwargs, message in ((dict(eval_steps=5), "--eval-steps 5 needs --eval-data"),
                            (dict(eval_data=analyze, cache_teacher=True), "--eval-data needs the online teacher"),
                            (dict(report_to=["tensorbored"]), "no integration of transformers. Available"),
                            (dict(report_to=["none", "wandb"]), "--report-to none means no integration"),
                            (dict(num_train_epochs=0, max_steps=None), "--num-train-epochs must be positive"),
                            (dict(lora_r=-1), "--lora-r >= 0")):
        with pytest.raises(LeafError, match=message):
            _config(setup, tmp_path / "b", **kwargs)
    with pytest.raises(LeafError, match="--eval-data .* does not exist"):
        run_distill(_config(setup, tmp_path / "c", eval_data=tmp_path / "missing"), progress=False)
    assert DistillConfig(teacher=teacher, student=student, data=analyze, output=tmp_path / "d",
                         num_train_epochs=2).max_steps is None
