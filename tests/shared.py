"""Paths and data helpers that several test folders share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]                              # the repository
GSM_PLUS = ROOT / "tests" / "data" / "gsm_plus_distraction_dev.jsonl"    # CC BY-SA 4.0 (tests/data/README.md)


def shortest_gsm_plus(count: int) -> list[dict]:
    """The `count` GSM-Plus distraction rows with the shortest question + solution (short sequences: fast tests)."""
    rows = [json.loads(line) for line in GSM_PLUS.read_text().splitlines()]
    return sorted(rows, key=lambda r: len(r["question"]) + len(r["solution"]))[:count]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
