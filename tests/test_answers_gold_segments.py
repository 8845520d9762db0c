"""Answer extraction (on the 200 real GSM-Plus solutions), gold spans and metrics, response splitting."""

import json

import pytest
import torch

from leaf.answers import answers_match, extract_answer, normalize_answer
from leaf.gold import DetectionCounts, is_pure_insertion, spans_from_pair, spans_from_text
from leaf.segments import split_response
from tests.shared import GSM_PLUS  # CC BY-SA 4.0


def gsm_plus() -> list[dict]:
    return [json.loads(line) for line in GSM_PLUS.read_text().splitlines()]


def test_every_gsm_plus_reference_solution_extracts_to_its_answer():
    rows = gsm_plus()
    assert len(rows) == 200
    for row in rows:
        assert answers_match(extract_answer(row["solution"]), row["answer"]), row["solution"][-80:]
        assert answers_match(extract_answer(row["seed_solution"]), row["seed_answer"])


@pytest.mark.parametrize("text,want", [
    ("so 3 + 2 = 5.\n#### 5", "5"),
    ("The answer is \\boxed{\\frac{3}{4}}.", "\\frac{3}{4}"),
    ("first 3, then 4.5 apples.", "4.5"),
    ("no numbers here", None),
])
def test_extraction_forms(text, want):
    assert extract_answer(text) == want


@pytest.mark.parametrize("a,b", [("$1,200.00", "1200"), ("\\frac{1}{2}", "0.5"), ("3/6", "1/2"), ("5.", "5"),
                                 ("12 apples", "12"), ("-7", "-7.0"), ("50%", "50")])
def test_numeric_normalisation_matches(a, b):
    assert answers_match(a, b)


def test_different_numbers_do_not_match():
    assert not answers_match("12", "13")
    assert not answers_match(None, "1")
    assert normalize_answer("Blue") == "blue"


def test_gold_from_text_and_from_a_clean_twin():
    question = "Tom has 3 apples. His hat is red. He buys 2 more."
    assert spans_from_text(question, "His hat is red.") == [(18, 33)]
    assert spans_from_text(question, "his HAT is red.") == [(18, 33)]
    assert spans_from_text(question, "not there") == []
    spans = spans_from_pair(question, "Tom has 3 apples. He buys 2 more.")
    assert [question[a:b] for a, b in spans] == ["His hat is red."]


def test_gold_pair_on_real_gsm_plus():
    row = gsm_plus()[0]
    spans = spans_from_pair(row["question"], row["seed_question"])
    assert [row["question"][a:b] for a, b in spans] == ["Each cut takes 5 seconds."]


def test_detection_metrics_by_hand():
    counts = DetectionCounts()
    flags = torch.tensor([True, True, False, False, True])
    gold = torch.tensor([True, False, True, False, False])
    counts.add(flags, gold, predicted=[(0, 2), (10, 12)], gold_spans=[(1, 3), (20, 25)])
    m = counts.metrics()
    assert m["token"]["precision"] == pytest.approx(1 / 3)
    assert m["token"]["recall"] == pytest.approx(1 / 2)
    assert m["token"]["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert m["span"]["precision"] == pytest.approx(1 / 2) and m["span"]["recall"] == pytest.approx(1 / 2)


def test_response_split_at_steps_and_sentences():
    response = "Step one adds 3 and 2.\nStep two doubles it to 10.\n#### 10"
    two = split_response(response, 2)
    three = split_response(response, 3)
    assert "".join(response[a:b] for a, b in two) == response and len(two) == 2
    assert [response[a:b].strip() for a, b in three] == ["Step one adds 3 and 2.", "Step two doubles it to 10.",
                                                          "#### 10"]
    assert split_response("no boundary at all", 3) == [(0, 18)]


def test_pure_insertion_rows_of_gsm_plus_match_the_data_notes():
    """tests/data/README.md: 50 rows are one pure insertion, 58 at most two insertions with nothing else changed."""
    rows = gsm_plus()
    pure = [r for r in rows if is_pure_insertion(r["question"], r["seed_question"])]
    insertions = [len(spans_from_pair(r["question"], r["seed_question"])) for r in pure]
    assert sum(n == 1 for n in insertions) == 50 and sum(n <= 2 for n in insertions) == 58
    assert len(pure) == 59  # and one more row with three insertions
    assert is_pure_insertion("Tom has 3 apples. His hat is red. How many?", "Tom has 3 apples. How many?")
    assert not is_pure_insertion("Tom has 4 apples. How many?", "Tom has 3 apples. How many?")


def test_a_sample_whose_gold_is_missing_is_counted_apart():
    counts = DetectionCounts()
    counts.add(torch.tensor([True, False]), torch.tensor([False, False]), predicted=[(0, 2)], gold_spans=[])
    m = counts.metrics()
    assert m["samples"] == 0 and m["samples_without_gold"] == 1 and m["counts"]["token_fp"] == 0
