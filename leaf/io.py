"""Atomic writes: a crash or Ctrl-C mid-write never leaves a half-written result file behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from leaf.errors import LeafError


def check_output_folder(path: str | Path, *, flag: str = "--output", allow_nonempty: bool = False) -> Path:
    """A folder a command may create and fill: not a file, not under a file, and (unless allow_nonempty) absent or
    empty. Raises LeafError naming the problem; nothing is created or changed."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == path else f"lies under {parent}, which is a file"
            raise LeafError(f"{flag} {path} {where}. Give a folder path (nothing was overwritten).")
    if path.exists() and not allow_nonempty and any(path.iterdir()):
        raise LeafError(f"{path} exists and is not empty. Choose a new {flag} (nothing was overwritten).")
    return path


def read_text(file: str | Path) -> str:
    """A text file as UTF-8; LeafError naming the file and the byte where decoding failed."""
    try:
        return Path(file).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LeafError(f"{file} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}). "
                        "Convert it, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`.") from None


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


# torch.save's zip writer reports a failed write as a RuntimeError without the errno ("unexpected pos", "failed
# writing"): on a file system with (almost) no space left that is ENOSPC
_TORCH_WRITE_FAILED = ("unexpected pos", "failed writing", "PytorchStreamWriter")
LOW_SPACE_BYTES = 64 << 20


@contextlib.contextmanager
def full_disk_as_oserror(folder: str | Path):
    """Turn a write that failed because `folder`'s file system is full into OSError(ENOSPC) (the CLI's message:
    free space and rerun with --resume), also when the writer (torch.save) hides the errno."""
    try:
        yield
    except RuntimeError as exc:
        import errno
        import shutil

        text = str(exc)
        if any(marker in text for marker in _TORCH_WRITE_FAILED):
            try:
                free = shutil.disk_usage(folder).free
            except OSError:
                free = None
            if "No space left" in text or (free is not None and free < LOW_SPACE_BYTES):
                raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free)", str(folder)) from exc
        raise
