"""results.md of `leaf eval`: one table, models by name x tasks, with the paper's numbers beside them.

A recipe's `[recipe] paper_numbers` holds what the paper reports for its pairing, one table per model name:

    paper_numbers = { pre-kd = { math_avg = 42.85 }, kd = { math_avg = 60.38 }, leaf = { math_avg = 62.54 } }

A key that is a `leaf eval` task name (e.g. math500) lands in that task's column as "paper X"; other keys
(math_avg) get a column of their own. Rows the paper has and the run has not (leaf-instr) are listed too.
"""

from __future__ import annotations

from pathlib import Path

PAPER = "LeaF paper (arXiv 2506.07851), Pre-KD / KD w/o mask / LeaF"
PAPER_COLUMNS = {"math_avg": "paper: math avg (GSM8K, MATH, OlympiadBench)",
                 "code_avg": "paper: code avg (HumanEval+, LeetCode, LiveCodeBench)"}


def paper_numbers(recipe: Path) -> dict:
    """The paper's numbers for the recipe's pairing: {"source", "rows": {name: {key: number}}} (rows may be empty:
    nothing published for that pairing)."""
    from leaf.errors import LeafError
    from leaf.recipes import read_recipe

    numbers = (read_recipe(recipe).get("recipe") or {}).get("paper_numbers") or {}
    if not isinstance(numbers, dict) or not all(isinstance(v, dict) for v in numbers.values()):
        raise LeafError(f"[recipe] paper_numbers in {recipe} must map model names to tables of numbers, e.g. "
                        "paper_numbers = { pre-kd = { math_avg = 42.85 } }.")
    return {"source": str(recipe), "rows": numbers}


def _percent(score: dict | None) -> str:
    if not score or score.get("score") is None:
        return "–"
    text = f"{100 * score['score']:.1f}"
    return text + (f" ± {100 * score['stderr']:.1f}" if score.get("stderr") is not None else "")


def format_table(results: dict) -> str:
    """The table (rows: models by name, then paper-only rows; columns: tasks, then paper figures) and its notes."""
    tasks, settings = results["tasks"], results["settings"]
    paper = (results.get("paper") or {}).get("rows") or {}
    extra = sorted({key for row in paper.values() for key in row if key not in tasks})
    header = [f"{name} ↑" for name in tasks] + [f"{PAPER_COLUMNS.get(key, f'paper: {key}')} ↑" for key in extra]
    lines = ["| model | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    measured = {model["name"]: model["tasks"] for model in results["models"]}
    for name in [*measured, *(n for n in paper if n not in measured)]:
        row = paper.get(name, {})
        cells = [_percent(measured.get(name, {}).get(task)) + (f" (paper {row[task]})" if task in row else "")
                 for task in tasks]
        cells += [str(row[key]) if key in row else "–" for key in extra]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    template = "each model's chat template, few-shot examples as turns" if settings["chat_template"] else \
        "no chat template"
    notes = [f"# leaf eval: {results['harness']['name']} {results['harness']['version']}", "",
             f"Greedy, {template}, at most {settings['max_tokens']} new tokens, lm-eval's {settings['backend']} "
             f"backend ({settings['device']}, {settings['dtype']}): the same settings for every model. Scores in % "
             "± standard error, as lm-eval reports them.", "", *lines, ""]
    for name, task in tasks.items():
        n = {str(scores[name]["n"]) for scores in measured.values()} or {"–"}
        notes.append(f"- {name}: {task['describe']} (lm-eval {task['harness_task']}, {task['metric']}); "
                     f"n = {', '.join(sorted(n))} of {task['rows']} rows in {task['data']}")
    if results.get("paper") is not None:
        source = results["paper"]["source"]
        notes.append(f"- paper: {PAPER}, its own evaluation (not lm-eval): compare the ordering, not the digits; "
                     f"from {source}" if paper else f"- paper: no published numbers for this pairing ({source})")
    return "\n".join(notes) + "\n"
