"""`leaf analyze` end to end on two tiny models with different tokenizers and real GSM-Plus distractors."""

import json
import re
import shutil
from html.parser import HTMLParser

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from leaf.analyze import AnalyzeConfig, run_analyze
from leaf.cli import app
from leaf.spans import remove_spans
from leaf.models.tiny import build_tiny_model
from tests.shared import GSM_PLUS, shortest_gsm_plus, write_jsonl

runner = CliRunner()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    teacher = build_tiny_model("llama", root / "teacher", seed=1, tokenizer="bpe")
    student = build_tiny_model("qwen2", root / "student", seed=2)
    return str(teacher), str(student)


@pytest.fixture
def data(tmp_path):
    """Six short GSM-Plus problems (they fit the tiny models' 1024-token context)."""
    return write_jsonl(tmp_path / "data.jsonl", shortest_gsm_plus(6))


class Marks(HTMLParser):
    """Collects the text inside <mark class="pruned"> elements."""

    def __init__(self):
        super().__init__()
        self.depth, self.marks = 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "mark" and ("class", "pruned") in attrs:
            self.depth += 1
            self.marks.append("")

    def handle_endtag(self, tag):
        if tag == "mark" and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        if self.depth:
            self.marks[-1] += data


def _analyze(pair, data, out, *extra):
    teacher, student = pair
    gold = [] if "--gold" in extra else ["--gold-pair", "question,seed_question"]
    return runner.invoke(app, ["analyze", "--teacher", teacher, "--student", student, "--data", str(data),
                               "--output", str(out), *gold, "--window", "2", "--batch-size", "2", *extra])


