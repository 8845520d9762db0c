"""Atomic writes: a crash or Ctrl-C mid-write never leaves a half-written result file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from leaf.errors import LeafError


def write_bytes_atomic(path: str | Path, write) -> Path:
    """Call write(tmp_path) for a temporary file in the same folder, fsync it, rename it over `path`, fsync the
    folder: after a crash the file is either the old one or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: str | Path, obj) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def save_safetensors_atomic(path: str | Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    return write_bytes_atomic(path, lambda tmp: save_file(tensors, tmp))


def check_same_settings(folder: Path, manifest: Path, fingerprint: dict) -> None:
    """--resume guard: the run recorded in `manifest` must have used these settings; names the keys that differ."""
    previous = json.loads(Path(manifest).read_text())
    changed = sorted(k for k in set(previous) | set(fingerprint) if previous.get(k) != fingerprint.get(k))
    if changed:
        raise LeafError(f"Cannot --resume {folder}: the run there used different settings or data (differs in: "
                        f"{', '.join(changed)}). Use the same settings, or a new --output.")
