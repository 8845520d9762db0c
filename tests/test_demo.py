"""The demo: the task generator's ground truth is exact, the word tokenizer round-trips, and `leaf demo --quick` runs
end to end and writes every file."""

import json
import statistics

import pytest

from leaf.demo.run import ASSET_TEACHER, aggregate, results_markdown, verdict
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


def test_aggregate_reports_mean_and_std_over_seeds():
    def seed(acc, f1):
        row = {"distractor_accuracy": acc, "clean_accuracy": 0.9, "attention_focus": 0.8, "output_throughput": 10.0}
        return {"seed": 0, "rows": {n: dict(row) for n in ("Pre-KD", "KD w/o mask", "LeaF instr", "LeaF instr+resp")},
                "detection": {"iqr": {"token_precision": 0.5, "token_recall": 0.2, "token_f1": f1}}}
    runs = [seed(0.2, 0.3), seed(0.4, 0.5), seed(0.3, 0.4)]
    agg = aggregate(runs)
    stat = agg["table"]["KD w/o mask"]["distractor_accuracy"]
    assert stat["mean"] == pytest.approx(0.3) and stat["std"] == pytest.approx(statistics.pstdev([0.2, 0.4, 0.3]))
    assert agg["detection"]["iqr"]["token_f1"]["n"] == 3
    text = results_markdown({"aggregate": agg, "per_seed": [{**r, "engine": "vllm", "teacher_pool_accuracy": 0.9,
                                                             "student_pool_accuracy": 0.1, "screened": 10, "pool": 20,
                                                             "selected": 5} for r in runs],
                             "threshold": "iqr", "verdict": verdict(agg, runs)})
    assert "| KD w/o mask | 30.0 ± 8.2 |" in text
    assert "LeaF instr − KD: +0.0 points (paired over 3 seeds, ±0.0 standard error)" in text
    assert "is not distinguishable from KD" in text


@pytest.mark.skipif(not ASSET_TEACHER.exists(), reason="the shipped demo teacher is missing")
def test_quick_demo_runs_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from leaf.cli import app

    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--output", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("results.json", "RESULTS.md", "accuracy.png", "serve.png", "analyze_report.html"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    table = results["aggregate"]["table"]
    assert list(table) == ["Pre-KD", "KD w/o mask", "LeaF instr", "LeaF instr+resp", "Teacher"]
    for row in table.values():
        assert 0 <= row["distractor_accuracy"]["mean"] <= 1 and 0 <= row["clean_accuracy"]["mean"] <= 1
        assert 0 < row["attention_focus"]["mean"] < 1
    assert set(results["aggregate"]["detection"]) >= {"iqr", "quantile", "random", "ppl"}
    assert results["per_seed"][0]["selected"] > 0
    assert "| setting | distractor acc | clean acc | attention focus | detection F1 |" in result.output
    assert "Qwen2.5-Math-1.5B" in result.output  # where to go next
