"""`leaf serve` results for people: a Markdown table and a PNG (throughput and attention focus per model)."""

from __future__ import annotations

from pathlib import Path


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _cell(figures: dict, metric) -> str:
    """A figure with its spread, `mean ± std`, when the metric has one."""
    value = figures.get(metric.key)
    std = figures.get(metric.spread) if metric.spread else None
    return _f(value) + (f" ± {_f(std, 2)}" if value is not None and std is not None else "")


def markdown(results: dict) -> str:
    """The results folder's results.md: one row per model and prompt set (the columns from
    leaf.serve.metrics.SERVE_METRICS), the answer checkers, attention focus, and the comparisons."""
    from leaf.serve.metrics import SERVE_METRICS

    shown = [m for m in SERVE_METRICS if m.table]
    compared = [m for m in SERVE_METRICS if m.compared]
    models = results["models"]
    lines = ["# leaf serve results", ""]
    engines = {m["engine"]["engine"] for m in models.values()}
    lines += [f"Engine: {', '.join(sorted(engines))}. Baseline of the ratios: `{results['comparisons']['baseline']}`.",
              ""]
    lines += ["↑ higher is better, ↓ lower is better; ± is the run-to-run std over --iterations (throughputs) or "
              "over requests (latencies).", "",
              "| model | prompts | output tokens | " + " | ".join(f"{m.header} {m.arrow}" for m in shown) +
              " | accuracy ↑ |", "|---|---|---|" + "---|" * len(shown) + "---|"]
    for name, entry in models.items():
        for set_name, m in entry["sets"].items():
            acc = f"{m['accuracy']:.3f} ({m['correct']}/{m['scored']})" if "accuracy" in m else "-"
            runs = m.get("iterations", 1)
            lines.append(f"| {name} | {set_name} ({m['completed'] // runs}) | {m['total_output_tokens'] // runs} | "
                         + " | ".join(_cell(m, metric) for metric in shown) + f" | {acc} |")
    checking = {}
    for entry in models.values():
        for m in entry["sets"].values():
            for key, n in (m.get("answer_checking") or {}).items():
                checking[key] = checking.get(key, 0) + n
    if checking:
        fallback = checking["fallback gsm8k-style"] + checking["fallback undecided"]
        lines += ["", f"Answers checked (every model and prompt set): {checking['math-verify']} by math-verify, "
                  f"{fallback} by the regex checker in its place ({checking['fallback gsm8k-style']} `####` answer "
                  f"lines, {checking['fallback undecided']} math-verify could not decide), {checking['regex']} by the "
                  "regex checker as asked."]
    focus = {n: e["attention_focus"] for n, e in models.items() if e.get("attention_focus")}
    if focus:
        lines += ["", "Attention focus: share of the response's attention to the instruction that lands off the "
                  f"confounder spans ({', '.join(results['confounder_source'])}), sink excluded, mean over layers.", "",
                  "| model | focus | wasted | uniform share | samples |", "|---|---|---|---|---|"]
        for name, f in focus.items():
            lines.append(f"| {name} | {f['focus']:.4f} | {f['wasted']:.4f} | {f['token_share']:.4f} | {f['samples']} |")
    comp = results["comparisons"]
    if comp["vs_baseline"]:
        lines += ["", f"Against `{comp['baseline']}` (ratio model / baseline; ↑: above 1 is better, ↓: below 1 is "
                  "better):", "", "| model | prompts | " + " | ".join(f"{m.header} {m.arrow}" for m in compared) +
                  " | accuracy Δ ↑ |", "|---|---|" + "---|" * len(compared) + "---|"]
        for name, row in comp["vs_baseline"].items():
            for set_name, r in row.items():
                if set_name == "attention_focus":
                    continue
                lines.append(f"| {name} | {set_name} | " + " | ".join(_f(r.get(m.key)) for m in compared) +
                             f" | {_f(r.get('accuracy_delta'))} |")
            if "attention_focus" in row:
                a = row["attention_focus"]
                lines.append(f"| {name} | attention focus | {a['baseline']:.4f} → {a['model']:.4f} "
                             f"({a['relative_change']:+.2%}) |" + " |" * len(compared))
    if comp["pruned_vs_original"]:
        lines += ["", "Pruned vs original prompts (detected confounders removed; speedups ↑, above 1 is faster; "
                  "± the run-to-run spread; output tokens per run, since shorter answers are faster too):", "",
                  "| model | req/s speedup ↑ | E2E speedup ↑ | input-token ratio | output tokens original → pruned |",
                  "|---|---|---|---|---|"]
        for name, r in comp["pruned_vs_original"].items():
            speedup, spread = r["speedup_requests_per_second"], r.get("speedup_requests_per_second_std")
            shown = _f(speedup) + (f" ± {_f(spread)}" if spread is not None else "")
            if r.get("speedup_distinct_from_1") is False:
                shown += " (within noise of 1.0)"
            tokens = r.get("output_tokens") or {}
            lines.append(f"| {name} | {shown} | {_f(r['speedup_mean_e2el'])} | {_f(r['input_token_ratio'])} | "
                         f"{_f(tokens.get('original'))} → {_f(tokens.get('pruned'))} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    """Two panels, one row per model (horizontal bars, so that any number of names stays legible): output tokens/s
    per prompt set with the run-to-run spread (± one standard deviation over --iterations; none with one), and
    attention focus (when measured) beside the share a uniform attention would give."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leaf.io import write_bytes_atomic

    models = results["models"]
    names = list(models)
    sets = sorted({s for e in models.values() for s in e["sets"]}, key=["original", "clean", "pruned", "random"].index)
    runs = max((e["sets"][s].get("iterations", 1) for e in models.values() for s in e["sets"]), default=1)
    height = 1.6 + 0.32 * len(names) * max(len(sets), 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, height), sharey=True)
    rows = list(range(len(names)))[::-1]  # the first model on top
    width = 0.8 / max(len(sets), 1)
    for k, set_name in enumerate(sets):
        values = [models[n]["sets"].get(set_name, {}).get("output_throughput", 0) for n in names]
        spread = [models[n]["sets"].get(set_name, {}).get("output_throughput_std") or 0 for n in names]
        left.barh([r + (len(sets) - 1 - k) * width - 0.4 + width / 2 for r in rows], values, width, label=set_name,
                  xerr=spread if runs > 1 else None, capsize=3)
    left.set_yticks(rows, names)
    left.set_xlabel("output tokens / s" + (f" (mean ± std over {runs} runs)" if runs > 1 else " (one run: no spread)"))
    left.set_title("throughput")
    left.legend(fontsize=8, loc="lower right")
    focus = [models[n].get("attention_focus") for n in names]
    if any(focus):
        values = [f["focus"] if f else 0 for f in focus]
        shares = [f["token_share"] if f else 0 for f in focus]
        right.barh(rows, values, 0.6, color="tab:green", label="focus (share of attention off the confounders)")
        right.plot(shares, rows, "k|", markersize=14, markeredgewidth=2, label="uniform attention")
        for r, v in zip(rows, values):
            if v:
                right.text(v, r, f" {v:.3f}", va="center", fontsize=8)
        low, high = min(v for v in values + shares if v), max(values + shares)
        right.set_xlim(max(0.0, low - 0.1 * (high - low) - 0.02), min(1.0, high + 0.25 * (high - low) + 0.03))
        right.set_xlabel("share off confounders")
        right.legend(fontsize=8, loc="lower left")
    else:
        right.text(0.5, 0.5, "no confounder spans in the data:\nattention focus not measured", ha="center",
                   va="center", transform=right.transAxes)
        right.set_axis_off()
    right.set_title("attention focus")
    figure.tight_layout()
    write_bytes_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
