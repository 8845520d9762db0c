"""The demo's results over seeds: accuracy with intervals, the paired comparisons and the verdict they imply, the power
of the comparison, the detection tables; RESULTS.md and accuracy.png.

Intervals are hierarchical paired bootstraps over test problems and seeds (leaf.demo.stats). The verdict follows the
order the experiment was designed in: first whether perfect counterfactuals (the oracle) beat KD at all, then
whether gradient-detected ones beat KD and random masks with as many flags.
"""

from __future__ import annotations

from pathlib import Path

from leaf.demo.stats import (Interval, accuracy_interval, detectable_difference, discordance, items_needed,
                             paired_interval, seed_variance)

# (setting, baseline) pairs whose paired difference the report gives, on distractor and on clean problems, besides
# every trained setting against KD w/o mask
COMPARISONS = (
    ("LeaF instr", "Random mask"), ("LeaF instr", "PPL mask"), ("LeaF instr", "Oracle"),
    ("LeaF instr+resp", "LeaF instr"), ("LeaF collective", "LeaF instr"), ("KD 2x batch", "KD w/o mask"),
    ("LeaF instr", "KD 2x batch"), ("LeaF instr+resp", "KD 2x batch"), ("Oracle", "KD 2x batch"),
)
TARGET_DIFFERENCE = 0.02  # the paired difference the experiment should detect (2 points)


def aggregate(per_seed: list[dict], outcomes: list[dict]) -> dict:
    """Accuracy intervals per setting, paired comparisons, power, and the verdict. A setting that was skipped in any
    seed (no counterfactual survived verification) keeps its row, marked, and the comparisons it was in are listed
    as not made."""
    order = list(dict.fromkeys(n for p in per_seed for n in p.get("names", [])) or outcomes[0])
    names = [n for n in order if all(n in o for o in outcomes)]
    table, skipped = {}, {}
    for name in order:
        seeds = [p["seed"] for p in per_seed if p["rows"].get(name, {}).get("skipped")]
        if name not in names:
            reason = next((p["rows"][name]["skipped"] for p in per_seed if p["rows"].get(name, {}).get("skipped")),
                          "not run")
            skipped[name] = f"skipped ({reason})" + (f" in seed(s) {', '.join(map(str, seeds))}"
                                                     if len(per_seed) > 1 else "")
            table[name] = {"skipped": skipped[name]}
            continue
        row = {f"{s}_accuracy": accuracy_interval([o[name][s] for o in outcomes]).as_json()
               for s in ("distractor", "clean")}
        for key in ("forward_tokens", "counterfactuals", "samples_with_counterfactual"):
            values = [p["rows"].get(name, {}).get(key) for p in per_seed]
            row[key] = sum(values) / len(values) if all(v is not None for v in values) else None
        kl = [p["rows"].get(name, {}).get("first_step_kl") for p in per_seed]
        if all(kl):
            row["first_step_kl"] = {term: _mean([k.get(term) for k in kl])
                                    for term in ("original", "counterfactual", "counterfactual_step")}
        focus = [p["rows"].get(name, {}).get("focus") for p in per_seed]
        if all(focus):
            row["focus_chosen_head"] = _mean([f.get("chosen_head") for f in focus])
            row["focus_overall"] = _mean([f["overall"] for f in focus])
        table[name] = row
    comparisons, not_made = {}, {}
    against_kd = [(n, "KD w/o mask") for n in order if n not in ("Pre-KD", "KD w/o mask", "Teacher")]
    for a, b in [*against_kd, *COMPARISONS]:
        if a in names and b in names:
            comparisons[f"{a} vs {b}"] = {
                s: paired_interval([o[a][s] for o in outcomes], [o[b][s] for o in outcomes], seed=len(comparisons)
                                   ).as_json() for s in ("distractor", "clean")}
        elif a in skipped or b in skipped:
            missing = a if a in skipped else b
            not_made[f"{a} vs {b}"] = f"{missing} {skipped[missing]}"
    return {"table": table, "comparisons": comparisons, "not_compared": not_made, "power": power(outcomes),
            "verdict": verdict(comparisons, table, not_made)}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def power(outcomes: list[dict], a: str = "LeaF instr", b: str = "KD w/o mask") -> dict | None:
    """What this run could detect: the paired discordance of LeaF instr vs KD, the smallest difference detectable
    (80% power, α = 0.05) with these seeds and test problems, and the test problems per seed needed for 2 points
    with 5 seeds."""
    if not all(a in o and b in o for o in outcomes):
        return None
    xs, ys = [o[a]["distractor"] for o in outcomes], [o[b]["distractor"] for o in outcomes]
    disc, between = discordance(xs, ys), seed_variance(xs, ys)
    seeds, items = len(xs), len(xs[0])
    return {"comparison": f"{a} vs {b}", "discordance": disc, "between_seed_variance": between, "seeds": seeds,
            "items_per_seed": items, "detectable_difference": detectable_difference(disc, items, seeds, between),
            "items_needed_5_seeds": items_needed(TARGET_DIFFERENCE, disc, 5, between),
            "target_difference": TARGET_DIFFERENCE}


