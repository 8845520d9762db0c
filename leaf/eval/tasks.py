"""The benchmarks `leaf eval` runs: lm-evaluation-harness tasks pointed at a local copy of their dataset.

Each entry names an upstream lm-eval task (its YAML under lm_eval/tasks/) and how a leaf data file maps onto that
task's dataset fields. At run time `write_task` writes, into the output folder, the rows in the upstream dataset's
schema (`<task>.jsonl`) and a task YAML that `include:`s the upstream one and replaces only where the data comes from:

    include: /…/lm_eval/tasks/gsm8k/gsm8k-cot.yaml     # prompt, few-shot examples, answer extraction, metrics
    task: leaf_gsm8k_cot
    dataset_path: json                                # datasets' JSON builder on a local file: no hub
    dataset_name: null
    dataset_kwargs: {data_files: {test: /…/tasks/gsm8k_cot.jsonl}}
    test_split: test                                  # the only split (few-shot examples are inline upstream)

so the prompts, the answer extraction and the scores are lm-eval's own. Data files are what
recipes/prepare_data.py writes (`instruction`, `output`, `answer`), or rows already in the upstream schema (GSM8K's
`question` / `answer` with `#### N`; MATH's `problem` / `solution`). Imports neither lm-eval nor torch, so that the
command line can list the tasks.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from leaf.errors import LeafError

PREPARE = "python recipes/prepare_data.py --dataset {dataset} --split test --output {path}"
HARNESS_MISSING = ("`leaf eval` runs lm-evaluation-harness, which is not installed: pip install 'leaf-distill[eval]' "
                   "(from a checkout: pip install -c constraints.txt -e '.[eval]').")


def _gsm8k_row(row: dict) -> dict:
    """GSM8K's schema: `question`, and `answer` = the solution ending in `#### N` (the task's target is N)."""
    if "question" in row and "####" in str(row.get("answer", "")):
        return {"question": row["question"], "answer": row["answer"]}
    question, solution, answer = _prompt_solution_answer(row)
    return {"question": question, "answer": solution if "####" in solution else f"{solution}\n#### {answer}"}


def _math_row(row: dict) -> dict:
    """MATH's schema: `problem`, `solution` with the answer in its last \\boxed{} (the tasks read it from there)."""
    if "problem" in row and "\\boxed" in str(row.get("solution", "")):
        return {"problem": row["problem"], "solution": row["solution"]}
    problem, solution, answer = _prompt_solution_answer(row)
    if "\\boxed" not in solution:
        solution = f"{solution}\n\nThe final answer is $\\boxed{{{answer}}}$."
    return {"problem": problem, "solution": solution}


def _prompt_solution_answer(row: dict) -> tuple[str, str, str]:
    """A leaf data row (prepare_data.py: instruction / output / answer; or question / solution) as its three texts."""
    from leaf.answers import extract_answer
    from leaf.data import PROMPT_FIELDS, RESPONSE_FIELDS

    prompt = next((row[k] for k in PROMPT_FIELDS if row.get(k)), None)
    solution = next((row[k] for k in RESPONSE_FIELDS if row.get(k)), None)
    if prompt is None or solution is None:
        raise LeafError(f"A data row has no question or no solution: looked for {', '.join(PROMPT_FIELDS)} and "
                        f"{', '.join(RESPONSE_FIELDS)}; it has {', '.join(row)}. Write the file with "
                        "recipes/prepare_data.py.")
    answer = row.get("answer") or extract_answer(solution)
    if not answer:
        raise LeafError(f"A data row has no reference answer (no `answer` field, and none readable in its solution): "
                        f"{str(prompt)[:80]!r}.")
    return str(prompt), str(solution), str(answer)


