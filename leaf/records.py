"""Reading a `leaf analyze` folder: every consumer (distill, serve, inspect, the demo) goes through here, so a folder
whose run did not finish is refused in one place.

A run writes samples.jsonl and scores.safetensors first and summary.json last (each atomically); summary.json records
the number of records and the digest of samples.jsonl. A folder without summary.json (stopped, or a write failed on a
full disk) or whose samples.jsonl no longer matches it (cut short, edited) is not read."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from leaf.errors import LeafError
from leaf.io import read_text

SAMPLES, SUMMARY = "samples.jsonl", "summary.json"


def check_finished(folder: Path) -> dict:
    """The summary of a finished analyze folder; LeafError naming the fix otherwise."""
    folder = Path(folder)
    if not (folder / SAMPLES).exists():
        raise LeafError(f"{folder} is not a `leaf analyze` output: no {SAMPLES}. Run leaf analyze first, or pass its "
                        "--output folder.")
    finish = (f"Finish it with the same `leaf analyze` command and --resume (finished windows are kept), or rebuild "
              f"the merged files with `leaf analyze --merge {folder}`.")
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LeafError(f"{folder} holds an unfinished `leaf analyze` run: {SAMPLES} is there but {SUMMARY}, written "
                        f"last, is not (the run was stopped, or a write failed, e.g. on a full disk). {finish}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LeafError(f"{folder / SUMMARY} is unreadable ({exc}). {finish}") from None
    expected = (summary.get("files") or {}).get(SAMPLES)
    if expected:  # folders written before the digest was recorded carry no "files" entry
        data = (folder / SAMPLES).read_bytes()
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            lines = sum(1 for line in data.splitlines() if line.strip())
            raise LeafError(f"{folder / SAMPLES} does not match {SUMMARY} ({lines} records, {expected['records']} "
                            f"written): it was cut short or edited. {finish}")
    return summary


def samples_file(path: Path) -> Path:
    """samples.jsonl of an analyze folder (checked finished) or a samples-shaped JSONL file. A file inside an analyze
    folder (beside summary.json or parts/) is checked like its folder; a file on its own is taken as given."""
    path = Path(path)
    if path.is_dir():
        check_finished(path)
        return path / SAMPLES
    if path.name == SAMPLES and ((path.parent / SUMMARY).exists() or (path.parent / "parts").is_dir()):
        check_finished(path.parent)
    return path


def read_records(path: Path) -> list[dict]:
    """Every record (any status) of a finished analyze folder or samples file, in order."""
    file = samples_file(path)
    records = []
    for number, line in enumerate(read_text(file).splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise LeafError(f"{file}: line {number} is not valid JSON ({exc.msg}).") from None
    return records