def test_analyze_writes_all_four_outputs_consistently(pair, data, tmp_path):
    out = tmp_path / "out"
    result = _analyze(pair, data, out, "--level", "both", "--threshold", "quantile", "--quantile", "0.1")
    assert result.exit_code == 0, result.output
    assert "iqr" in result.output and "tok F1" in result.output          # the printed detection table
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 6 and all(r["status"] == "ok" for r in records)
    scores = load_file(str(out / "scores.safetensors"))
    n_spans = 0
    for r in records:
        assert r["text"][slice(*r["prompt_span"])] == r["prompt"]
        assert {u["level"] for u in r["units"]} == {"instruction", "response"}
        for u, unit in enumerate(r["units"]):
            field = "prompt" if unit["level"] == "instruction" else "response"
            assert sum(t["flag"] for t in unit["tokens"]) >= 1                  # quantile always flags some
            for span in unit["spans"]:
                assert r[field][span["start"]: span["end"]] == span["text"]
            for cf in unit["counterfactuals"]:
                assert cf[field] == remove_spans(r[field], [tuple(s) for s in cf["removed"]])
            assert len(unit["counterfactuals"]) == len(unit["spans"])          # span pruning: one per span
            assert scores[f"{r['row']}.{u}.delta"].shape == (len(unit["tokens"]),)
            assert all(0.0 <= t["delta"] <= 1.0 for t in unit["tokens"])
            if unit["level"] == "instruction":
                n_spans += len(unit["spans"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["analysed"] == 6
    assert set(summary["detection"]) == {"iqr", "quantile", "released", "random", "ppl"}
    exact = [r for r in records if r["gold_exact"]]
    if exact:
        assert summary["detection_exact"]["iqr"]["samples"] == len(exact) < 6
    assert summary["command"].startswith("leaf analyze --teacher")
    assert summary["models"]["teacher"]["class"] == "LlamaForCausalLM"
    # the report: one file, no external assets, the Δ rows mark exactly the pruned spans
    page = (out / "report.html").read_text()
    assert "<script src" not in page and "http" not in page.split("<body")[0]
    parser = Marks()
    parser.feed(page)
    all_spans = [s["text"] for r in records for u in r["units"] for s in u["spans"]]
    assert parser.marks == all_spans and len(all_spans) >= n_spans > 0


def test_resume_skips_finished_windows_and_gives_the_same_result(pair, data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _analyze(pair, data, full).exit_code == 0
    assert _analyze(pair, data, part).exit_code == 0
    # an interrupted run: the last window never finished and the final files were never merged
    (part / "parts" / "part-00002.jsonl").unlink()
    for name in ("samples.jsonl", "summary.json", "report.html", "scores.safetensors"):
        (part / name).unlink()
    first = (part / "parts" / "part-00000.jsonl").stat().st_mtime_ns
    result = _analyze(pair, data, part)
    assert result.exit_code == 1 and "--resume" in result.output              # never overwrites silently
    assert _analyze(pair, data, part, "--resume").exit_code == 0
    assert (part / "parts" / "part-00000.jsonl").stat().st_mtime_ns == first  # not recomputed
    assert (part / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()
    # a window whose tensor file was cut short (a crash before it reached the disk) is redone, not trusted
    (part / "parts" / "part-00001.safetensors").write_bytes(b"\x00" * 10)
    (part / "samples.jsonl").unlink()
    assert _analyze(pair, data, part, "--resume").exit_code == 0
    assert (part / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()
    changed = _analyze(pair, data, part, "--resume", "--threshold", "quantile")
    assert changed.exit_code == 1 and "differs in: threshold" in changed.output
    # a run of other code is another run: its windows are not mixed with this code's
    manifest = part / "parts" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "code": "0.0.1+000000000000"}))
    changed = _analyze(pair, data, part, "--resume")
    assert changed.exit_code == 1 and "differs in: code (0.0.1+000000000000 there" in changed.output


def test_too_long_samples_are_skipped_and_counted(pair, data, tmp_path):
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[1]["question"] = rows[1]["question"] + " It was a sunny day." * 80   # > 1024 byte tokens
    rows[1]["seed_question"] = rows[1]["question"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = _analyze(pair, data, out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["skipped_too_long"] == 1 and summary["counts"]["analysed"] == 5
    assert any("skipped, not truncated" in note for note in summary["notes"])
    statuses = [json.loads(line)["status"] for line in (out / "samples.jsonl").read_text().splitlines()]
    assert statuses[1] == "skipped_too_long"


def test_different_chat_templates_are_noted_and_one_is_used(pair, data, tmp_path):
    teacher = tmp_path / "teacher"
    shutil.copytree(pair[0], teacher)
    _edit_chat_template(teacher, "<|end|>", "<|eos|>")
    out = tmp_path / "out"
    result = _analyze((str(teacher), pair[1]), data, out, "--limit", "2")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert any("each see their own chat template's rendering" in note for note in summary["notes"])


def test_selection_and_verification_run_generation(pair, data, tmp_path):
    """Random tiny models answer nothing correctly: selection keeps no sample, and says so per sample."""
    out = tmp_path / "out"
    config = AnalyzeConfig(teacher=pair[0], student=pair[1], data=data, output=out, select=True, verify=True,
                           max_new_tokens=4, limit=3, generator="hf")
    summary = run_analyze(config, progress=False)
    assert summary["counts"]["filtered_selection"] == 3 and summary["counts"]["analysed"] == 0
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(r["selection"]["teacher_correct"] is False for r in records)
    assert all(r["selection"]["reference"] for r in records)
    # each answer is recorded as the grader read it, with the checker that decided
    assert all(r["selection"][f"{who}_checker"].split()[0] in ("math-verify", "regex") and
               f"{who}_answer" in r["selection"] for r in records for who in ("teacher", "student"))
    # verification alone: every counterfactual needs both models right, so none survives here
    out = tmp_path / "verified"
    config = AnalyzeConfig(teacher=pair[0], student=pair[1], data=data, output=out, verify=True, max_new_tokens=4,
                           limit=3, threshold="quantile", generator="vllm")
    counts = run_analyze(config, progress=False)["counts"]
    assert counts["analysed"] == 3 and counts["counterfactuals"] == 0 and counts["counterfactuals_dropped"] >= 3


@pytest.mark.parametrize("args,message", [
    (["--threshold", "absolute"], "--threshold absolute needs --tau"),
    (["--level", "sentence"], "'sentence' is not one of"),
    (["--gold", "x", "--gold-pair", "a,b"], "Give --gold or --gold-pair, not both"),
    (["--segments", "5"], "--segments must be 2 or 3"),
])
def test_bad_options_are_clean_errors(pair, data, tmp_path, args, message):
    teacher, student = pair
    result = runner.invoke(app, ["analyze", "--teacher", teacher, "--student", student, "--data", str(data),
                                 "--output", str(tmp_path / "o"), *args])
    assert result.exit_code in (1, 2) and message in result.output
    assert "Traceback" not in result.output


def test_a_bad_argument_claims_no_output_folder(pair, data, tmp_path):
    out = tmp_path / "out"
    result = _analyze(pair, data, out, "--gold", "no_such_field")
    assert result.exit_code == 1 and "no gold field 'no_such_field'" in result.output
    assert _analyze(pair, data, out).exit_code == 0   # the same folder, without --resume: nothing was claimed


def test_malformed_data_line_is_named(pair, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "solution": "s"}\n{oops\n')
    result = runner.invoke(app, ["analyze", "--teacher", pair[0], "--student", pair[1], "--data", str(bad),
                                 "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and "line 2 is not valid JSON" in result.output
    assert not (tmp_path / "o").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium (apt-get install chromium; .ci/run installs it)")
def test_report_renders_in_headless_chromium(pair, data, tmp_path):
    import subprocess

    out = tmp_path / "out"
    assert _analyze(pair, data, out, "--limit", "2", "--threshold", "quantile").exit_code == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").as_uri()
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    parser = Marks()
    parser.feed(dom.stdout)
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert parser.marks == [s["text"] for r in records for u in r["units"] for s in u["spans"]]
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,900", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_gold_field_with_the_distractor_text(pair, tmp_path):
    rows = [{"question": "Tom has 3 apples. His hat is red. He buys 2 more. How many apples?",
             "solution": "3 + 2 = 5\n#### 5", "distractor": "His hat is red."},
            {"question": "Ann has 4 pens. The sky is blue today. She loses 1. How many pens?",
             "solution": "4 - 1 = 3\n#### 3", "distractor": "The sky is blue today."}]
    data = tmp_path / "gold.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = runner.invoke(app, ["analyze", "--teacher", pair[0], "--student", pair[1], "--data", str(data),
                                 "--output", str(out), "--gold", "distractor", "--threshold", "quantile"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for row, record in zip(rows, records):
        [(a, b)] = record["gold_spans"]
        assert record["prompt"][a:b] == row["distractor"]
    detection = json.loads((out / "summary.json").read_text())["detection"]
    gold_tokens = detection["quantile"]["counts"]["token_tp"] + detection["quantile"]["counts"]["token_fn"]
    assert gold_tokens == sum(len(r["distractor"].replace(" ", "")) for r in rows)  # byte tokens, spaces excluded


def _edit_chat_template(folder, old: str, new: str) -> None:
    """Replace `old` by `new` in a saved tokenizer's chat template (chat_template.jinja, or the config's field)."""
    template_file = folder / "chat_template.jinja"
    if template_file.exists():
        template_file.write_text(template_file.read_text().replace(old, new))
        return
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = config["chat_template"].replace(old, new)
    config_path.write_text(json.dumps(config))


def _without_bos_in_template(folder):
    """The tiny model's tokenizer with a ChatML-like template that writes no BOS (as SmolLM2's)."""
    _edit_chat_template(folder, "{{ bos_token }}", "")


@pytest.mark.parametrize("template", ["own", "student"])
def test_a_teacher_that_needs_bos_is_scored_with_it(pair, data, tmp_path, template):
    """The student's template writes no BOS, the teacher's does (as Gemma / Llama 3): the teacher is scored on a text
    that starts with its BOS, and its scores equal plain autograd on exactly that text (its own rendering with
    --template own; the student's rendering with the teacher's BOS first with --template student)."""
    import torch
    from transformers import AutoTokenizer

    from leaf.rendering import own_rendering, with_bos
    from tests.hooks.reference import eager_model, saliency

    student = tmp_path / "student"
    shutil.copytree(pair[1], student)
    _without_bos_in_template(student)
    out = tmp_path / "out"
    result = _analyze((pair[0], str(student)), data, out, "--limit", "2", "--template", template)
    assert result.exit_code == 0, result.output
    t_tok, s_tok = AutoTokenizer.from_pretrained(pair[0]), AutoTokenizer.from_pretrained(student)
    model = eager_model(pair[0])
    scores = load_file(str(out / "scores.safetensors"))
    for r, record in enumerate(json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()):
        assert not record["text"].startswith(s_tok.bos_token)          # the student's own text has no BOS
        view = own_rendering(t_tok, record["prompt"], record["response"]) if template == "own" else \
            with_bos(t_tok, own_rendering(s_tok, record["prompt"], record["response"]))
        assert view.text.startswith(t_tok.bos_token)
        enc = t_tok(view.text, add_special_tokens=False, return_offsets_mapping=True)
        ids = torch.tensor(enc.input_ids)
        assert ids[0] == t_tok.bos_token_id
        offsets = torch.tensor(enc.offset_mapping)
        target = (offsets[:, 0] >= view.response[0]) & (offsets[:, 1] <= view.response[1]) & (
            offsets[:, 1] > offsets[:, 0])
        reference, loss = saliency(model, ids, target)
        assert torch.allclose(scores[f"{r}.0.teacher"], reference, atol=1e-5)
        assert record["nll"]["teacher"] == pytest.approx(loss, rel=1e-4)


def test_teacher_equal_to_student_flags_nothing(pair, data, tmp_path):
    out = tmp_path / "same"
    result = _analyze((pair[1], pair[1]), data, out, "--limit", "3", "--threshold", "quantile",
                      "--gold-pair", "question,seed_question")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for record in records:
        for unit in record["units"]:
            assert all(t["delta"] == 0 for t in unit["tokens"]) and not unit["spans"]
    summary = json.loads((out / "summary.json").read_text())
    for mode, metrics in summary["detection"].items():
        assert metrics["counts"]["token_tp"] + metrics["counts"]["token_fp"] == 0, mode
    assert "nothing to flag" in (out / "report.html").read_text()


def test_report_draws_gold_found_and_missed_an_index_and_stays_small(pair, tmp_path):
    """Gold spans are underlined: inside a pruned span as found, elsewhere as missed; an index links every sample
    with its flags and missed gold characters; shading uses classes, so 8 GSM-Plus samples with a byte tokenizer stay
    near 100 KB (inline styles made 505 KB)."""
    from leaf.analyze.report import _shaded, render_report
    from leaf.records import Span, TokenScore, read_samples

    text = "Tom has 3 apples. His hat is red. How many?"
    gold = [(18, 33)]                                     # "His hat is red."
    spans = [Span(18, 25, "His hat", []), Span(0, 3, "Tom", [])]   # "His hat" (found), "Tom" (false positive)
    tokens = [TokenScore(i, i, i + 1, 0.0, 0.0, 0.5, False) for i in range(len(text))]
    page = _shaded(text, 0, tokens, spans, "delta", gold)
    parser = Marks()
    parser.feed(page)
    assert parser.marks == ["Tom", "His hat"]
    assert '<mark class="pruned"><u class="g">' in page and '<u class="g m">' in page
    found = "".join(re.findall(r'<u class="g">(.*?)</u>', page))
    missed = "".join(re.findall(r'<u class="g m">(.*?)</u>', page))
    assert re.sub("<[^>]+>", "", found) == "His hat" and re.sub("<[^>]+>", "", missed) == " is red."
    out = tmp_path / "out"
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(GSM_PLUS.read_text().splitlines(keepends=True)[:8]))
    result = runner.invoke(app, ["analyze", "--teacher", pair[0], "--student", pair[1], "--data", str(rows),
                                 "--output", str(out), "--gold-pair", "question,seed_question"])
    assert result.exit_code == 0, result.output
    report = (out / "report.html").read_text()
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(f'href="#row-{r["row"]}"' in report and f'id="row-{r["row"]}"' in report for r in records)
    assert 'id="index"' in report and "gold chars missed" in report and "<script>" in report
    assert len(report.encode()) < 150_000, len(report.encode())
    summary = json.loads((out / "summary.json").read_text())
    assert render_report(read_samples(out), summary) == report
