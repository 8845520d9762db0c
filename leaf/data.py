"""Datasets in, (prompt, response) samples out: JSONL, JSON, CSV, Parquet or a saved HF dataset folder.

Fields are found by name: instruction style (`instruction` [+ `input`] / `output`), `question` / `solution`,
`prompt` / `response`, or chat `messages` (one user turn and one assistant turn). Names are configurable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from leaf.errors import LeafError

PROMPT_FIELDS = ("instruction", "question", "prompt", "problem")
RESPONSE_FIELDS = ("output", "solution", "response", "answer_text", "completion")
SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class Sample:
    id: str
    prompt: str
    response: str
    record: dict  # the raw row, for gold fields and reference answers


def check_utf8(path: Path) -> None:
    """Text data must be UTF-8: name the file and the byte where it is not (datasets' own error does not)."""
    import codecs

    decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                raise LeafError(f"{path} is not UTF-8 text (byte {offset + exc.start}: "
                                f"{block[exc.start:exc.start + 1]!r}). Convert it, e.g. "
                                f"`iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`.") from None
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise LeafError(f"{path} is not UTF-8 text: it ends inside a multi-byte character.") from None


def _check_jsonl(path: Path) -> None:
    """datasets' JSON errors do not name the line; find a malformed line ourselves first."""
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LeafError(f"{path}: line {number} is not valid JSON ({exc.msg} at column {exc.colno}): "
                                f"{line.strip()[:80]!r}. Fix or delete that line.") from None
            if not isinstance(value, dict):
                raise LeafError(f"{path}: line {number} is a JSON {type(value).__name__}, not an object with fields.")


def load_records(path: str | Path) -> list[dict]:
    """Rows of a dataset file or saved dataset folder, loaded with `datasets` (offline, no hub)."""
    path = Path(path)
    if not path.exists():
        raise LeafError(f"Data path {str(path)!r} does not exist.")
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        try:
            data = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise LeafError(f"{str(path)!r} is a folder but not a dataset saved with save_to_disk ({exc}). Pass a "
                            "JSONL/JSON/CSV/Parquet file instead.") from None
        if isinstance(data, datasets.DatasetDict):
            split = "train" if "train" in data else next(iter(data))
            data = data[split]
    else:
        kind = SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise LeafError(f"Unknown data format {path.suffix!r} for {str(path)!r}. Use one of "
                            f"{', '.join(SUFFIXES)} or a saved dataset folder.")
        if path.stat().st_size == 0:
            raise LeafError(f"{str(path)!r} is empty: there are no samples to analyse.")
        if kind in ("json", "csv"):
            check_utf8(path)
        if path.suffix.lower() == ".jsonl":
            _check_jsonl(path)
        try:
            data = datasets.load_dataset(kind, data_files=str(path), split="train")
        except Exception as exc:  # datasets raises many types for unreadable files
            raise LeafError(f"Could not read {str(path)!r} as {kind}: {exc}") from None
    records = data.to_list()
    if not records:
        raise LeafError(f"{str(path)!r} holds no samples.")
    return records


def _pick(record: dict, names: tuple[str, ...], given: str | None, what: str, number: int) -> str:
    if given:
        if given not in record:
            raise LeafError(f"Sample {number} has no field {given!r} ({what}). Fields: {', '.join(record)}.")
        return given
    for name in names:
        if name in record:
            return name
    raise LeafError(f"Sample {number} has no {what} field: looked for {', '.join(names)}; it has "
                    f"{', '.join(record)}. Name it with --{what}-field.")


def to_samples(records: list[dict], *, prompt_field: str | None = None, response_field: str | None = None,
               input_field: str = "input", messages_field: str = "messages",
               id_field: str = "id", skipped: list[dict] | None = None) -> list[Sample]:
    """Map rows to samples. A row that cannot be a sample (a missing field, an empty, blank, null or non-text prompt
    or response, malformed messages) stops with a LeafError naming it; with a `skipped` list it is skipped instead
    and recorded there ({"row", "id", "reason"}), unless no row at all is readable (then the first reason is the
    error: a wrong field name, not bad rows)."""
    samples = []
    for number, record in enumerate(records):
        try:
            samples.append(_sample(number, record, prompt_field, response_field, input_field, messages_field,
                                   id_field))
        except LeafError as exc:
            if skipped is None:
                raise
            skipped.append({"row": number, "id": None if record.get(id_field) is None else str(record[id_field]),
                            "reason": str(exc)})
    if skipped and not samples:
        raise LeafError(f"No row is readable: {skipped[0]['reason']}")
    return samples


def _sample(number: int, record: dict, prompt_field, response_field, input_field, messages_field,
            id_field) -> Sample:
    if messages_field in record and not prompt_field:
        messages = record[messages_field] or []
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
            raise LeafError(f"Sample {number}: {messages_field!r} must be a list of {{'role', 'content'}} objects.")
        roles = [m.get("role") for m in messages]
        if roles != ["user", "assistant"]:
            raise LeafError(f"Sample {number}: {messages_field!r} must be one user turn then one assistant turn "
                            f"(found roles {roles}).")
        prompt, response = messages[0]["content"], messages[1]["content"]
    else:
        p = _pick(record, PROMPT_FIELDS, prompt_field, "prompt", number)
        r = _pick(record, RESPONSE_FIELDS, response_field, "response", number)
        prompt, response = record[p], record[r]
        if p == "instruction" and record.get(input_field):
            prompt = f"{prompt}\n\n{record[input_field]}"
    if not isinstance(prompt, str) or not prompt.strip():
        raise LeafError(f"Sample {number} has an empty or non-text prompt: {prompt!r}.")
    if not isinstance(response, str) or not response.strip():
        raise LeafError(f"Sample {number} has an empty or non-text response: {response!r}.")
    sample_id = record.get(id_field)
    sample_id = str(number) if sample_id is None else str(sample_id)
    # outer whitespace is dropped: chat templates that trim content (Llama 3's) would otherwise move the text
    return Sample(id=sample_id, prompt=prompt.strip(), response=response.strip(), record=record)