def _antlr_411() -> str | None:
    """lm-eval's minerva_math scores with sympy's LaTeX parser, which needs the ANTLR 4.11 runtime."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("antlr4-python3-runtime")
    except PackageNotFoundError:
        found = "none"
    if found.startswith("4.11"):
        return None
    return (f"it runs lm-eval's minerva_math500, whose answer check (sympy's LaTeX parser) needs "
            f"antlr4-python3-runtime 4.11 (found {found}). leaf's environment keeps 4.13, because 4.11 changes "
            "math-verify's verdicts in leaf's own answer checker (tests/test_answers_math_verify.py); give 4.11 to "
            "this command only: pip install --no-deps --target .antlr411 antlr4-python3-runtime==4.11.0, then "
            "PYTHONPATH=.antlr411 leaf eval ... (or pip install 'lm-eval[math]' in an environment of its own). Or use "
            "--task hendrycks_math500 here.")


@dataclass(frozen=True)
class EvalTask:
    harness_task: str  # the upstream lm-eval task
    harness_yaml: str  # its YAML, relative to lm_eval/tasks/
    metric: str  # the headline entry of lm-eval's results (metric,filter), the table's number
    dataset: str  # prepare_data.py --dataset
    data_file: str  # the file prepare_data.py writes for it, in a --data folder
    to_harness: Callable[[dict], dict]  # a data row -> the upstream dataset's row
    describe: str
    missing: Callable[[], str | None] = lambda: None  # what the harness lacks to run it, if anything


_GSM8K = dict(dataset="gsm8k", data_file="gsm8k_test.jsonl", to_harness=_gsm8k_row)
_MATH500 = dict(dataset="math500", data_file="math500.jsonl", to_harness=_math_row)
TASKS: dict[str, EvalTask] = {
    "gsm8k_cot": EvalTask("gsm8k_cot", "gsm8k/gsm8k-cot.yaml", "exact_match,flexible-extract",
                          describe="GSM8K, 8-shot chain of thought", **_GSM8K),
    "gsm8k_cot_zeroshot": EvalTask("gsm8k_cot_zeroshot", "gsm8k/gsm8k-cot-zeroshot.yaml",
                                   "exact_match,flexible-extract", describe="GSM8K, zero-shot chain of thought",
                                   **_GSM8K),
    "gsm8k_cot_llama": EvalTask("gsm8k_cot_llama", "gsm8k/gsm8k-cot-llama.yaml", "exact_match,flexible-extract",
                                describe="GSM8K, 8-shot chain of thought in Meta's Llama 3 chat format", **_GSM8K),
    "math500": EvalTask("minerva_math500", "minerva_math/minerva_math500.yaml", "math_verify,none",
                        describe="MATH-500, 4-shot Minerva prompt, math-verify", missing=_antlr_411, **_MATH500),
    "hendrycks_math500": EvalTask("hendrycks_math500", "hendrycks_math/hendrycks_math500.yaml", "exact_match,none",
                                  describe="MATH-500, zero-shot, Hendrycks' answer match", **_MATH500),
}


def list_tasks() -> list[str]:
    return list(TASKS)


def get_task(name: str) -> EvalTask:
    if name not in TASKS:
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise LeafError(f"Unknown evaluation task {name!r}.{hint} Available: {', '.join(TASKS)}.")
    return TASKS[name]


def harness_root() -> Path:
    """lm_eval/tasks/ of the installed harness (LeafError with the install command when it is missing)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LeafError(HARNESS_MISSING)
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def data_files(tasks: list[str], data: list[Path]) -> dict[str, Path]:
    """Each task's data file: one --data folder holds every task's prepare_data.py file, or one file per task."""
    if len(data) == 1 and (data[0].is_dir() or not data[0].exists() and not data[0].suffix):  # a folder (to make)
        files = {name: data[0] / get_task(name).data_file for name in tasks}
    elif len(data) == len(tasks):
        files = dict(zip(tasks, data))
    else:
        raise LeafError(f"{len(data)} --data for {len(tasks)} --task: give one folder made by recipes/prepare_data.py "
                        "(its files are found by name), or one file per task in --task order.")
    for name, path in files.items():
        if not path.is_file():
            task = get_task(name)
            raise LeafError(f"Data file {str(path)!r} for --task {name} does not exist. Make it with: "
                            f"{PREPARE.format(dataset=task.dataset, path=path)}")
    return files


def write_task(name: str, data: Path, folder: Path) -> dict:
    """The local copy of `data` in the upstream schema and the task YAML that reads it, in `folder`; returns what
    the run records about the task."""
    from leaf.data import load_records
    from leaf.io import write_text_atomic
    from leaf.run_folder import file_digest

    task = get_task(name)
    upstream = harness_root() / task.harness_yaml
    if not upstream.is_file():
        raise LeafError(f"The installed lm-evaluation-harness has no {task.harness_yaml} (task {task.harness_task}): "
                        "install lm-eval 0.4.8 or newer (pip install 'leaf-distill[eval]').")
    records = load_records(data)
    rows = [task.to_harness(row) for row in records]
    copy = write_text_atomic(folder / f"{name}.jsonl",
                             "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    yaml_name = f"leaf_{name}"
    config = {"include": str(upstream), "task": yaml_name, "tag": ["leaf_eval"], "dataset_path": "json",
              "dataset_name": None, "dataset_kwargs": {"data_files": {"test": str(copy.resolve())}},
              "test_split": "test", "training_split": None, "validation_split": None, "fewshot_split": None}
    # only a test split exists: few-shot examples come from the upstream YAML (inline in every task here).
    # JSON is YAML: one line per key, and no PyYAML needed to write it
    write_text_atomic(folder / f"{yaml_name}.yaml", "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    return {"harness_task": task.harness_task, "harness_yaml": task.harness_yaml, "task": yaml_name,
            "metric": task.metric, "describe": task.describe, "data": str(data), "data_sha256": file_digest(data),
            "rows": len(rows), "local_copy": str(copy)}
