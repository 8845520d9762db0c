"""Data for the recipes: NuminaMath-CoT, GSM8K and MATH as leaf JSONL (id, instruction, output, answer, source).

    python recipes/prepare_data.py --dataset gsm8k --split train --output data/gsm8k_train.jsonl
    python recipes/prepare_data.py --dataset numinamath --split train --limit 120000 --output data/numina_120k.jsonl
    python recipes/prepare_data.py --dataset math500 --split test --output data/math500.jsonl

Needs network access to the Hugging Face hub (or a populated HF_DATASETS_CACHE); run it once on the machine that
holds the data. Rows whose reference answer cannot be read are dropped and counted. Writes atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leaf.answers import extract_answer
from leaf.io import write_text_atomic

# name -> (hub id, config, field mapping function)
SOURCES = {
    "numinamath": ("AI-MO/NuminaMath-CoT", None),
    "gsm8k": ("openai/gsm8k", "main"),
    "math": ("EleutherAI/hendrycks_math", ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                                           "number_theory", "prealgebra", "precalculus"]),
    "math500": ("HuggingFaceH4/MATH-500", None),
}


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
    for index, row in enumerate(load_rows(args.dataset, args.split)):
        sample = convert(args.dataset, row, index)
        if sample is None:
            dropped += 1
            continue
        rows.append(sample)
        if args.limit and len(rows) >= args.limit:
            break
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} samples to {args.output} ({dropped} without a readable answer dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
