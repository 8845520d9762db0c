"""report.html for `leaf analyze`: one self-contained file (no server, no external assets).

Per sample and unit: the analysed text three times, shaded by the teacher's and the student's normalised
sensitivity and by Δ (red = low Δ = the student leans on it, the teacher does not), with the pruned spans marked.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from leaf.io import write_text_atomic

MAX_COUNTERFACTUALS = 5  # per unit in the page; samples.jsonl has them all

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:2em;border-top:1px solid #ccc;padding-top:1em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
.row{display:grid;grid-template-columns:6em 1fr;gap:.5em;margin:.3em 0;align-items:start}
.label{font-weight:600;color:#555} .text{white-space:pre-wrap;font-family:ui-monospace,monospace;line-height:1.6}
mark.pruned{background:none;outline:2px solid #c00;outline-offset:1px;border-radius:2px}
.cf{font-family:ui-monospace,monospace;white-space:pre-wrap;background:#f6f6f6;padding:.3em;margin:.2em 0}
.meta{color:#666;font-size:.9em}
"""


def _color(value: float, kind: str) -> str:
    if kind == "delta":  # low Δ is the confounder signal
        return f"rgba(220,40,40,{(1 - value) ** 2:.3f})"
    return f"rgba(40,90,220,{value:.3f})"


def _shaded(text: str, base: int, tokens: list[dict], spans: list[dict], key: str | None) -> str:
    """HTML of `text` with each scored token shaded by tokens[i][key], and the pruned spans wrapped in
    <mark class="pruned">. One pass over the text: linear in its length."""
    value: list[float | None] = [None] * len(text)     # the shade of each character
    owner = [-1] * len(text)                           # which token a character belongs to (runs share one)
    for i, t in enumerate(tokens):
        for c in range(max(t["start"] - base, 0), min(t["end"] - base, len(text))):
            if owner[c] < 0:
                value[c], owner[c] = (t[key] if key else None), i
    pruned = [False] * len(text)
    for sp in spans:
        for c in range(max(sp["start"], 0), min(sp["end"], len(text))):
            pruned[c] = True
    out, start = [], 0
    for c in range(1, len(text) + 1):  # emit runs of characters with the same token and the same pruned state
        if c < len(text) and owner[c] == owner[start] and pruned[c] == pruned[start]:
            continue
        piece = html.escape(text[start:c])
        if value[start] is not None:
            piece = (f'<span style="background:{_color(value[start], key)}" title="{key} {value[start]:.3f}">'
                     f"{piece}</span>")
        opens = pruned[start] and (start == 0 or not pruned[start - 1])
        closes = pruned[start] and (c == len(text) or not pruned[c])
        out.append(('<mark class="pruned">' if opens else "") + piece + ("</mark>" if closes else ""))
        start = c
    return "".join(out)


def _unit_html(record: dict, unit: dict) -> str:
    field = "prompt" if unit["level"] == "instruction" else "response"
    text, base = record[field], record[f"{field}_span"][0]
    title = "instruction" if unit["level"] == "instruction" else f"response, segment {unit['segment']} as the loss"
    tau = "" if unit["threshold"] is None else f"τ = {unit['threshold']:.3f}"
    rows = [f'<div class="meta">{html.escape(title)}; threshold {unit["threshold_mode"]} {tau}; '
            f'{sum(t["flag"] for t in unit["tokens"])} of {len(unit["tokens"])} tokens flagged</div>']
    flat = len({t["delta"] for t in unit["tokens"]}) <= 1  # e.g. teacher = student: no contrast, nothing to shade
    if flat:
        rows.append('<div class="meta">Δ is the same for every token (teacher and student read this sample alike): '
                    "nothing to flag, Δ left unshaded</div>")
    for label, key in (("teacher", "teacher"), ("student", "student"), ("Δ", "delta")):
        spans = unit["spans"] if key == "delta" else []
        shade = None if (key == "delta" and flat) else key
        rows.append(f'<div class="row"><div class="label">{label}</div>'
                    f'<div class="text">{_shaded(text, base, unit["tokens"], spans, shade)}</div></div>')
    shown = unit["counterfactuals"][:MAX_COUNTERFACTUALS]
    for cf in shown:
        rows.append(f'<div class="row"><div class="label">pruned</div><div class="cf">'
                    f'{html.escape(cf[cf["field"]])}</div></div>')
    if len(unit["counterfactuals"]) > len(shown):
        rows.append(f'<div class="meta">… {len(unit["counterfactuals"]) - len(shown)} more counterfactuals in '
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


def render_report(records: list[dict], summary: dict) -> str:
    models = summary["models"]
    body = [f"<h1>leaf analyze</h1><p class=meta>teacher {html.escape(models['teacher']['name'])} · student "
            f"{html.escape(models['student']['name'])} · {html.escape(summary['command'])}</p>",
            _summary_html(summary),
            '<p class="meta">Shading: blue = normalised gradient sensitivity; red = low Δ (teacher − student), the '
            'confounder signal. Outlined: pruned spans.</p>']
    for record in records:
        nll = record.get("nll") or {}
        head = (f'<h2 id="row-{record["row"]}">sample {html.escape(record["id"])}'
                f' <span class="meta">({html.escape(record["status"])}'
                + (f"; response NLL teacher {nll['teacher']:.3f}, student {nll['student']:.3f}" if nll else "")
                + ")</span></h2>")
        body.append(head)
        for unit in record.get("units", []):
            body.append(_unit_html(record, unit))
    data = html.escape(json.dumps({"counts": summary["counts"]}))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>leaf analyze report</title>"
            f"<style>{CSS}</style></head><body data-summary=\"{data}\">{''.join(body)}</body></html>\n")


def write_report(path: str | Path, records: list[dict], summary: dict) -> Path:
    return write_text_atomic(path, render_report(records, summary))
