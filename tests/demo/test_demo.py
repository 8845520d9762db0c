"""The demo: the task generator's ground truth is exact, the word tokenizer round-trips, and `leaf demo --quick` runs
end to end and writes every file."""

import json
import statistics

import pytest

from leaf.demo.run import ASSET_TEACHER
from leaf.demo.task import demo_tokenizer, generate
from leaf.gold import spans_from_pair


def test_removing_the_distractor_spans_gives_the_clean_twin_byte_for_byte():
    problems = generate(500, seed=5)
    with_distractors = [p for p in problems if p.distractors]
    assert 250 < len(with_distractors) < 500  # 0, 1 or 2 distractors, uniformly
    for p in problems:
        question = p.question
        for a, b in reversed(p.distractor_spans):
            question = question[:a] + question[b:]
        assert question == p.clean_question
        assert len(p.distractor_spans) == p.distractors
        assert all(question.count(p.question[a:b]) == 0 or p.question[a:b] in p.clean_question
                   for a, b in p.distractor_spans)
    # deterministic for a seed, different across seeds
    assert [p.question for p in generate(50, seed=5)] == [p.question for p in problems[:50]]
    assert [p.question for p in generate(50, seed=6)] != [p.question for p in problems[:50]]


def test_the_answer_follows_from_the_clean_facts():
    for p in generate(200, seed=8):
        words = p.clean_question.split(" . ")
        value = int(words[0].split()[2])
        for sentence in words[1:-1] + [words[-1].split(" ?")[0]]:
            parts = sentence.split()
            if "away" in parts:
                value -= int(parts[3])
            elif "more" in parts:
                value += int(parts[2])
        assert str(value) == p.answer and p.solution.endswith(f"#### {p.answer}")


def test_gold_spans_from_the_clean_twin_remove_the_same_words():
    """leaf's pair-derived gold (question vs seed_question) may pick another copy of a repeated word ("has", "."),
    but removing it leaves the clean twin's words: the demo therefore passes the exact spans (--gold
    distractor_spans) and keeps the pair for data without them."""
    from leaf.gold import spans_from_field

    for p in [q for q in generate(200, seed=9) if q.distractors][:50]:
        kept = p.question
        for a, b in reversed(spans_from_pair(p.question, p.clean_question)):
            kept = kept[:a] + kept[b:]
        assert kept.split() == p.clean_question.split()
        assert spans_from_field(p.question, [list(s) for s in p.distractor_spans]) == p.distractor_spans


def test_word_tokenizer_round_trips_and_knows_every_word():
    tok = demo_tokenizer()
    for p in generate(100, seed=2):
        for text in (p.question, p.solution):
            ids = tok(text, add_special_tokens=False).input_ids
            assert tok.unk_token_id not in ids and tok.decode(ids) == text


def _fake_seed(seed: int, rng, accuracy: dict[str, float], items: int = 400):
    """A seed's outcomes with the given accuracies, the same problems for every setting."""
    outcomes = {name: {s: [int(rng.random() < p) for _ in range(items)] for s in ("distractor", "clean")}
                for name, p in accuracy.items()}
    rows = {name: {"forward_tokens": 1000 * (2 if name != "KD w/o mask" else 1), "counterfactuals": 10,
                   "focus": {"overall": 0.8, "chosen_head": 0.7, "per_layer": [0.8], "per_head": [[0.7]]}}
            for name in accuracy}
    per_seed = {"seed": seed, "rows": rows, "engine": "hf", "timing": {"distill": 1.0}, "variant": "paper",
                "detection_validation": {"paper": {"label": "the paper's rule", "token": {"precision": 0.4,
                                                   "recall": 0.1, "f1": 0.16}, "counterfactuals_kept": 3,
                                                   "counterfactuals_dropped": 1,
                                                   "distractors": {"touched": 0.2, "numbers_removed": 0.1,
                                                                   "removed": 0.0}}},
                "pool_detection": None, "head": {"layer": 0, "head": 1, "wrong_share": 0.3, "right_share": 0.2},
                "selection": {"pool": 100, "analysed": 50, "clean_mixed_in": 25, "counterfactuals_kept": 30,
                              "counterfactuals_dropped": 5}}
    return per_seed, outcomes


