"""`leaf serve`: the real vLLM CPU engine against HF greedy, metric sanity, attention focus against hand-computed and
plain `output_attentions` references, the results folder, bad input."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from leaf.errors import LeafError
from leaf.hooks import encode_prompt_response, load_model
from leaf.serve import ServeConfig, run_serve
from leaf.serve.engines import HF_LABEL, HFEngine, VLLMEngine, check_vllm_can_load
from leaf.serve.focus import FocusSample, attention_focus
from tests.hooks.reference import instruction_and_confounders
from leaf.serve.metrics import RequestTiming, percentile, summarize, summarize_iterations
from leaf.serve.prompts import from_dataset, render
from leaf.models.tiny import TinySize, build_tiny_model
from tests.conftest import ANALYZED_ROWS
from tests.shared import GSM_PLUS

vllm = pytest.importorskip("vllm")

PROMPTS = ["What is 2+3?", "Tom has 3 apples and buys 2 more. How many apples?", "Name a colour.",
           "Ann reads 4 pages a day for 5 days. How many pages?"]


@pytest.fixture(scope="module")
def pair(analyzed):
    """(student, teacher, data, analyze folder): conftest's shared analyze run over GSM-Plus distraction problems
    (two tiny Qwen2 models; gold spans from the clean twins, detected spans at both levels)."""
    return analyzed.student, analyzed.teacher, analyzed.data, analyzed.folder


def test_percentiles_and_summary_by_hand():
    values = [0.4, 0.1, 0.3, 0.2]
    for q in (0, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    a = RequestTiming(prompt_tokens=10, output_tokens=3, ttft=0.1, e2e=0.3, token_times=[0.1, 0.2, 0.3])
    b = RequestTiming(prompt_tokens=6, output_tokens=1, ttft=0.2, e2e=0.2, token_times=[0.2])
    s = summarize([a, b], duration=0.5)
    assert s["requests_per_second"] == pytest.approx(4.0) and s["output_throughput"] == pytest.approx(8.0)
    assert s["total_token_throughput"] == pytest.approx(40.0)
    assert s["mean_ttft_ms"] == pytest.approx(150.0) and s["mean_tpot_ms"] == pytest.approx(100.0)  # only a has TPOT
    assert s["mean_itl_ms"] == pytest.approx(100.0) and s["p99_e2el_ms"] == pytest.approx(np.percentile([300, 200], 99))
    both = summarize_iterations([([a, b], 0.5), ([a, b], 1.0)])
    assert both["requests_per_second"] == pytest.approx(3.0) and both["requests_per_second_std"] == pytest.approx(1.0)
    assert both["completed"] == 4 and both["iterations"] == 2


def _sane(figures: dict) -> None:
    for key in ("requests_per_second", "output_throughput", "total_token_throughput", "mean_ttft_ms",
                "mean_tpot_ms", "mean_e2el_ms", "mean_itl_ms"):
        assert figures[key] > 0 and math.isfinite(figures[key]), key
    for name in ("ttft", "tpot", "itl", "e2el"):
        p = [figures[f"p{q}_{name}_ms"] for q in (50, 90, 99)]
        assert p == sorted(p) and figures[f"median_{name}_ms"] == pytest.approx(p[0]), name
    assert figures["mean_ttft_ms"] <= figures["mean_e2el_ms"]


def test_the_speedup_spread_combines_both_sides():
    from leaf.serve.run import speedup_spread

    new = {"requests_per_second": 8.58, "requests_per_second_std": 5.15}
    old = {"requests_per_second": 5.1, "requests_per_second_std": 0.5}
    speedup = 8.58 / 5.1
    spread = speedup_spread(speedup, new, old)
    assert spread == pytest.approx(speedup * ((5.15 / 8.58) ** 2 + (0.5 / 5.1) ** 2) ** 0.5)
    assert abs(speedup - 1) < spread  # the 1.68x: within noise of 1.0


def test_vllm_greedy_equals_hf_greedy_and_metrics_are_sane(pair):
    student = pair[0]
    hf = HFEngine(student, batch_size=3)
    prompts = [render(hf.tokenizer, p) for p in PROMPTS]
    budgets = [24, 24, 24, 24]
    hf_out, hf_seconds = hf.generate(prompts, budgets)
    engine = VLLMEngine(student)
    try:
        v_out, v_seconds = engine.generate(prompts, budgets)
        random = [[7 + i] * 12 for i in range(3)]  # ignore_eos: exactly the budget, in both engines
        v_rand, _ = engine.generate(random, [10, 10, 10], ignore_eos=True)
    finally:
        engine.close()
    h_rand, _ = hf.generate(random, [10, 10, 10], ignore_eos=True)
    assert [c.token_ids for c in v_out] == [c.token_ids for c in hf_out]
    assert [c.text for c in v_out] == [c.text for c in hf_out]
    assert [c.token_ids for c in v_rand] == [c.token_ids for c in h_rand] and all(len(c.token_ids) == 10 for c in v_rand)
    for out, seconds in ((v_out, v_seconds), (hf_out, hf_seconds)):
        figures = summarize([c.timing for c in out], seconds)
        _sane(figures)
        assert figures["total_output_tokens"] == sum(len(c.token_ids) for c in out)
        for c in out:
            assert c.timing.token_times == sorted(c.timing.token_times) and c.timing.e2e <= seconds


def _uniform_attention_model(tmp_path):
    """A Llama whose queries and keys are zero: every position attends uniformly to itself and all before it."""
    path = build_tiny_model("llama", tmp_path / "uniform", seed=5)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
    model.save_pretrained(path)
    return str(path)


def test_attention_focus_by_hand_on_uniform_attention(tmp_path):
    """Uniform attention and the sink excluded: each response query spends 1/(q+1) on every earlier token, so the
    clean share of the instruction mass is n_clean / (n_clean + n_confounder) in every layer, for every query."""
    model = load_model(_uniform_attention_model(tmp_path))
    prompt = "Tom has 3 apples. His hat is red. He buys 2 more. How many apples?"
    start = prompt.index("His hat is red.")
    sample = FocusSample(prompt, "3 + 2 = 5. #### 5", [(start, start + len("His hat is red."))])
    result = attention_focus(model, [sample])
    enc = encode_prompt_response(model.tokenizer, sample.prompt, sample.response)
    instruction = enc.prompt_mask & ~enc.special_mask
    instruction[0] = False
    offsets = enc.offsets
    conf = instruction & (offsets[:, 0] < start + len("His hat is red.") + enc.prompt_span[0]) & (
        offsets[:, 1] > start + enc.prompt_span[0])
    expected = float((instruction & ~conf).sum()) / float(instruction.sum())
    assert result["per_layer"] == pytest.approx([expected] * 2, abs=1e-5)
    assert result["focus"] == pytest.approx(expected, abs=1e-5) and result["token_share"] == pytest.approx(expected)
    assert result["wasted"] == pytest.approx(1 - expected, abs=1e-5) and result["samples"] == 1


def test_attention_focus_matches_plain_output_attentions(pair):
    """The hooks' reduction against transformers' own attention probabilities on a random model."""
    student = pair[0]
    model = load_model(student)
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()][:3]
    from leaf.gold import spans_from_pair

    samples = [FocusSample(r["question"], r["solution"], spans_from_pair(r["question"], r["seed_question"]))
               for r in rows]
    result = attention_focus(model, samples, batch_size=2)
    hf = AutoModelForCausalLM.from_pretrained(student, attn_implementation="eager").eval()
    per_sample = []
    for s in samples:
        enc = encode_prompt_response(model.tokenizer, s.prompt, s.response)
        instruction, conf = instruction_and_confounders(enc, s.confounders)
        with torch.no_grad():
            attentions = hf(input_ids=enc.input_ids[None], output_attentions=True).attentions
        layers = []
        for probs in attentions:  # (1, H, T, T)
            rows_ = probs[0][:, enc.response_mask]  # (H, Q, T)
            clean = rows_[..., instruction & ~conf].sum(-1).mean(-1).sum()
            bad = rows_[..., conf].sum(-1).mean(-1).sum()
            layers.append(float(clean / (clean + bad)))
        per_sample.append(layers)
    expected = np.mean(per_sample, axis=0)
    assert result["per_layer"] == pytest.approx(list(expected), abs=1e-5)
    assert result["focus"] == pytest.approx(float(expected.mean()), abs=1e-5)


def test_leaf_serve_writes_the_results_folder(pair, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from leaf.cli import app

    student, teacher, data, analyze = pair
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["serve", "--model", student, "--model", teacher, "--data", str(analyze),
                                      "--output", str(out), "--max-tokens", "16", "--iterations", "2",
                                      "--random-prompts", "3", "--random-input-len", "8", "--random-output-len", "6"])
    assert result.exit_code == 0, result.output
    assert f"| student | original ({ANALYZED_ROWS})" in result.output and "Answers checked (every model and prompt set)" in \
        (out / "results.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert list(results["models"]) == ["student", "teacher"]
    for entry in results["models"].values():
        assert entry["engine"]["backend"] == "vllm"
        assert set(entry["sets"]) == {"original", "clean", "pruned", "random"}
        for figures in entry["sets"].values():
            _sane(figures)
        assert entry["sets"]["random"]["total_output_tokens"] == 3 * 6 * 2  # ignore_eos: exact budget, 2 iterations
        assert 0 <= entry["sets"]["original"]["accuracy"] <= 1 and entry["sets"]["clean"]["scored"] == ANALYZED_ROWS
        # how each answer was decided (math-verify, or the regex checker in its place, by reason)
        assert sum(entry["sets"]["clean"]["answer_checking"].values()) == ANALYZED_ROWS
        assert 0 < entry["attention_focus"]["focus"] < 1
    assert results["confounder_source"] == ["gold"]
    comp = results["comparisons"]
    assert comp["vs_baseline"]["teacher"]["original"]["output_throughput"] == pytest.approx(
        results["models"]["teacher"]["sets"]["original"]["output_throughput"]
        / results["models"]["student"]["sets"]["original"]["output_throughput"])
    pruned = comp["pruned_vs_original"]["student"]
    assert pruned["input_token_ratio"] > 1  # the detected spans were removed
    sets = results["models"]["student"]["sets"]
    assert pruned["output_tokens"] == {"original": sets["original"]["total_output_tokens"],
                                       "pruned": sets["pruned"]["total_output_tokens"]}
    assert pruned["speedup_requests_per_second_std"] is not None and pruned["speedup_requests_per_second_std"] >= 0
    text = (out / "results.md").read_text()
    assert "req/s ↑" in text and "mean E2E ms ↓" in text and "output tokens original → pruned" in text
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert {g["set"] for g in generations} == {"original", "clean", "pruned", "random"}
    for name, entry in results["models"].items():   # each problem's verdict: what the accuracy counted
        for set_name in ("original", "clean"):
            rows = [g for g in generations if g["model"] == name and g["set"] == set_name]
            assert len(rows) == entry["sets"][set_name]["scored"] == ANALYZED_ROWS
            assert sum(g["correct"] for g in rows) == entry["sets"][set_name]["correct"]
            assert all("checker" in g and "answer" in g for g in rows)
    assert all(g["correct"] is None for g in generations if g["set"] == "random")   # no reference: not graded
    import matplotlib.image

    image = matplotlib.image.imread(out / "results.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert "Attention focus" in (out / "results.md").read_text()
    _a_new_metric_is_one_registry_entry(results, monkeypatch)


def _a_new_metric_is_one_registry_entry(results: dict, monkeypatch) -> None:
    """A metric added to leaf.serve.metrics.SERVE_METRICS (p90 TTFT, computed by summarize already) is a column of
    both tables and a ratio of the comparisons, with no other change."""
    from leaf.serve import metrics
    from leaf.serve.report import markdown
    from leaf.serve.run import comparisons

    before = markdown(results)
    monkeypatch.setattr(metrics, "SERVE_METRICS", (*metrics.SERVE_METRICS,
                                                   metrics.ServeMetric("p90_ttft_ms", "p90 TTFT ms", False)))
    models = results["models"]
    ratio = comparisons(models)["vs_baseline"]["teacher"]["original"]["p90_ttft_ms"]
    assert ratio == pytest.approx(models["teacher"]["sets"]["original"]["p90_ttft_ms"]
                                  / models["student"]["sets"]["original"]["p90_ttft_ms"])
    after = markdown({**results, "comparisons": comparisons(models)})
    assert "p90 TTFT ms ↓" not in before and after.count("p90 TTFT ms ↓") == 2     # both tables


def test_an_analyze_folder_is_graded_with_the_reference_select_recorded(pair, tmp_path):
    """analyze --select records the reference it graded with (honouring --answer-field); serve grades with that
    reference, not one re-extracted from the response."""
    import hashlib
    import shutil

    from leaf.records import read_samples, samples_text
    from leaf.serve.prompts import from_analyze

    folder = tmp_path / "analyze"
    shutil.copytree(pair[3], folder)
    records = read_samples(folder)
    extracted = [p.answer for p in from_analyze(folder)]
    records[0].selection = {"reference": "12345", "kept": True}
    records[1].selection = {"reference": "tests", "kept": True}     # a code row's marker: not an answer
    text = samples_text(records)
    (folder / "samples.jsonl").write_text(text)
    summary = json.loads((folder / "summary.json").read_text())       # the edit, recorded as analyze records it
    summary["files"]["samples.jsonl"].update(sha256=hashlib.sha256(text.encode()).hexdigest(),
                                             bytes=len(text.encode()))
    (folder / "summary.json").write_text(json.dumps(summary))
    answers = [p.answer for p in from_analyze(folder)]
    assert answers[0] == "12345" and answers[1] == extracted[1] and answers[2:] == extracted[2:]


def test_hf_backend_is_labelled_everywhere(pair, tmp_path):
    student, _, data, _ = pair
    results = run_serve(ServeConfig(models=[student], data=data, output=tmp_path / "hf", backend="hf",
                                    max_tokens=8, iterations=1, warmup=0), progress=False)
    entry = results["models"]["student"]
    assert entry["engine"]["engine"] == HF_LABEL and "not vLLM" in (tmp_path / "hf" / "results.md").read_text()
    assert set(entry["sets"]) == {"original", "clean"}  # a dataset with seed_question: no pruned set
    assert entry["attention_focus"]["samples"] == ANALYZED_ROWS  # gold spans from the clean twins


def test_dataset_problems_carry_gold_spans_and_answers():
    problems = from_dataset(GSM_PLUS, limit=3)
    p = problems[0]
    assert p.answer == "5" and p.clean.startswith("Marty has 100 centimeters")
    assert [p.prompt[a:b] for a, b in p.confounders] == ["Each cut takes 5 seconds."]


def test_bad_input(pair, tmp_path):
    student = pair[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeafError, match="no config.json"):
        check_vllm_can_load(str(tmp_path / "empty"), "cpu")
    odd = build_tiny_model("llama", tmp_path / "odd", size=TinySize(hidden_size=96, num_layers=1, num_heads=2,
                                                                     num_kv_heads=2, intermediate_size=64,
                                                                     max_positions=256))
    with pytest.raises(LeafError, match=r"head size 48, which vLLM's CPU backend does not support.*--backend hf"):
        VLLMEngine(str(odd))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((tmp_path / "odd" / name).read_bytes())
    (broken / "config.json").write_text((tmp_path / "odd" / "config.json").read_text().replace(
        '"hidden_size": 96', '"hidden_size": 64').replace('"head_dim": 48', '"head_dim": 32'))
    with pytest.raises(LeafError, match=r"has a config.json but no weights \(\*.safetensors\)"):
        VLLMEngine(str(broken))  # no weights: refused before vLLM starts
    with pytest.raises(LeafError, match="No prompts"):
        ServeConfig(models=[student], output=tmp_path / "o")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(LeafError, match="is empty"):
        run_serve(ServeConfig(models=[student], data=empty, output=tmp_path / "o"), progress=False)
    assert not (tmp_path / "o").exists()
    plain = tmp_path / "plain"  # a model without a chat template: the CLI flag is named, before any model loads
    shutil.copytree(student, plain)
    for name in ("chat_template.jinja",):
        (plain / name).unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("leaf.serve.engines.make_engine", lambda *a, **k: pytest.fail("a model was loaded first"))
        with pytest.raises(LeafError, match="has no chat template.*--no-chat-template"):
            run_serve(ServeConfig(models=[str(plain)], data=data, output=tmp_path / "p"), progress=False)


def test_vllm_environment_is_one_table_and_the_users_values_win(monkeypatch):
    from leaf.serve.engines import set_vllm_environment, vllm_environment

    assert "VLLM_CPU_KVCACHE_SPACE" in vllm_environment("cpu")
    assert "VLLM_CPU_KVCACHE_SPACE" not in vllm_environment("cuda")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    monkeypatch.delenv("VLLM_LOGGING_STREAM", raising=False)
    set_vllm_environment("cpu")
    import os

    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "4" and os.environ["VLLM_LOGGING_STREAM"] == "ext://sys.stderr"
