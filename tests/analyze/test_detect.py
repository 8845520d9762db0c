"""detect() on hand-made scores: a student that leans on the distractor, a teacher that ignores it."""

import torch

from leaf.analyze import AnalyzeConfig
from leaf.analyze.detect import Unit, candidates, detect
from leaf.gold import DetectionCounts, spans_from_text
from leaf.hooks import encode_text
from leaf.models.tiny import bpe_tokenizer, byte_tokenizer

PROMPT = "Tom has 3 apples. His hat is red. He buys 2 more apples. How many apples?"
DISTRACTOR = "His hat is red."


def _setup(teacher_tok, student_tok):
    text = "<|bos|>" + PROMPT + "\n" + "3 + 2 = 5"
    pspan = (7, 7 + len(PROMPT))
    rspan = (pspan[1] + 1, len(text))
    s_enc, t_enc = (encode_text(tok, text, pspan, rspan) for tok in (student_tok, teacher_tok))
    d0 = text.index(DISTRACTOR)
    d1 = d0 + len(DISTRACTOR)

    def scores(enc, on_distractor, elsewhere):
        inside = (enc.offsets[:, 0] >= d0) & (enc.offsets[:, 1] <= d1)
        g = torch.Generator().manual_seed(0)
        base = elsewhere + 0.05 * torch.rand(len(enc.offsets), generator=g)
        return torch.where(inside, torch.full_like(base, on_distractor), base)

    # the student is very sensitive to the distractor, the teacher not at all
    s_scores = scores(s_enc, on_distractor=5.0, elsewhere=1.0)
    t_scores = scores(t_enc, on_distractor=0.0, elsewhere=1.0)
    unit = Unit("instruction", None, target=rspan, region=pspan, base=pspan)
    return text, unit, s_enc, t_enc, s_scores, t_scores


def test_the_distractor_is_flagged_pruned_and_scored_perfectly(tmp_path):
    text, unit, s_enc, t_enc, s_scores, t_scores = _setup(byte_tokenizer(), byte_tokenizer())
    config = AnalyzeConfig(teacher="t", student="s", data=tmp_path, output=tmp_path / "o", threshold="iqr")
    counts: dict[str, DetectionCounts] = {}
    gold = spans_from_text(PROMPT, DISTRACTOR)
    record, tensors = detect(config, unit, text, s_enc, t_enc, s_scores, t_scores, None, seed=0,
                             gold_spans=gold, counts=[counts])
    assert [s.text for s in record.spans] == [DISTRACTOR]
    assert [cf.to_json() for cf in record.counterfactuals] == [{
        "field": "prompt", "removed": [list(gold[0])], "prompt": "Tom has 3 apples. He buys 2 more apples. How many apples?"}]
    assert counts["iqr"].metrics()["token"]["f1"] == 1.0 and counts["iqr"].metrics()["span"]["f1"] == 1.0
    # whitespace and special tokens are never candidates
    cand = candidates(text, s_enc.offsets, s_enc.special_mask, unit.region)
    assert all(text[int(a):int(b)].strip() for a, b in s_enc.offsets[cand])
    assert tensors["delta"].shape == (int(cand.sum()),) and float(tensors["delta"].min()) == 0.0


def test_different_tokenizers_find_the_same_span(tmp_path):
    text, unit, s_enc, t_enc, s_scores, t_scores = _setup(bpe_tokenizer(), byte_tokenizer())
    assert len(s_enc.offsets) != len(t_enc.offsets)
    config = AnalyzeConfig(teacher="t", student="s", data=tmp_path, output=tmp_path / "o", pruning="collective")
    record, _ = detect(config, unit, text, s_enc, t_enc, s_scores, t_scores, None, seed=0, gold_spans=None,
                       counts=None)
    assert [s.text for s in record.spans] == [DISTRACTOR]
    assert len(record.counterfactuals) == 1


def test_one_flagged_word_grows_to_its_sentence_and_the_distractor_is_removed(tmp_path):
    """The student leans on one word of the distractor only: the token rule prunes that word, --span-unit sentence
    prunes the whole sentence; the per-distractor coverage tells the two apart."""
    text, unit, s_enc, t_enc, _, _ = _setup(byte_tokenizer(), byte_tokenizer())
    hat = text.index("hat")
    noise = 0.05 * torch.rand(len(s_enc.offsets), generator=torch.Generator().manual_seed(1))
    s_scores = torch.where((s_enc.offsets[:, 0] >= hat) & (s_enc.offsets[:, 1] <= hat + 3), 5.0, 1.0) + noise
    t_scores = 1.0 + noise.flip(0)
    gold = spans_from_text(PROMPT, DISTRACTOR)
    out = {}
    for span_unit in ("word", "sentence"):
        config = AnalyzeConfig(teacher="t", student="s", data=tmp_path, output=tmp_path / "o", span_unit=span_unit)
        counts: dict[str, DetectionCounts] = {}
        record, _ = detect(config, unit, text, s_enc, t_enc, s_scores, t_scores, None, seed=0, gold_spans=gold,
                           counts=[counts])
        out[span_unit] = (record, counts["iqr"].metrics())
    assert [s.text for s in out["word"][0].spans] == ["hat"]
    assert [s.text for s in out["sentence"][0].spans] == [DISTRACTOR]
    assert out["word"][1]["distractors"] == {"count": 1, "touched": 1.0, "numbers_removed": None, "removed": 0.0}
    assert out["sentence"][1]["distractors"]["removed"] == 1.0
    assert out["sentence"][1]["pruned"]["f1"] == 1.0 and out["word"][1]["pruned"]["recall"] < 0.3
    # the flags themselves are the same: only what is pruned grows
    assert out["word"][1]["token"] == out["sentence"][1]["token"]