def test_report_intervals_verdict_and_table():
    import random

    from leaf.demo.report import aggregate, results_markdown

    rng = random.Random(0)
    # the oracle clearly beats KD; LeaF does not beat random masks
    acc = {"Pre-KD": 0.1, "KD w/o mask": 0.4, "LeaF instr": 0.45, "Random mask": 0.45, "Oracle": 0.6}
    seeds = [_fake_seed(s, rng, acc) for s in range(2)]
    result = aggregate([s for s, _ in seeds], [o for _, o in seeds])
    oracle = result["comparisons"]["Oracle vs KD w/o mask"]["distractor"]
    assert oracle["verdict"] == "better" and oracle["low"] > 0.1
    assert result["comparisons"]["LeaF instr vs Random mask"]["distractor"]["verdict"] == "tie"
    kd = result["table"]["KD w/o mask"]["distractor_accuracy"]
    assert kd["mean"] == pytest.approx(statistics.fmean(statistics.fmean(o["KD w/o mask"]["distractor"])
                                                        for _, o in seeds))
    assert kd["seeds"] == 2 and kd["items"] == 800
    assert "the oracle beats KD" in result["verdict"]
    assert "no evidence here that gradient-guided pruning beats KD and random masks" in result["verdict"]
    assert result["power"]["seeds"] == 2 and 0 < result["power"]["detectable_difference"] < 0.2
    text = results_markdown({**result, "per_seed": [s for s, _ in seeds], "preset": "quick", "seconds": 3.0})
    assert "| Oracle | 5" in text and "| 2.00x |" in text and "| 1.00x |" in text
    assert "Detection rules on the validation split" in text and "paper: the paper's rule (used)" in text


def test_a_null_oracle_says_the_counterfactual_term_has_nothing_to_teach():
    import random

    from leaf.demo.report import aggregate

    rng = random.Random(1)
    seeds = [_fake_seed(0, rng, {"KD w/o mask": 0.4, "LeaF instr": 0.4, "Random mask": 0.4, "Oracle": 0.4})]
    verdict = aggregate([s for s, _ in seeds], [o for _, o in seeds])["verdict"]
    assert "the oracle is not distinguishable from KD" in verdict
    assert "nothing to teach" in verdict


def test_bad_demo_settings_are_clear_errors(tmp_path):
    from leaf.demo.run import DemoConfig
    from leaf.errors import LeafError

    with pytest.raises(LeafError, match="Unknown setting"):
        DemoConfig(output=tmp_path, settings=["KD w/o mask", "LeaF"])
    with pytest.raises(LeafError, match="must include 'KD w/o mask'"):
        DemoConfig(output=tmp_path, settings=["Oracle"])
    with pytest.raises(LeafError, match="--quick or --full"):
        DemoConfig(output=tmp_path, quick=True, full=True)
    with pytest.raises(LeafError, match="Unknown --variant"):
        DemoConfig(output=tmp_path, variant="sentences")
    assert DemoConfig(output=tmp_path, full=True).budget("seeds") == 5


