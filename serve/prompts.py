"""What `leaf serve` sends to the models: problems from a dataset or a `leaf analyze` folder, or random prompts.

A problem carries its instruction, and where the data has them: the reference response (teacher-forced for the
attention-focus metric), the reference answer (accuracy), the clean twin of a distractor problem, the confounder
spans in its instruction (known: gold; or detected by `leaf analyze`) and the pruned instruction (detected spans
removed, all at once).

- Dataset (any format `leaf analyze` reads): the clean twin from --clean-field (default: `seed_question` when
  present, as in GSM-Plus), the gold confounder spans as the words the question adds to its twin, the answer from
  --answer-field (default `answer`, else the reference solution's final answer).
- `leaf analyze` folder: the detected instruction spans of each sample and the instruction with them pruned; gold
  spans when the analysis had them (its --gold/--gold-pair), and then the clean twin is the question without them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from leaf.errors import LeafError
from leaf.programs import CodeTests
from leaf.records import SAMPLES

CLEAN_FIELDS = ("seed_question", "clean_question", "original_question")
GOLD_FIELDS = ("distractor_spans",)
ANSWER_FIELDS = ("answer", "final_answer")


@dataclass
class Problem:
    id: str
    prompt: str
    response: str | None = None
    answer: str | None = None
    clean: str | None = None
    clean_answer: str | None = None
    pruned: str | None = None
    confounders: list[tuple[int, int]] = field(default_factory=list)
    confounder_source: str | None = None  # gold or detected
    tests: CodeTests | None = None  # a code row: graded by running its tests (leaf.grading), not by `answer`


def _answer_of(record: dict, response: str | None, answer_field: str | None) -> str | None:
    from leaf.answers import extract_answer

    for name in ([answer_field] if answer_field else ANSWER_FIELDS):
        if record.get(name) not in (None, ""):
            return str(record[name])
    return extract_answer(response) if response else None


def from_dataset(path: Path, *, prompt_field: str | None = None, response_field: str | None = None,
                 clean_field: str | None = None, answer_field: str | None = None, id_field: str = "id",
                 gold_field: str | None = None, limit: int | None = None) -> list[Problem]:
    from leaf.data import PROMPT_FIELDS, load_records, to_samples
    from leaf.gold import spans_from_field, spans_from_pair

    records = load_records(path)[:limit]
    if clean_field and clean_field not in records[0]:
        raise LeafError(f"{path} has no field {clean_field!r} (--clean-field). Fields: {', '.join(records[0])}.")
    clean_field = clean_field or next((f for f in CLEAN_FIELDS if f in records[0]), None)
    if gold_field and gold_field not in records[0]:
        raise LeafError(f"{path} has no field {gold_field!r} (--gold-field). Fields: {', '.join(records[0])}.")
    gold_field = gold_field or next((f for f in GOLD_FIELDS if f in records[0]), None)
    try:
        samples = to_samples(records, prompt_field=prompt_field, response_field=response_field, id_field=id_field)
        with_response = True
    except LeafError:  # prompts only (no reference solutions): throughput and accuracy on answers still work
        with_response = False
        field_name = prompt_field or next((f for f in PROMPT_FIELDS if f in records[0]), None)
        if field_name is None:
            raise LeafError(f"{path}: no prompt field (looked for {', '.join(PROMPT_FIELDS)}); name it with "
                            "--prompt-field.") from None
    problems = []
    for number, record in enumerate(records):
        if with_response:
            sample = samples[number]
            prompt, response, sample_id = sample.prompt, sample.response, sample.id
        else:
            prompt, response = str(record[field_name]).strip(), None
            sample_id = str(record.get(id_field, number))
        clean = str(record[clean_field]).strip() if clean_field and record.get(clean_field) else None
        if gold_field:  # exact spans (or distractor texts) given by the data
            spans = spans_from_field(prompt, record.get(gold_field) or [])
        else:  # the words the question adds to its clean twin
            spans = spans_from_pair(prompt, clean) if clean and clean != prompt else []
        from leaf.programs import has_tests, tests_of

        tests = tests_of(record, f"{path}: row {number}") if has_tests(record) else None
        answer = None if tests is not None else _answer_of(record, response, answer_field)
        clean_answer = str(record["seed_answer"]) if clean and record.get("seed_answer") not in (None, "") else answer
        problems.append(Problem(sample_id, prompt, response, answer, clean, clean_answer, None, spans,
                                "gold" if spans else None, tests=tests))
    return problems


def from_analyze(folder: Path, *, limit: int | None = None) -> list[Problem]:
    """The analysed samples of a leaf analyze folder: the reference answer analyze --select recorded (else the
    response's final answer), the clean prompt with
    the gold spans removed (when the run had gold), the pruned prompt with the detected instruction spans removed."""
    from leaf.answers import extract_answer
    from leaf.programs import tests_of
    from leaf.records import read_samples
    from leaf.spans import remove_spans

    problems = []
    for record in read_samples(folder, analysed_only=True):
        tests = tests_of(record.tests, f"{folder}: sample {record.id}") if record.tests else None
        answer = None if tests is not None else recorded_reference(record) or extract_answer(record.response)
        gold = record.gold_spans or []
        detected = record.instruction_spans()
        problems.append(Problem(
            record.id, record.prompt, record.response, answer,
            clean=remove_spans(record.prompt, gold) if gold else None, clean_answer=answer,
            pruned=record.pruned_prompt(), confounders=gold or detected,
            confounder_source="gold" if gold else ("detected" if detected else None), tests=tests))
        if limit and len(problems) >= limit:
            break
    return problems


def recorded_reference(record) -> str | None:
    """The reference answer analyze --select graded the models with (it honours --answer-field), if it recorded one."""
    reference = (record.selection or {}).get("reference")
    return reference if reference and reference != "tests" else None


def load_problems(data: Path, **kwargs) -> list[Problem]:
    data = Path(data)
    if not data.exists():
        raise LeafError(f"--data {str(data)!r} does not exist.")
    if data.is_dir() and (data / SAMPLES).exists():
        problems = from_analyze(data, limit=kwargs.get("limit"))
    else:
        problems = from_dataset(data, **kwargs)
    if not problems:
        raise LeafError(f"{data} gives no prompts to serve (no analysed samples / no rows).")
    return problems


def random_prompts(tokenizer, count: int, input_len: int, seed: int) -> list[list[int]]:
    """vLLM-style random prompts: `count` sequences of `input_len` token ids drawn from the ordinary vocabulary."""
    if count < 1 or input_len < 1:
        raise LeafError("--random-prompts and --random-input-len must be at least 1.")
    special = set(tokenizer.all_special_ids)
    pool = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(seed)
    return [[rng.choice(pool) for _ in range(input_len)] for _ in range(count)]


def render(tokenizer, prompt: str, *, chat_template: bool = True) -> list[int]:
    """Token ids of a prompt as the model sees it: its chat template with the generation prompt."""
    from leaf.hooks.templates import render_head

    text = render_head(tokenizer, prompt, chat_template=chat_template)
    return tokenizer(text, add_special_tokens=False).input_ids
