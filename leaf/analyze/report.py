"""report.html for `leaf analyze`: one self-contained file (no server, no external assets).

An index of the samples (sortable by flags, mean Δ of the flagged tokens, gold characters missed), a colour scale, then per sample and
unit: the analysed text three times, shaded by the teacher's and the student's normalised sensitivity and by Δ
(red = low Δ = the student leans on it, the teacher does not), with the pruned spans outlined and, when the data
gave gold spans, the gold underlined: found (inside a pruned span) or missed.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from leaf.io import write_text_atomic
from leaf.records import AnalysedSample, AnalysedUnit, Span, TokenScore

MAX_COUNTERFACTUALS = 5  # per unit in the page; samples.jsonl has them all

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:2em;border-top:1px solid #ccc;padding-top:1em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th:first-child,td:first-child{text-align:left} #index th{cursor:pointer}
.row{display:grid;grid-template-columns:6em 1fr;gap:.5em;margin:.3em 0;align-items:start}
.label{font-weight:600;color:#555} .text{white-space:pre-wrap;font-family:ui-monospace,monospace;line-height:1.6}
mark.pruned,.box{background:none;outline:2px solid #c00;outline-offset:1px;border-radius:2px;font-weight:400}
u.g{text-decoration:underline 3px #0a0;text-underline-offset:3px} u.g.m{text-decoration:underline dashed 3px #e80}
.cf{font-family:ui-monospace,monospace;white-space:pre-wrap;background:#f6f6f6;padding:.3em;margin:.2em 0}
.text i{font-style:normal} .meta{color:#666;font-size:.9em} .scale{display:inline-block;width:10em;height:.8em;vertical-align:middle;
border:1px solid #ccc} .legend span{margin-right:1.5em}
""" + "".join(  # shade buckets as classes: a span costs a few bytes, not an inline style (size grows with tokens)
    f".b{k}{{background:rgba(40,90,220,{k / 9:.2f})}}.r{k}{{background:rgba(220,40,40,{(1 - k / 9) ** 2:.2f})}}"
    for k in range(10))

SORT_JS = """
document.querySelectorAll('#index th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = [...body.rows], up = th.dataset.up !== '1';
  const key = r => { const t = r.cells[col].dataset.v ?? r.cells[col].textContent; return isNaN(t) ? t : +t; };
  rows.sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1));
  th.dataset.up = up ? '1' : '0'; rows.forEach(r => body.appendChild(r));
}));
"""


def _bucket(value: float) -> int:
    return min(9, max(0, round(value * 9)))


def _shaded(text: str, base: int, tokens: list[TokenScore], spans: list[Span], key: str | None,
            gold: list[tuple[int, int]] | None = None) -> str:
    """HTML of `text` with each scored token shaded by tokens[i][key] (10 shade classes), the pruned spans wrapped in
    <mark class="pruned">, and gold spans underlined (<u class="g">: inside a pruned span, found; <u class="g m">:
    missed). Neighbouring tokens with the same shade share one element. One pass: linear in the text's length."""
    shade: list[int | None] = [None] * len(text)       # the shade bucket of each character
    for t in tokens:
        for c in range(max(t.start - base, 0), min(t.end - base, len(text))):
            if shade[c] is None and key:
                shade[c] = _bucket(getattr(t, key))
    pruned, golden = [False] * len(text), [False] * len(text)
    for sp in spans:
        for c in range(max(sp.start, 0), min(sp.end, len(text))):
            pruned[c] = True
    for a, b in gold or []:
        for c in range(max(a, 0), min(b, len(text))):
            golden[c] = True
    prefix = "r" if key == "delta" else "b"
    state = list(zip(shade, pruned, golden))
    out, start = [], 0
    for c in range(1, len(text) + 1):  # emit runs of characters with the same shade, pruned and gold state
        if c < len(text) and state[c] == state[start]:
            continue
        piece = html.escape(text[start:c])
        if shade[start] is not None:
            piece = f"<i class={prefix}{shade[start]}>{piece}</i>"
        if golden[start]:
            piece = f'<u class="g{"" if pruned[start] else " m"}">{piece}</u>'
        opens = pruned[start] and (start == 0 or not pruned[start - 1])
        closes = pruned[start] and (c == len(text) or not pruned[c])
        out.append(('<mark class="pruned">' if opens else "") + piece + ("</mark>" if closes else ""))
        start = c
    return "".join(out)


def _unit_html(record: AnalysedSample, unit: AnalysedUnit) -> str:
    instruction = unit.level == "instruction"
    text, base = (record.prompt, record.prompt_span[0]) if instruction else (record.response, record.response_span[0])
    title = "instruction" if instruction else f"response, segment {unit.segment} as the loss"
    tau = "" if unit.threshold is None else f"τ = {unit.threshold:.3f}"
    rows = [f'<div class="meta">{html.escape(title)}; threshold {unit.threshold_mode} {tau}; '
            f'{sum(t.flag for t in unit.tokens)} of {len(unit.tokens)} tokens flagged</div>']
    flat = len({t.delta for t in unit.tokens}) <= 1  # e.g. teacher = student: no contrast, nothing to shade
    if flat:
        rows.append('<div class="meta">Δ is the same for every token (teacher and student read this sample alike): '
                    "nothing to flag, Δ left unshaded</div>")
    gold = (record.gold_spans or []) if instruction else []
    for label, key in (("teacher", "teacher"), ("student", "student"), ("Δ", "delta")):
        spans = unit.spans if key == "delta" else []
        shade = None if (key == "delta" and flat) else key
        marked = gold if key == "delta" else None
        rows.append(f'<div class="row"><div class="label">{label}</div>'
                    f'<div class="text">{_shaded(text, base, unit.tokens, spans, shade, marked)}</div></div>')
    shown = unit.counterfactuals[:MAX_COUNTERFACTUALS]
    for cf in shown:
        rows.append(f'<div class="row"><div class="label">pruned</div><div class="cf">'
                    f'{html.escape(cf.texts(record)[0 if instruction else 1])}</div></div>')
    if len(unit.counterfactuals) > len(shown):
        rows.append(f'<div class="meta">… {len(unit.counterfactuals) - len(shown)} more counterfactuals in '
                    "samples.jsonl</div>")
    return "\n".join(rows)