def _interval(comparisons: dict, name: str, subset: str = "distractor") -> Interval | None:
    entry = comparisons.get(name)
    if not entry:
        return None
    j = entry[subset]
    return Interval(j["mean"], j["low"], j["high"], j["level"], j["seeds"], j["items"])


def compute_claim(table: dict) -> str | None:
    """What the 2x-batch KD row is, read off the compute column (tokens through the student's forward passes): an
    upper bound on every counterfactual row's compute, or short of the rows it names. None without both KD rows."""
    kd = (table.get("KD w/o mask") or {}).get("forward_tokens")
    double = (table.get("KD 2x batch") or {}).get("forward_tokens")
    if not kd or not double:
        return None
    ratio = double / kd
    rows = {n: r["forward_tokens"] / kd for n, r in table.items() if r.get("counterfactuals") and r.get("forward_tokens")}
    if not rows:
        return f"KD 2x batch ({ratio:.2f}x KD's tokens)"
    above = [n for n, v in rows.items() if v > ratio]
    if not above:
        top = max(rows, key=rows.get)
        return (f"KD 2x batch ({ratio:.2f}x KD's tokens through the student; the most of any counterfactual row is "
                f"{top}'s {rows[top]:.2f}x: an upper bound on every LeaF row's compute)")
    return (f"KD 2x batch ({ratio:.2f}x KD's tokens, fewer than " + ", ".join(f"{n}'s {rows[n]:.2f}x" for n in above)
            + ": not an upper bound on those rows' compute)")


def verdict(comparisons: dict, table: dict | None = None, not_compared: dict | None = None) -> str:
    """Plain sentences from the intervals, in the experiment's order: oracle vs KD, then gradient vs KD and random;
    the compute control as the compute column allows; every key comparison a skipped setting prevented."""
    table, not_compared = table or {}, not_compared or {}
    lines = []
    oracle = _interval(comparisons, "Oracle vs KD w/o mask")
    leaf_kd = _interval(comparisons, "LeaF instr vs KD w/o mask")
    leaf_random = _interval(comparisons, "LeaF instr vs Random mask")
    matched = _interval(comparisons, "LeaF instr vs KD 2x batch")
    control = compute_claim(table) or "KD 2x batch"
    upper_bound = "an upper bound" in control
    word = {"better": "beats", "worse": "falls behind", "tie": "is not distinguishable from"}
    if oracle is not None:
        lines.append(f"Oracle counterfactuals (the true distractors removed) − KD on distractor problems: "
                     f"{oracle.points()} points: the oracle {word[oracle.verdict()]} KD.")
        if oracle.verdict() != "better":
            lines.append("Perfect counterfactuals do not help here, so the counterfactual term has nothing to teach "
                         "in this task: a difference between gradient-LeaF and KD cannot be credited to focus.")
    if leaf_kd is not None:
        lines.append(f"LeaF instr (gradient masks) − KD: {leaf_kd.points()}: LeaF {word[leaf_kd.verdict()]} KD.")
    if leaf_random is not None:
        plural = {"better": "beat", "worse": "fall behind", "tie": "are not distinguishable from"}
        lines.append(f"LeaF instr − random masks with as many flags: {leaf_random.points()}: gradient masks "
                     f"{plural[leaf_random.verdict()]} random ones.")
    if matched is not None:
        lines.append(f"LeaF instr − {control}: {matched.points()}.")
    both = _interval(comparisons, "LeaF instr+resp vs KD w/o mask")
    both_matched = _interval(comparisons, "LeaF instr+resp vs KD 2x batch")
    if both is not None:
        lines.append(f"LeaF instr+resp − KD: {both.points()}" + (
            f"; − KD 2x batch: {both_matched.points()}." if both_matched else "."))
    key = ("Oracle vs KD w/o mask", "LeaF instr vs KD w/o mask", "LeaF instr vs Random mask",
           "LeaF instr vs KD 2x batch")
    for name in key:
        if name in not_compared:
            lines.append(f"Not compared: {name} ({not_compared[name]}).")
    if leaf_kd is not None and leaf_random is not None:
        wins = leaf_kd.verdict() == "better" and leaf_random.verdict() == "better"
        if wins and (oracle is None or oracle.verdict() == "better"):
            lines.append("Verdict: LeaF beats KD and random masks here, with intervals that exclude zero" + (
                "." if matched is None or matched.verdict() == "better" else
                ", but not KD with twice the batch" + (" (at least LeaF's compute)" if upper_bound else "")
                + ": part of the gain may be compute."))
        elif wins:
            lines.append("Verdict: LeaF beats KD and random masks here although the oracle does not beat KD: the "
                         "gain does not come from removing the distractors (see compute and the clean column).")
        else:
            lines.append("Verdict: no evidence here that gradient-guided pruning beats KD and random masks "
                         "(a positive result needs both intervals above zero).")
    else:
        lines.append("Verdict: not reached: it needs LeaF instr against both KD and random masks.")
    lines.append("Intervals: 95% paired bootstrap over test problems and seeds; every figure comes from this run.")
    return " ".join(lines)


