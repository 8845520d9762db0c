"""The part files of `leaf analyze`: one window's records, tensors and counts under OUTPUT/parts/, the unit of
--resume and of the merge.

A window writes its tensors, then its counts (with the number and digest of its records), then its records (each
file atomically); it counts as done only when all three read back and agree, so a window cut short is redone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from leaf.io import save_safetensors_atomic, write_json_atomic, write_text_atomic
from leaf.records import digest


def part_path(output: Path, window: int, suffix: str) -> Path:
    return Path(output) / "parts" / f"part-{window:05d}{suffix}"


def write_part(output: Path, window: int, records: list[dict], tensors: dict, counts: dict) -> None:
    """One window's files: tensors, then counts, then the JSONL of its records that marks the window done."""
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    save_safetensors_atomic(part_path(output, window, ".safetensors"), tensors)
    write_json_atomic(part_path(output, window, ".counts.json"),
                      {**counts, "samples": len(records), "tensors": len(tensors), "sha256": digest(lines),
                       "finished": time.time()})
    write_text_atomic(part_path(output, window, ".jsonl"), lines)


def window_done(output: Path, window: int) -> bool:
    """A window counts as done only when its three part files exist, read back and agree with the counts file:
    as many records as samples, the records' digest, as many tensors (a file that lost lines is redone)."""
    from safetensors import safe_open

    try:
        counts = json.loads(part_path(output, window, ".counts.json").read_text())
        with safe_open(str(part_path(output, window, ".safetensors")), "pt") as handle:
            tensors = len(list(handle.keys()))
        text = part_path(output, window, ".jsonl").read_text(encoding="utf-8")
        lines = text.splitlines()
        return (all(json.loads(line) for line in lines) and len(lines) == counts["samples"]
                and tensors == counts["tensors"] and digest(text) == counts["sha256"])
    except Exception:  # missing, truncated or unreadable (safetensors raises its own types): redo the window
        return False


def read_counts(output: Path, windows: int) -> list[dict]:
    return [json.loads(part_path(output, w, ".counts.json").read_text()) for w in range(windows)]


def read_parts(output: Path, windows: int) -> tuple[list[str], dict]:
    """(JSONL text of every window's records, tensors), in window order."""
    from safetensors.torch import load_file

    texts, tensors = [], {}
    for w in range(windows):
        tensors.update(load_file(str(part_path(output, w, ".safetensors"))))
        texts.append(part_path(output, w, ".jsonl").read_text(encoding="utf-8"))
    return texts, tensors
