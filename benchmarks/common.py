"""What every script under benchmarks/ prints: a readable table, then one JSON object as the very last line."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence

import torch


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence]) -> None:
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(str(c)), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def emit_json(figures: dict) -> None:
    """The machine-readable result: one line of JSON, always last."""
    figures = {**figures, "env": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                  "python": platform.python_version(), "machine": platform.machine()}}
    print(json.dumps(figures, sort_keys=True), flush=True)


def median_times(fns: dict[str, Callable[[], object]], iters: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time several functions interleaved (a, b, a, b, ...) so that drift in machine load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def peak_rss_reset() -> int:
    """Reset the kernel's peak-RSS counter of this process; returns the current RSS in bytes (Linux)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    return _status_kb("VmRSS") * 1024


def peak_rss() -> int:
    """Peak RSS in bytes since the last peak_rss_reset() (Linux)."""
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def pad_encodings(encs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (ids, attention mask, response mask) of EncodedSamples: the plain-PyTorch floor's batch."""
    width = max(len(e.input_ids) for e in encs)
    ids = torch.full((len(encs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for r, e in enumerate(encs):
        ids[r, : len(e.input_ids)] = e.input_ids
        mask[r, : len(e.input_ids)] = 1
        target[r, : len(e.input_ids)] = e.response_mask
    return ids, mask, target


def tiny_pair_and_data(folder, size: str, rows: list[dict]) -> tuple[str, str, object]:
    """A tiny Llama teacher and student (seeds 1 and 2) and the rows as data.jsonl, all under `folder`."""
    import json
    from pathlib import Path

    from leaf.models.tiny import build_tiny_model

    folder = Path(folder)
    teacher = str(build_tiny_model("llama", folder / "teacher", size=size, seed=1))
    student = str(build_tiny_model("llama", folder / "student", size=size, seed=2))
    data = folder / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return teacher, student, data


def benchmark_parser(doc: str, quick: str):
    """The argument parser every benchmark starts from: its docstring as help, and --quick (what the tests run)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def parse_benchmark_args(parser):
    """Parsed arguments, with torch on the 2 threads every figure in the README was measured with."""
    args = parser.parse_args()
    torch.set_num_threads(2)
    return args