def _acc(entry: dict | None) -> str:
    if not entry:
        return "-"
    return f"{100 * entry['mean']:.1f} [{100 * entry['low']:.1f}, {100 * entry['high']:.1f}]"


def _diff(comparisons: dict, name: str, subset: str = "distractor") -> str:
    interval = _interval(comparisons, name, subset)
    return interval.points() if interval else "-"


def results_markdown(results: dict) -> str:
    table, comparisons = results["table"], results["comparisons"]
    per_seed = results["per_seed"]
    seeds = len(per_seed)
    items = next(r for r in table.values() if "distractor_accuracy" in r)["distractor_accuracy"]["items"] // seeds
    kd_tokens = (table.get("KD w/o mask") or {}).get("forward_tokens")
    lines = ["# leaf demo results", "",
             f"Embedded distractor task, {seeds} seed(s) x {items} test problems (distractor problems and their clean "
             f"twins); engine: {per_seed[0]['engine']}; preset: {results['preset']}. Accuracy in % with 95% bootstrap "
             "intervals over problems and seeds; differences are paired (same student, data, steps and test "
             "problems). Compute = tokens through the student's forward passes, relative to KD.", "",
             "| setting | distractor acc | clean acc | distractor − KD | clean − KD | distractor − random | compute |"
             " counterfactuals | focus (chosen head) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        if "skipped" in row:
            lines.append(f"| {name} | {row['skipped']} |" + " - |" * 7)
            continue
        vs_kd = _diff(comparisons, f"{name} vs KD w/o mask")
        vs_kd_clean = _diff(comparisons, f"{name} vs KD w/o mask", "clean")
        vs_random = _diff(comparisons, f"{name} vs Random mask") if name.startswith("LeaF") else "-"
        tokens = row.get("forward_tokens")
        compute = f"{tokens / kd_tokens:.2f}x" if tokens and kd_tokens else "-"
        cfs = f"{row['counterfactuals']:.0f}" if row.get("counterfactuals") else "-"
        focus = f"{row['focus_chosen_head']:.3f}" if row.get("focus_chosen_head") is not None else "-"
        lines.append(f"| {name} | {_acc(row['distractor_accuracy'])} | {_acc(row['clean_accuracy'])} | {vs_kd} | "
                     f"{vs_kd_clean} | {vs_random} | {compute} | {cfs} | {focus} |")
    lines += ["", "Paired differences on distractor problems (points, 95% interval):", ""]
    lines += [f"- {name}: {_diff(comparisons, name)} (clean: {_diff(comparisons, name, 'clean')})"
              for name in comparisons]
    lines += [f"- {name}: not compared ({why})" for name, why in (results.get("not_compared") or {}).items()]
    lines += ["", results["verdict"], ""]
    lines += _first_step_kl(table)
    p = results.get("power")
    if p:
        needed = p["items_needed_5_seeds"]
        caveat = ""
        if p["seeds"] == 1:
            # one seed cannot measure the between-seed variance; say what a modest one would do, from the formula
            sampling = p["discordance"] / p["items_per_seed"]
            doubled = detectable_difference(p["discordance"], p["items_per_seed"], 1, sampling)
            caveat = (" (one seed measures no variation between seeds: these figures assume none; if the seeds' "
                      "differences varied as much as one seed's sampling error, the detectable difference would be "
                      f"{100 * doubled:.1f} points: run --seeds 2 or more to measure it)")
        lines += [f"Power: {p['comparison']} disagree on {100 * p['discordance']:.1f}% of problems; with {p['seeds']} "
                  f"seed(s) x {p['items_per_seed']} problems a true difference of "
                  f"{100 * p['detectable_difference']:.1f} points is detected 80% of the time (α = 0.05). A 2-point "
                  "difference with 5 seeds needs " + (f"{needed} problems per seed" if needed is not None else
                                                       "more seeds (the seeds disagree too much)") + caveat + ".", ""]
    lines += _detection_tables(per_seed)
    s0 = per_seed[0]
    sel = s0["selection"]
    head = s0["head"]
    lines += ["", *_run_facts(results)]
    lines += ["", f"Seed {s0['seed']}: {sel['analysed']} of {sel['pool']} pool problems selected (teacher right, "
              f"student wrong), {sel['clean_mixed_in']} clean problems mixed into the distillation originals; "
              f"{sel['counterfactuals_kept']} instruction counterfactuals kept, {sel['counterfactuals_dropped']} "
              f"dropped by verification. Detection rule used: {s0['variant']}. Attention head chosen on validation: "
              f"layer {head['layer']}, head {head['head']} (share on the distractors {head['wrong_share']:.3f} on "
              f"problems the student got wrong vs {head['right_share']:.3f} on those it got right)."]
    return "\n".join(lines) + "\n"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:.0f} s"


