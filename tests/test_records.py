"""The stage contract (leaf.records): an analyze folder round-trips through the typed records byte for byte, bad
records and other schema versions are refused with the file, line and field named, and the helpers every consumer
uses (instruction spans, pruned prompt, counterfactual texts) agree with a computation by hand."""

import json

import pytest

from leaf.errors import LeafError
from leaf.spans import remove_spans
from leaf.records import (SCHEMA_VERSION, AnalysedSample, AnalysedUnit, Counterfactual, Span, check_finished,
                          read_samples, samples_text)


@pytest.fixture(scope="module")
def analysis(analyzed):
    """conftest's shared analyze run (both levels, gold spans from the clean twins)."""
    return analyzed.folder


def test_an_analyze_folder_round_trips_byte_for_byte(analysis):
    samples = read_samples(analysis)
    assert samples_text(samples) == (analysis / "samples.jsonl").read_text()
    assert json.loads((analysis / "summary.json").read_text())["schema"] == SCHEMA_VERSION
    ok = [s for s in samples if s.analysed]
    assert ok and all(isinstance(u, AnalysedUnit) for s in ok for u in s.units)
    assert {u.level for s in ok for u in s.units} == {"instruction", "response"}
    assert read_samples(analysis, analysed_only=True) == ok


def test_helpers_agree_with_a_hand_computation(analysis):
    for sample in read_samples(analysis, analysed_only=True):
        raw = json.loads(samples_text([sample]))
        spans = sorted({(s["start"], s["end"]) for u in raw["units"] if u["level"] == "instruction"
                        for s in u["spans"]})
        assert sample.instruction_spans() == spans
        pruned = sample.pruned_prompt()  # what serve and inspect derived from the raw JSON before
        assert pruned == (remove_spans(raw["prompt"], spans) if spans else None)
        for unit, raw_unit in zip(sample.units, raw["units"]):
            for cf, raw_cf in zip(unit.counterfactuals, raw_unit["counterfactuals"]):
                prompt, response = cf.texts(sample)
                assert cf.field == raw_cf["field"] == ("prompt" if unit.level == "instruction" else "response")
                assert (prompt, response) == (raw_cf.get("prompt", sample.prompt),
                                              raw_cf.get("response", sample.response))


def test_a_counterfactual_that_changes_both_fields():
    sample = AnalysedSample(row=0, id="a", status="ok", prompt="P p", response="R r", units=[
        AnalysedUnit("response", counterfactuals=[Counterfactual(prompt="P", response="R")]),
        AnalysedUnit("instruction", spans=[Span(2, 3, "p", [1])], counterfactuals=[Counterfactual([(2, 3)], "P ")])])
    assert [(level, cf.texts(sample)) for level, cf in sample.counterfactuals()] == [
        ("response", ("P", "R")), ("instruction", ("P ", "R r"))]
    assert [level for level, _ in sample.counterfactuals(["instruction"])] == ["instruction"]
    again = read_line(samples_text([sample]))
    assert again == sample


def read_line(text: str) -> AnalysedSample:
    from leaf.records import parse_samples

    (sample,) = parse_samples(text, "x.jsonl")
    return sample


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(row=-1), r"x.jsonl: line 1: 'row' must be a non-negative integer"),
    (lambda r: r.update(status="done"), r"line 1: status must be one of ok, skipped_too_long"),
    (lambda r: r.pop("prompt"), r"line 1: lacks prompt: not a leaf analyze record"),
    (lambda r: r["units"][0].update(level="middle"), r"line 1.units\[0\]: level must be one of"),
    (lambda r: r["units"][0]["spans"].append({"start": 1}), r"units\[0\].spans\[0\]: lacks end, text, tokens"),
    (lambda r: r["units"][0]["counterfactuals"].append({"field": "prompt"}),
     r"counterfactuals\[0\]: a prompt-field counterfactual needs its prompt text"),
    (lambda r: r.update(prompt_span=[0]), r"prompt_span: expected \[start, end\]"),
])
def test_bad_records_are_refused_naming_file_line_and_field(edit, message):
    record = AnalysedSample(row=0, id="a", status="ok", prompt="p", response="r",
                            units=[AnalysedUnit("instruction")]).to_json()
    edit(record)
    with pytest.raises(LeafError, match=message):
        read_line(json.dumps(record) + "\n")
    with pytest.raises(LeafError, match="x.jsonl: line 2 is not valid JSON"):
        from leaf.records import parse_samples

        parse_samples(samples_text([read_line(json.dumps(AnalysedSample(0, "a", "ok", "p", "r").to_json()))])
                      + "{oops\n", "x.jsonl")


@pytest.mark.parametrize("schema, message", [
    (None, r"written by an older leaf \(0.0.1; records schema unversioned, this leaf reads schema \d+\)\. Run "
           r"`leaf analyze` again"),
    (SCHEMA_VERSION + 1, r"written by a newer leaf \(0.0.1; records schema \d+, this leaf reads schema \d+\)\. "
                         r"Upgrade leaf"),
])
def test_a_folder_of_another_schema_version_is_refused(analysis, tmp_path, schema, message):
    import shutil

    folder = tmp_path / "other"
    shutil.copytree(analysis, folder)
    summary = json.loads((folder / "summary.json").read_text())
    summary["versions"]["leaf-distill"] = "0.0.1"
    if schema is None:
        summary.pop("schema")
    else:
        summary["schema"] = schema
    (folder / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(LeafError, match=message):
        check_finished(folder)
    with pytest.raises(LeafError, match=message):  # every consumer reads through here
        read_samples(folder / "samples.jsonl")