def _summary_html(summary: dict) -> str:
    counts = "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in summary["counts"].items())
    parts = [f"<table><tr><th>count</th><th>value</th></tr>{counts}</table>"]
    for key, title in (("detection", "detection, all samples with gold"),
                       ("detection_exact", "detection, samples whose gold is exact")):
        if not summary.get(key):
            continue
        rows = "".join(
            f"<tr><td>{html.escape(mode)}</td>" + "".join(
                f"<td>{m[level][k]:.3f}</td>" for level in ("token", "span") for k in ("precision", "recall", "f1"))
            + "</tr>" for mode, m in summary[key].items())
        parts.append(f"<p class='meta'>{title}</p><table><tr><th>mode</th><th>token P</th><th>token R</th>"
                     f"<th>token F1</th><th>span P</th><th>span R</th><th>span F1</th></tr>{rows}</table>")
    for note in summary.get("notes", []):
        parts.append(f'<p class="meta">note: {html.escape(note)}</p>')
    return "\n".join(parts)


LEGEND = ('<p class="meta legend"><span>sensitivity 0 <i class="scale" style="background:linear-gradient(to right,'
          'rgba(40,90,220,0),rgba(40,90,220,1))"></i> 1</span><span>Δ (teacher − student) 0 <i class="scale" '
          'style="background:linear-gradient(to right,rgba(220,40,40,1),rgba(220,40,40,0))"></i> 1: red = the '
          'student leans on it, the teacher does not</span><br><span><b class="box">pruned span</b></span>'
          '<span><u class="g">gold span found</u> (true positive inside a pruned span)</span><span><u class="g m">'
          'gold span missed</u> (false negative)</span><span>outlined without underline: pruned, not gold (false '
          'positive)</span></p>')


def _missed_gold(record: AnalysedSample) -> int | None:
    """Characters of the gold spans that no instruction-level pruned span covers (None without gold)."""
    if record.gold_spans is None:
        return None
    pruned = {c for a, b in record.instruction_spans() for c in range(a, b)}
    return sum(1 for a, b in record.gold_spans for c in range(a, b) if c not in pruned)


def _index_html(records: list[AnalysedSample]) -> str:
    """One row per sample with a link to it; click a column to sort (flags, mean Δ of the flagged tokens, missed
    gold)."""
    rows = []
    for record in records:
        units = record.units or []
        flags = sum(t.flag for u in units for t in u.tokens)
        deltas = [t.delta for u in units for t in u.tokens if t.flag]
        low = sum(deltas) / len(deltas) if deltas else None     # how far below the rest the flagged tokens lie
        missed = _missed_gold(record)
        rows.append(f'<tr><td><a href="#row-{record.row}">{html.escape(record.id)}</a></td>'
                    f'<td>{html.escape(record.status)}</td><td>{flags}</td>'
                    f'<td data-v="{"" if low is None else f"{low:.3f}"}">{"-" if low is None else f"{low:.3f}"}</td>'
                    f'<td data-v="{"" if missed is None else missed}">{"-" if missed is None else missed}</td></tr>')
    return ('<table id="index"><thead><tr><th>sample</th><th>status</th><th>flagged tokens</th><th>mean Δ of flagged</th>'
            '<th>gold chars missed</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>"
            '<p class="meta">Click a column to sort.</p>')


def render_report(records: list[AnalysedSample], summary: dict) -> str:
    models = summary["models"]
    body = [f"<h1>leaf analyze</h1><p class=meta>teacher {html.escape(models['teacher']['name'])} · student "
            f"{html.escape(models['student']['name'])} · {html.escape(summary['command'])}</p>",
            _summary_html(summary), LEGEND, _index_html(records)]
    for record in records:
        nll = record.nll or {}
        head = (f'<h2 id="row-{record.row}">sample {html.escape(record.id)}'
                f' <span class="meta">({html.escape(record.status)}'
                + (f"; response NLL teacher {nll['teacher']:.3f}, student {nll['student']:.3f}" if nll else "")
                + ")</span></h2>")
        body.append(head)
        for unit in record.units or []:
            body.append(_unit_html(record, unit))
    data = html.escape(json.dumps({"counts": summary["counts"]}))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>leaf analyze report</title>"
            f"<style>{CSS}</style></head><body data-summary=\"{data}\">{''.join(body)}"
            f"<script>{SORT_JS}</script></body></html>\n")


def write_report(path: str | Path, records: list[AnalysedSample], summary: dict) -> Path:
    return write_text_atomic(path, render_report(records, summary))
