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


def _code_fields(row: dict, needed: tuple[str, ...], dataset: str) -> None:
    """A code row must hold its tests (valid Python) and the fields the harness's prompt reads."""
    from leaf.programs import has_tests, tests_of

    where = f"row {row.get('task_id', row.get('id', '?'))!r}"
    if not has_tests(row):
        raise LeafError(f"Code {where} has no tests (looked for tests, test, test_list, test_cases): it cannot be "
                        f"graded. Make the file with {PREPARE.format(dataset=dataset, path='FILE')}.")
    tests_of(row, where)
    missing = [name for name in needed if row.get(name) in (None, "", [])]
    if missing:
        raise LeafError(f"Code {where} lacks {', '.join(missing)}, which this task's prompt reads. Make the file "
                        f"with {PREPARE.format(dataset=dataset, path='FILE')}.")


def _humaneval_row(row: dict) -> dict:
    """HumanEval(+)'s schema: the function stub `prompt`, `test` (def check(candidate)), `entry_point`."""
    _code_fields(row, ("prompt", "test", "entry_point"), "humaneval")
    keys = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    return {k: row.get(k, "") for k in keys}


def _mbpp_row(row: dict) -> dict:
    """MBPP's schema: `text`, reference `code`, three or more `test_list` asserts, `test_setup_code`."""
    row = {**row, "text": row.get("text") or row.get("prompt")}
    _code_fields(row, ("text", "test_list"), "mbpp")
    if not isinstance(row["test_list"], list) or len(row["test_list"]) < 3:
        raise LeafError(f"MBPP row {row.get('task_id', '?')!r}: 'test_list' must hold at least 3 asserts (the "
                        "task's prompt shows three).")
    return {"task_id": row.get("task_id", ""), "text": row["text"], "code": row.get("code", ""),
            "test_list": row["test_list"], "test_setup_code": row.get("test_setup_code") or "",
            "challenge_test_list": row.get("challenge_test_list") or []}


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
    code: bool = False  # its answers are programs, graded by running the tests (leaf's sandbox)
    code_filter: str = "none"  # code: the upstream filter's name (the results key is pass@k,<filter>)

    def headline(self, samples: int) -> str:
        """The results entry of the table's number: with --samples N a code task is scored by leaf's pass@k."""
        if self.code and samples > 1:
            return f"pass@1,{self.code_filter if self.code_filter != 'none' else 'all'}"
        return self.metric


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


_HUMANEVAL = dict(dataset="humaneval", data_file="humaneval.jsonl", to_harness=_humaneval_row, code=True,
                  code_filter="create_test")
_MBPP = dict(dataset="mbpp", data_file="mbpp.jsonl", to_harness=_mbpp_row, code=True)
TASKS.update({
    "humaneval": EvalTask("humaneval", "humaneval/humaneval.yaml", "pass@1,create_test",
                          describe="HumanEval, completion of the function stub, pass@1", **_HUMANEVAL),
    "humaneval_instruct": EvalTask("humaneval_instruct", "humaneval/humaneval_instruct.yaml", "pass@1,create_test",
                                   describe="HumanEval, instruction prompt with the stub as answer prefix, pass@1",
                                   **_HUMANEVAL),
    "humaneval_plus": EvalTask("humaneval_plus", "humaneval/humaneval_plus.yaml", "pass@1,create_test",
                               describe="HumanEval+ (EvalPlus tests; --data: a file holding them), pass@1",
                               **{**_HUMANEVAL, "dataset": "humaneval_plus", "data_file": "humaneval_plus.jsonl"}),
    "mbpp": EvalTask("mbpp", "mbpp/mbpp.yaml", "pass_at_1,none", describe="MBPP, 3-shot, pass@1", **_MBPP),
    "mbpp_instruct": EvalTask("mbpp_instruct", "mbpp/mbpp_instruct.yaml", "pass_at_1,extract_code",
                              describe="MBPP, 3-shot instruction prompt, pass@1",
                              **{**_MBPP, "code_filter": "extract_code"}),
    "mbpp_plus": EvalTask("mbpp_plus", "mbpp/mbpp_plus.yaml", "pass_at_1,none",
                          describe="MBPP+ prompts (lm-eval scores its three base asserts), pass@1",
                          **{**_MBPP, "dataset": "mbpp_plus", "data_file": "mbpp_plus.jsonl"}),
})
CODE_METRIC_MODULE = "leaf_code_metric"  # written beside the task YAMLs: !function leaf_code_metric.pass_at_k


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


def write_task(name: str, data: Path, folder: Path, samples: int = 1) -> dict:
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
    text = "".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items())
    if task.code and samples > 1:  # N samples per problem, scored by leaf's pass@k (leaf.eval.code)
        write_text_atomic(folder / f"{CODE_METRIC_MODULE}.py", "from leaf.eval.code import keep_all, pass_at_k  "
                          "# noqa: F401  (the metric and filter of `leaf eval --samples N`)\n")
        ks = [k for k in (1, 2, 5, 10, 20, 50, 100) if k <= samples]
        text += (f"repeats: {samples}\nmetric_list:\n  - metric: !function {CODE_METRIC_MODULE}.pass_at_k\n"
                 f"    aggregation: mean\n    higher_is_better: true\n    k: {json.dumps(ks)}\n")
        if task.code_filter == "none":
            text += (f"filter_list:\n  - name: all\n    filter:\n      - function: custom\n"
                     f"        filter_fn: !function {CODE_METRIC_MODULE}.keep_all\n")
    write_text_atomic(folder / f"{yaml_name}.yaml", text)
    return {"harness_task": task.harness_task, "harness_yaml": task.harness_yaml, "task": yaml_name,
            "metric": task.headline(samples), "code": task.code, "describe": task.describe, "data": str(data), "data_sha256": file_digest(data),
            "rows": len(rows), "local_copy": str(copy)}