def _first_step_kl(table: dict) -> list[str]:
    """The loss terms at each setting's first distillation step (mean over seeds), from distill's log.jsonl."""
    rows = [(n, r["first_step_kl"]) for n, r in table.items() if r.get("first_step_kl")]
    if not rows:
        return []
    lines = ["The loss terms as distillation starts (nats per response token; mean over seeds; from each run's "
             "log.jsonl): KL on the originals at step 1 (before any update), and on the counterfactuals the setting "
             "pairs with them at the first step whose batch held one (that step, mean over seeds).",
             "", "| setting | KL originals, step 1 | KL counterfactuals | at step |", "|---|---|---|---|"]
    for name, kl in rows:
        cf = f"{kl['counterfactual']:.4f}" if kl.get("counterfactual") is not None else "-"
        at = f"{kl['counterfactual_step']:.1f}" if kl.get("counterfactual_step") is not None else "-"
        lines.append(f"| {name} | {kl['original']:.4f} | {cf} | {at} |")
    return [*lines, ""]


def _run_facts(results: dict) -> list[str]:
    """Model sizes, the splits, and the time of every stage (as each last ran) with their total."""
    per_seed = results["per_seed"]
    s0 = per_seed[0]
    lines = []
    params = s0.get("parameters")
    if params:
        lines.append(f"Parameters: teacher {params['teacher']:,}, student {params['student']:,}.")
    splits = s0.get("splits")
    if splits:
        seen = splits.get("test_seen_by_teacher")
        lines.append(f"Splits (seed {s0['seed']}): {splits['test']} test, {splits['validation']} validation, "
                     f"{splits['pool']} pool problems; the pool and the student's pre-training problems hold no test "
                     "or validation problem, as posed or as its clean twin" + (
                         f"; the shipped teacher's training problems hold {seen['distractor']} of the test problems "
                         f"as posed and {seen['clean_twin']} of their clean twins" if seen else "") + ".")
    stages: dict[str, float] = {}
    for p in per_seed:
        for name, value in p["timing"].items():
            stages[name] = stages.get(name, 0.0) + value
    total = sum(stages.values())
    lines.append(f"Time per stage over {len(per_seed)} seed(s) (each as it last ran, on this machine): "
                 + ", ".join(f"{k} {_minutes(v)}" for k, v in stages.items())
                 + f"; all stages {_minutes(total)}; this invocation {_minutes(results['seconds'])}.")
    return lines