def test_aggregating_over_sentences_flags_the_sentence_with_the_lowest_mean_delta(tmp_path):
    text, unit, s_enc, t_enc, s_scores, t_scores = _setup(byte_tokenizer(), byte_tokenizer())
    config = AnalyzeConfig(teacher="t", student="s", data=tmp_path, output=tmp_path / "o", threshold="quantile",
                           quantile=0.01, aggregate="sentence", span_unit="token")
    counts: dict[str, DetectionCounts] = {}
    record, _ = detect(config, unit, text, s_enc, t_enc, s_scores, t_scores, None, seed=0,
                       gold_spans=spans_from_text(PROMPT, DISTRACTOR), counts=[counts])
    # one sentence of four is flagged (the lowest 1 %, at least one), whole: the distractor
    assert [s.text for s in record.spans] == [DISTRACTOR]
    assert counts["quantile"].metrics()["distractors"]["removed"] == 1.0
    # the random baseline flags as many sentences (one), whole
    assert counts["random"].spans_predicted == 1


def test_distractor_coverage_by_hand():
    from leaf.gold import distractor_coverage

    prompt = "Tom has 4 cards . Eva has 6 cards . Ann has 12 pens and 3 cups . How many ?"
    gold = [(18, 36), (36, 65)]
    assert prompt[18:36] == "Eva has 6 cards . " and prompt[36:65] == "Ann has 12 pens and 3 cups . "
    cover = distractor_coverage(prompt, gold, [(26, 27), (44, 46), (36, 43)])  # "6", "12", "Ann has"
    assert cover == [{"touched": True, "numbers": True, "all": False},
                     {"touched": True, "numbers": False, "all": False}]
    assert distractor_coverage(prompt, gold, [(18, 34)])[0] == {"touched": True, "numbers": True, "all": False}
    assert distractor_coverage(prompt, gold, [(18, 35)])[0] == {"touched": True, "numbers": True, "all": True}
    assert distractor_coverage("It is sunny .", [(0, 13)], [])[0] == {"touched": False, "numbers": None,
                                                                      "all": False}


def test_each_threshold_mode_s_definition_on_a_hand_made_delta():
    """Δ over 10 candidates; each mode's rule computed by hand (docs/analyze.md "Threshold modes")."""
    import pytest

    from leaf.analyze.thresholds import ThresholdContext, flag

    d = torch.tensor([0.50, 0.55, 0.60, 0.45, -0.40, 0.52, 0.58, 0.30, 0.62, 0.48])

    def flagged(mode, **ctx):
        f = flag(mode, d, ThresholdContext(**ctx))
        return f.mask.nonzero().flatten().tolist(), f.threshold

    # iqr: torch's linear-interpolation quartiles: sorted = [-.40 .30 .45 .48 .50 .52 .55 .58 .60 .62];
    # Q1 at 2.25 -> .45 + .25·.03 = .4575, Q3 at 6.75 -> .55 + .75·.03 = .5725; τ = Q1 − 1.5·IQR = .285; Δ < τ
    idx, tau = flagged("iqr")
    assert idx == [4] and tau == pytest.approx(0.4575 - 1.5 * (0.5725 - 0.4575))
    # absolute: Δ <= τ, τ included
    assert flagged("absolute", tau=0.45)[0] == [3, 4, 7]
    # quantile: exactly ceil(p·N) lowest; p = 0.25 -> ceil(2.5) = 3
    assert flagged("quantile", quantile=0.25)[0] == [3, 4, 7]
    # released: τ = min(sorted[int(p·N)], 0.5); p = 0.25 -> sorted[2] = .45 -> Δ <= .45: the same 3 here
    idx, tau = flagged("released", quantile=0.25)
    assert idx == [3, 4, 7] and tau == pytest.approx(0.45)
    # ... and where they part: p = 0.15 -> quantile ceil(1.5) = 2 tokens; released sorted[int(1.5)] = sorted[1] = .30
    assert flagged("quantile", quantile=0.15)[0] == [4, 7] and flagged("released", quantile=0.15)[0] == [4, 7]
    # p = 0.55 -> quantile ceil(5.5) = 6 tokens; released sorted[5] = .52, capped at .5: Δ <= .5 is 5 tokens
    assert len(flagged("quantile", quantile=0.55)[0]) == 6
    idx, tau = flagged("released", quantile=0.55)
    assert tau == 0.5 and idx == [0, 3, 4, 7, 9]
    # p = 0.05 -> quantile ceil(0.5) = 1 token; released sorted[int(0.5)] = sorted[0]: the minimum only
    assert flagged("quantile", quantile=0.05)[0] == [4] == flagged("released", quantile=0.05)[0]
