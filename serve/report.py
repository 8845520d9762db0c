"""`leaf serve` results for people: a Markdown table and a PNG (throughput and attention focus per model)."""

from __future__ import annotations

from pathlib import Path


def _f(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _pm(figures: dict, key: str, std_key: str | None = None) -> str:
    """A figure with its spread: `mean ± std` (throughputs: `KEY_std`; latencies: `std_NAME_ms`)."""
    value, std = figures.get(key), figures.get(std_key or f"{key}_std")
    return _f(value) + (f" ± {_f(std, 2)}" if value is not None and std is not None else "")


def markdown(results: dict) -> str:
    models = results["models"]
    lines = ["# leaf serve results", ""]
    engines = {m["engine"]["engine"] for m in models.values()}
    lines += [f"Engine: {', '.join(sorted(engines))}. Baseline of the ratios: `{results['comparisons']['baseline']}`.",
              ""]
    lines += ["↑ higher is better, ↓ lower is better; ± is the run-to-run std over --iterations (throughputs) or "
              "over requests (latencies).", "",
              "| model | prompts | req/s ↑ | output tok/s ↑ | output tokens | mean TTFT ms ↓ | p99 TPOT ms ↓ | "
              "mean E2E ms ↓ | accuracy ↑ |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in models.items():
        for set_name, m in entry["sets"].items():
            acc = f"{m['accuracy']:.3f} ({m['correct']}/{m['scored']})" if "accuracy" in m else "-"
            runs = m.get("iterations", 1)
            lines.append(f"| {name} | {set_name} ({m['completed'] // runs}) | "
                         f"{_pm(m, 'requests_per_second')} | {_pm(m, 'output_throughput')} | "
                         f"{m['total_output_tokens'] // runs} | {_pm(m, 'mean_ttft_ms', 'std_ttft_ms')} |"
                         f" {_f(m.get('p99_tpot_ms'))} | {_pm(m, 'mean_e2el_ms', 'std_e2el_ms')} | {acc} |")
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
                  "better):", "", "| model | prompts | req/s ↑ | output tok/s ↑ | mean E2E ↓ | accuracy Δ ↑ |",
                  "|---|---|---|---|---|---|"]
        for name, row in comp["vs_baseline"].items():
            for set_name, r in row.items():
                if set_name == "attention_focus":
                    continue
                lines.append(f"| {name} | {set_name} | {_f(r['requests_per_second'])} | {_f(r['output_throughput'])} |"
                             f" {_f(r['mean_e2el_ms'])} | {_f(r.get('accuracy_delta'))} |")
            if "attention_focus" in row:
                a = row["attention_focus"]
                lines.append(f"| {name} | attention focus | {a['baseline']:.4f} → {a['model']:.4f} "
                             f"({a['relative_change']:+.2%}) | | | |")
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
    """Two panels: output tokens/s per model and prompt set; attention focus per model (when measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leaf.io import write_bytes_atomic

    models = results["models"]
    names = list(models)
    sets = sorted({s for e in models.values() for s in e["sets"]}, key=["original", "clean", "pruned", "random"].index)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(len(sets), 1)
    for k, set_name in enumerate(sets):
        values = [models[n]["sets"].get(set_name, {}).get("output_throughput", 0) for n in names]
        left.bar([i + k * width for i in range(len(names))], values, width, label=set_name)
    left.set_xticks([i + width * (len(sets) - 1) / 2 for i in range(len(names))], names, rotation=15)
    left.set_ylabel("output tokens / s")
    left.set_title("throughput")
    left.legend(fontsize=8, loc="lower right")
    focus = [models[n].get("attention_focus") for n in names]
    if any(focus):
        left_vals = [f["focus"] if f else 0 for f in focus]
        right.bar(names, left_vals, color="tab:green", label="focus")
        shares = [f["token_share"] if f else 0 for f in focus]
        right.plot(names, shares, "k--", marker="o", label="uniform attention")
        right.set_ylim(min(v for v in left_vals + shares if v) * 0.9, 1.0)
        right.set_ylabel("share off confounders")
        right.legend(fontsize=8, loc="lower right")
    else:
        right.text(0.5, 0.5, "no confounder spans in the data:\nattention focus not measured", ha="center",
                   va="center")
        right.set_axis_off()
    right.set_title("attention focus")
    figure.tight_layout()
    write_bytes_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