def _detection_tables(per_seed: list[dict]) -> list[str]:
    s0 = per_seed[0]
    lines = [f"Detection rules on the validation split (seed {s0['seed']}; selected problems, instruction level; "
             "token P/R/F1 of the flags and of what is pruned, against the true distractor tokens; per distractor: "
             "touched, all its numbers removed, its person's name removed, wholly removed; span precision = share of "
             "pruned spans that overlap a distractor; counterfactuals kept / dropped by verification):", "",
             "| rule | flags P / R / F1 | pruned P / R / F1 | span P | touched | numbers removed | person removed "
             "| removed | kept / dropped |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, m in s0["detection_validation"].items():
        used = " (used)" if name == s0["variant"] else ""
        span_p = f"{100 * m['span']['precision']:.1f}" if m.get("span") else "-"
        lines.append(f"| {name}: {m['label']}{used} | {_prf(m.get('token'))} | {_prf(m.get('pruned'))} | {span_p} | "
                     f"{_share(m, 'touched')} | {_share(m, 'numbers_removed')} | {_share(m, 'person_removed')} | "
                     f"{_share(m, 'removed')} | {m['counterfactuals_kept']} / {m['counterfactuals_dropped']} |")
    pool = s0.get("pool_detection") or {}
    if pool:
        lines += ["", f"On the selected pool problems with the rule used, every mode (seed {s0['seed']}; random and "
                  "ppl flag as many as the rule):", "", "| mode | flags P / R / F1 | pruned P / R / F1 | numbers removed |",
                  "|---|---|---|---|"]
        for mode, m in pool.items():
            lines.append(f"| {mode} | {_prf(m.get('token'))} | {_prf(m.get('pruned'))} | "
                         f"{_share(m, 'numbers_removed')} |")
    return lines


def _prf(m: dict | None) -> str:
    if not m:
        return "-"
    return f"{100 * m['precision']:.1f} / {100 * m['recall']:.1f} / {100 * m['f1']:.1f}"


def _share(m: dict, key: str) -> str:
    value = (m.get("distractors") or {}).get(key)
    return "-" if value is None else f"{100 * value:.1f}%"


def plot_results(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leaf.io import write_bytes_atomic

    table = results["table"]
    names = [n for n in table if "distractor_accuracy" in table[n]]
    figure, axis = plt.subplots(figsize=(12, 4.5))
    width = 0.38
    for k, (key, label) in enumerate((("distractor_accuracy", "distractor"), ("clean_accuracy", "clean twin"))):
        means = [100 * table[n][key]["mean"] for n in names]
        low = [100 * (table[n][key]["mean"] - table[n][key]["low"]) for n in names]
        high = [100 * (table[n][key]["high"] - table[n][key]["mean"]) for n in names]
        axis.bar([i + k * width for i in range(len(names))], means, width, yerr=[low, high], label=label, capsize=3)
    axis.set_xticks([i + width / 2 for i in range(len(names))], names, rotation=20, ha="right")
    axis.set_ylabel("accuracy (%)")
    axis.set_title("leaf demo: greedy accuracy with 95% bootstrap intervals")
    axis.legend()
    figure.tight_layout()
    write_bytes_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)


CLOSING = """What this shows: a student trained on clean problems is misled by distractor sentences; its teacher is not.
leaf analyze found the tokens the student leans on and the teacher ignores (detection tables above), and leaf distill
taught the student on originals and on counterfactuals with those tokens pruned (LeaF rows), with random, perplexity
or perfect (oracle) masks instead (controls), or on originals only (KD rows); the verdict reads the intervals.
Open {output}/RESULTS.md, {output}/accuracy.png, {output}/serve.png and {output}/analyze_report.html.

The same pipeline on real models (GPUs; see docs/gpu.md):
  leaf analyze --teacher Qwen/Qwen2.5-7B-Instruct --student Qwen/Qwen2.5-Math-1.5B --data train.jsonl \
      --output runs/analyze --select --device cuda --dtype bfloat16
  accelerate launch --config_file configs/accelerate/ddp.yaml -m leaf distill --teacher Qwen/Qwen2.5-7B-Instruct \
      --student Qwen/Qwen2.5-Math-1.5B --data runs/analyze --output runs/distill --device cuda --dtype bfloat16
  leaf serve --model Qwen/Qwen2.5-Math-1.5B --model runs/distill/final --data runs/analyze --output runs/serve \
      --device cuda --dtype bfloat16
Ready run files for the paper's pairings and a budget one: recipes/ (leaf analyze --config recipes/NAME.toml).
Which layers, heads and tokens carry a distractor: leaf inspect --analyze {output}/seed-0/analyze --output {output}/inspect"""


def closing_text(output: Path) -> str:
    """What `leaf demo` prints at the end: RESULTS.md, what it shows, and the same pipeline on real models."""
    return f"{(Path(output) / 'RESULTS.md').read_text()}\n{CLOSING.format(output=output)}"