@pytest.mark.skipif(not ASSET_TEACHER.exists(), reason="the shipped demo teacher is missing")
def test_quick_demo_runs_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from leaf.cli import app
    from leaf.demo.experiment import SETTING_NAMES

    out = tmp_path / "demo"
    # --variant clause: token flags by iqr, so the controls' counts can be recomputed from the records below
    result = CliRunner().invoke(app, ["demo", "--quick", "--output", str(out), "--variant", "clause"])
    assert result.exit_code == 0, result.output
    for name in ("results.json", "RESULTS.md", "accuracy.png", "serve.png", "analyze_report.html"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    assert list(table) == ["Pre-KD", *[n for n in SETTING_NAMES if n in table], "Teacher"]
    assert {"KD w/o mask", "KD 2x batch", "LeaF instr", "Oracle"} <= set(table)
    for row in table.values():
        for key in ("distractor_accuracy", "clean_accuracy"):
            assert 0 <= row[key]["low"] <= row[key]["mean"] <= row[key]["high"] <= 1
    assert 1.5 < table["KD 2x batch"]["forward_tokens"] / table["KD w/o mask"]["forward_tokens"] < 2.5
    comparisons = results["comparisons"]
    assert {"Oracle vs KD w/o mask", "LeaF instr vs KD w/o mask"} <= set(comparisons)
    seed = results["per_seed"][0]
    assert set(seed["detection_validation"]) == {"paper", "clause", "sentence", "lowest-sentence"}
    assert seed["selection"]["analysed"] > 0 and 0 <= seed["head"]["layer"] < 2
    outcomes = json.loads((out / "seed-0" / "outcomes.json").read_text())
    assert len(outcomes["Oracle"]["distractor"]) == 200
    assert "| setting | distractor acc | clean acc | distractor − KD |" in result.output
    assert "Oracle counterfactuals (the true distractors removed) − KD" in result.output
    assert "Qwen2.5-Math-1.5B" in result.output  # where to go next
    _check_the_run_s_own_figures(out, results)


def _check_the_run_s_own_figures(out, results):
    """What the report states comes from this run: disjoint splits, controls with the gradient rule's count on the
    same Δ, the oracle's clean twins, first-step KL and the compute column from distill's logs, sizes and times."""
    import torch

    from leaf.analyze.thresholds import ThresholdContext, flag
    from leaf.demo.experiment import compute, first_step_kl
    from leaf.records import read_samples

    seed = out / "seed-0"
    rows = {name: [json.loads(line) for line in (seed / f"{name}.jsonl").read_text().splitlines()]
            for name in ("pool", "validation", "test")}
    seen = {name: {q for r in rs for q in (r["question"], r["seed_question"])} for name, rs in rows.items()}
    assert not seen["pool"] & seen["test"] and not seen["pool"] & seen["validation"]
    assert not seen["validation"] & seen["test"]
    for control in ("random", "ppl"):
        checked = 0
        for record in read_samples(seed / f"analyze-{control}", analysed_only=True):
            for unit in record.units:
                d = torch.tensor([t.delta for t in unit.tokens])
                want = int(flag("iqr", d, ThresholdContext()).mask.sum())
                assert sum(t.flag for t in unit.tokens) == want, (control, record.id)
                checked += 1
        assert checked > 0
    pool = {r["id"]: r for r in rows["pool"]}
    oracle = [json.loads(line) for line in (seed / "counterfactuals" / "oracle.jsonl").read_text().splitlines()]
    assert oracle and all(r["question"] == pool[r["id"]]["seed_question"] != pool[r["id"]]["question"]
                          for r in oracle)
    table, per_seed = results["table"], results["per_seed"][0]
    for name in ("KD w/o mask", "LeaF instr", "Oracle"):
        log = seed / "distill" / {"KD w/o mask": "kd", "LeaF instr": "leaf-instr", "Oracle": "oracle"}[name] / "log.jsonl"
        assert table[name]["forward_tokens"] == compute(log)
        assert table[name]["first_step_kl"]["original"] == pytest.approx(first_step_kl(log)["original"])
    assert table["KD w/o mask"]["first_step_kl"]["counterfactual"] is None
    assert table["Oracle"]["first_step_kl"]["counterfactual"] is not None
    assert per_seed["parameters"]["student"] == 151872 and per_seed["parameters"]["teacher"] > 10 ** 6
    text = (out / "RESULTS.md").read_text()
    assert "Parameters: teacher" in text and "all stages" in text and "KL originals, step 1" in text


def test_a_gain_without_the_oracle_is_not_credited_to_focus():
    import random

    from leaf.demo.report import aggregate

    rng = random.Random(2)
    acc = {"KD w/o mask": 0.3, "LeaF instr": 0.5, "Random mask": 0.3, "Oracle": 0.3, "KD 2x batch": 0.5}
    verdict = aggregate(*map(list, zip(*[_fake_seed(0, rng, acc, items=600)])))["verdict"]
    assert "although the oracle does not beat KD" in verdict


def test_a_demo_folder_continues_only_with_the_same_settings(tmp_path):
    from leaf.demo.run import DemoConfig, prepare_seed_folder
    from leaf.errors import LeafError

    prepare_seed_folder(DemoConfig(output=tmp_path, quick=True), ASSET_TEACHER, 0, print)
    prepare_seed_folder(DemoConfig(output=tmp_path, quick=True), ASSET_TEACHER, 0, print)   # same settings: fine
    with pytest.raises(LeafError, match="lr differ"):
        prepare_seed_folder(DemoConfig(output=tmp_path, quick=True, lr=3e-4), ASSET_TEACHER, 0, print)
    with pytest.raises(LeafError, match="distill_steps, focus_samples"):
        prepare_seed_folder(DemoConfig(output=tmp_path), ASSET_TEACHER, 0, print)
    (tmp_path / "seed-1").mkdir()
    (tmp_path / "seed-1" / "notes.txt").write_text("mine")
    with pytest.raises(LeafError, match="not a leaf demo seed folder"):
        prepare_seed_folder(DemoConfig(output=tmp_path, quick=True), ASSET_TEACHER, 1, print)
