"""The merge of `leaf analyze`: every window's part into the final files (samples.jsonl, scores.safetensors,
summary.json written last, report.html), and the summary tables printed at the end.

Needs no model: `leaf analyze --merge DIR` runs it on its own (e.g. after the processes of a sharded run finished
on different machines).
"""

from __future__ import annotations

import json
from pathlib import Path

from leaf.analyze.parts import read_counts, read_parts, window_done
from leaf.analyze.teacher_scores import INDEX, KIND, SCORES, TOKENIZER
from leaf.errors import LeafError
from leaf.io import save_safetensors_atomic, write_json_atomic, write_text_atomic
from leaf.records import SAMPLES, SCHEMA_VERSION, digest, parse_samples, samples_text


def merge_output(output: Path, *, wall_seconds: float | None = None) -> dict:
    """Merge the part files of an analyze folder into its final files, in sample order; return the summary.

    Needs no model: `leaf analyze --merge DIR` runs it on its own (e.g. after the processes of a sharded run
    finished on different machines). Every window must be done."""
    output = Path(output)
    try:
        run_info = json.loads((output / "parts" / "run.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise LeafError(f"{output} holds no analyze parts to merge (no parts/run.json). Give the --output folder of "
                        "a `leaf analyze` run.") from None
    missing = [w for w in range(run_info["windows"]) if not window_done(output, w)]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise LeafError(f"{len(missing)} of {run_info['windows']} windows of {output} are not finished (windows "
                        f"{shown}). Finish them with the same `leaf analyze` command and --resume, then merge.")
    config = run_info["config"]  # as recorded: not re-validated (the merge needs no model, vLLM or data)
    parts = read_counts(output, run_info["windows"])
    timing = {"processes": run_info["processes"], "wall_seconds": wall_seconds,
              "window_seconds": sum(p["seconds"] for p in parts),
              "samples_this_run": sum(p["samples"] for p in parts if p["finished"] >= run_info["started"])}
    timing["samples_per_second"] = (timing["samples_this_run"] / wall_seconds) if wall_seconds else None
    if config.get("teacher_only"):
        return _merge_teacher_scores(output, run_info, parts, timing)
    return _merge_analysis(output, config, run_info, parts, timing)


def _merge_teacher_scores(output: Path, run_info: dict, parts: list, timing: dict) -> dict:
    texts, tensors = read_parts(output, run_info["windows"])
    records = [json.loads(line) for text in texts for line in text.splitlines()]
    for record in records:  # the store keeps what a lookup needs, not the texts
        for name in ("text", "prompt", "response"):
            record.pop(name, None)
    save_safetensors_atomic(output / SCORES, tensors)
    write_text_atomic(output / INDEX, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    counts = {"samples": run_info["samples"], "scored": sum(r["status"] == "ok" for r in records),
              "skipped_too_long": sum(p["counts"]["skipped_too_long"] for p in parts), "scores": len(tensors)}
    summary = {"kind": KIND, "output": str(output), "counts": counts, "models": run_info["models"],
               "teacher_max_length": run_info["teacher_max_length"], "notes": run_info["notes"],
               "config": run_info["config"], "versions": run_info["versions"], "command": run_info["command"],
               "timing": timing}
    write_json_atomic(output / "summary.json", summary)
    return summary


def _merge_analysis(output: Path, config: dict, run_info: dict, parts: list, timing: dict) -> dict:
    from leaf.analyze.report import write_report
    from leaf.gold import DetectionCounts

    notes = list(run_info["notes"])
    texts, tensors = read_parts(output, run_info["windows"])
    records = [s for w, text in enumerate(texts) for s in parse_samples(text, f"window {w} of {output}")]
    counts = {"samples": run_info["samples"], "analysed": 0, "skipped_too_long": 0, "filtered_selection": 0,
              "units": 0, "candidate_tokens": 0, "flagged_tokens": 0, "spans": 0, "counterfactuals": 0,
              "counterfactuals_dropped": 0}
    tables: dict[str, dict[str, DetectionCounts]] = {"detection": {}, "detection_exact": {}}
    for part in parts:
        for key, value in part["counts"].items():
            counts[key] = counts.get(key, 0) + value
        for name, table in tables.items():
            for mode, values in part[name].items():
                acc = table.setdefault(mode, DetectionCounts())
                for key, value in values.items():
                    if isinstance(value, int):
                        setattr(acc, key, getattr(acc, key) + value)
    thresholds = []
    for record in records:
        if not record.analysed:
            continue
        counts["analysed"] += 1
        for unit in record.units:
            counts["units"] += 1
            counts["candidate_tokens"] += len(unit.tokens)
            counts["flagged_tokens"] += sum(t.flag for t in unit.tokens)
            counts["spans"] += len(unit.spans)
            counts["counterfactuals"] += len(unit.counterfactuals)
            if unit.threshold is not None:
                thresholds.append(unit.threshold)
    if counts["units_without_target"]:
        notes.append(f"{counts['units_without_target']} analysis unit(s) had no token wholly inside their "
                     "loss span (e.g. a one-segment response at response level) and were skipped")
    if counts["no_reference_answer"]:
        notes.append(f"{counts['no_reference_answer']} sample(s) had no reference answer to check "
                     "--select against (give --answer-field); they were filtered out")
    if counts.get("counterfactuals_unparsable"):
        kept = config.get("unparsable") == "keep"
        notes.append(f"{counts['counterfactuals_unparsable']} code counterfactual(s) no longer parsed after pruning "
                     + ("and were kept (--unparsable keep; marked parses: false)" if kept else
                        "and were dropped (--unparsable keep keeps them, marked parses: false)"))
    bad_rows = run_info.get("bad_rows") or []
    counts["skipped_bad_row"] = len(bad_rows)
    if bad_rows:
        notes.append(f"{len(bad_rows)} row(s) of the data could not be samples and were skipped (bad_rows lists each "
                     f"with its reason; --strict stops at the first): first, row {bad_rows[0]['row']}: "
                     f"{bad_rows[0]['reason']}")
    if counts["analysed"] == 0:
        notes.append("no sample was analysed: see the counts above")
    if counts["skipped_too_long"]:
        notes.append(f"{counts['skipped_too_long']} sample(s) longer than a model's context were skipped, "
                     "not truncated (status skipped_too_long in samples.jsonl)")
    text = samples_text(records)
    write_text_atomic(output / SAMPLES, text)
    save_safetensors_atomic(output / "scores.safetensors", tensors)
    summary = {  # written after the files it describes: its presence marks a finished run (leaf.records)
        "output": str(output), "schema": SCHEMA_VERSION, "counts": counts,
        "files": {SAMPLES: {"records": len(records), "sha256": digest(text)},
                  "scores.safetensors": {"tensors": len(tensors)}},
        "threshold": {"mode": config["threshold"], "tau": config["tau"], "quantile": config["quantile"],
                      "baseline_count": config["baseline_count"],
                      "mean_applied": sum(thresholds) / len(thresholds) if thresholds else None},
        "detection": {mode: c.metrics() for mode, c in tables["detection"].items()} or None,
        "detection_exact": {mode: c.metrics() for mode, c in tables["detection_exact"].items()} or None,
        "models": run_info["models"], "notes": notes, "config": run_info["config"], "bad_rows": bad_rows,
        "versions": run_info["versions"], "command": run_info["command"], "timing": timing,
    }
    write_json_atomic(output / "summary.json", summary)
    write_report(output / "report.html", records[: config["report_samples"]], summary)
    return summary


def _unparsable(summary: dict) -> str:
    count = summary["counts"].get("counterfactuals_unparsable")
    if not count:
        return ""
    kept = summary["config"].get("unparsable") == "keep"
    return f"; code that no longer parses: {count}, {'kept' if kept else 'dropped'}"


def format_summary(summary: dict) -> str:
    """The table printed at the end of `leaf analyze`."""
    c = summary["counts"]
    lines = [f"analysed {c['analysed']} of {c['samples']} samples "
             f"(skipped too long: {c['skipped_too_long']}, filtered by selection: {c['filtered_selection']}"
             + (f"; unreadable rows skipped: {c['skipped_bad_row']}" if c.get("skipped_bad_row") else "") + ")",
             f"units {c['units']}, flagged tokens {c['flagged_tokens']} of {c['candidate_tokens']} candidates, "
             f"spans {c['spans']}, counterfactuals {c['counterfactuals']} (dropped by verification: "
             f"{c['counterfactuals_dropped']}" + _unparsable(summary) + ")"]
    if summary["config"].get("domain") == "code":
        lines.append(f"code settings: quantile {summary['config']['quantile']}, answer prefix "
                     f"{summary['config']['answer_prefix']}, statement-end segments, parse check of counterfactuals")
    for key, title in (("detection", "all samples with gold"), ("detection_exact", "samples whose gold is exact")):
        detection = summary.get(key)
        if not detection:
            continue
        n = next(iter(detection.values()))["samples"]
        lines.append(f"\ndetection, {title} ({n}):")
        lines.append(f"{'mode':<10} {'tok P':>6} {'tok R':>6} {'tok F1':>6} {'span P':>6} {'span R':>6} "
                     f"{'span F1':>7} {'pruned F1':>9} {'distr. numbers removed':>22}")
        for mode, m in detection.items():
            numbers = (m.get("distractors") or {}).get("numbers_removed")
            pruned = m.get("pruned", m["token"])["f1"]
            lines.append(f"{mode:<10} {m['token']['precision']:>6.3f} {m['token']['recall']:>6.3f} "
                         f"{m['token']['f1']:>6.3f} {m['span']['precision']:>6.3f} {m['span']['recall']:>6.3f} "
                         f"{m['span']['f1']:>7.3f} {pruned:>9.3f} "
                         f"{'-' if numbers is None else format(numbers, '.3f'):>22}")
    lines.append(f"\nwrote {summary['output']}/samples.jsonl, scores.safetensors, summary.json, report.html")
    return "\n".join(lines)


def format_teacher_scores_summary(summary: dict) -> str:
    """What `leaf analyze --teacher-only` prints at the end."""
    c = summary["counts"]
    return (f"teacher scores of {c['scored']} of {c['samples']} samples ({c['scores']} losses; skipped too long: "
            f"{c['skipped_too_long']}) from {summary['models']['teacher']['name']}\n"
            f"wrote {summary['output']}/{SCORES}, {INDEX}, {TOKENIZER}/, summary.json; reuse them with "
            f"`leaf analyze --teacher-scores {summary['output']} --student S ...`")
