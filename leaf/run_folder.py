"""The folder a run writes into, and the facts a run records about itself: shared by analyze, distill and serve.

- `check_run_folder` never overwrites another run and lets `--resume` continue only a run of the same settings
  (the manifest holds the settings' fingerprint; `check_same_settings` names the keys that differ);
- `FolderLock` refuses a second live run on the same folder;
- `file_digest`, `code_version`, `versions`, `describe_model`: what a manifest or summary records (every
  fingerprint holds `code_version`: a run of other code is another run);
- `processes`, `process_device`, `gpu_share`: one process per GPU under `accelerate launch`, and each process's share
  of the GPUs for a teacher spread with `--device-map auto`; `launch_processes` starts such a run (--num-processes).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

from leaf.errors import LeafError


def check_run_folder(folder: Path, manifest: Path, fingerprint: dict | None, *, resume: bool, what: str,
                     needs_resume: bool | None = None, ignore: tuple[Path, ...] = ()) -> bool:
    """Whether `folder` already holds this run (its manifest exists); LeafError, with nothing changed, when it holds
    another run, other settings (when a fingerprint is given), a started run without --resume (`needs_resume`,
    default: whenever the manifest exists), or other files (anything but `ignore`). Needs no model, so commands run
    it before they load one, and again when they claim the folder."""
    folder, manifest = Path(folder), Path(manifest)
    if manifest.exists():
        if needs_resume is not False and not resume:
            raise LeafError(f"{folder} already holds {what} run. Pass --resume to continue it, or choose another "
                            "--output (nothing was overwritten).")
        if fingerprint is not None:
            check_same_settings(folder, manifest, fingerprint, resume=resume, what=what)
        return True
    refuse_other_files(folder, ignore)
    return False


def refuse_other_files(folder: Path, ignore: tuple[Path, ...] = ()) -> None:
    """A folder a run may claim holds nothing but `ignore`."""
    if folder.exists() and any(p for p in folder.iterdir() if p not in ignore):
        raise LeafError(f"{folder} exists and is not empty. Choose a new --output (nothing was overwritten).")


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 24 else text[:12] + "…"


def check_same_settings(folder: Path, manifest: Path, fingerprint: dict, *, resume: bool = True,
                        what: str = "a") -> None:
    """The run recorded in `manifest` must have used these settings (--resume continues it; a run claimed but not
    started is taken over only with the same settings); names each key that differs, with the run's value and this
    one's."""
    previous = json.loads(Path(manifest).read_text())
    if differs := differences(previous, fingerprint):
        start = (f"Cannot --resume {folder}: the run there used different settings or data" if resume else
                 f"{folder} holds {what} run with different settings or data")
        raise LeafError(f"{start} (differs in: {differs}). Use the same settings, or a new --output (nothing was "
                        "overwritten).")


def differences(previous: dict, now: dict) -> str:
    """The keys whose values differ, each with the recorded value and this run's: '' when none does."""
    changed = sorted(k for k in set(previous) | set(now) if previous.get(k) != now.get(k))
    return ", ".join(f"{k} ({_shown(previous.get(k))} there, {_shown(now.get(k))} now)" for k in changed)


def check_rerun_folder(folder: Path, results: Path, fingerprint: dict, *, what: str,
                       ignore: tuple[Path, ...] = ()) -> bool:
    """serve and eval measure, they do not resume: the same settings and data into the same folder measure again and
    replace that run's results; a folder holding another run's results (other settings or data, or none recorded)
    or other files is refused, with nothing changed. `results` (JSON) records the run's settings under
    "fingerprint". Returns whether the folder holds this run."""
    folder, results = Path(folder), Path(results)
    if results.exists():
        try:
            previous = json.loads(results.read_text(encoding="utf-8")).get("fingerprint")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            previous = None
        if not isinstance(previous, dict):
            raise LeafError(f"{folder} holds {what} results without recorded settings (an older leaf, or an edited "
                            f"{results.name}): choose another --output (nothing was overwritten).")
        if differs := differences(previous, fingerprint):
            raise LeafError(f"{folder} holds {what} run with different settings or data (differs in: {differs}). "
                            "Choose another --output, or give the same settings to measure that run again (nothing "
                            "was overwritten).")
        return True
    refuse_other_files(folder, ignore)
    return False


def data_digest(path: Path) -> str:
    """sha256 of what a data path holds: an analyze folder's samples.jsonl (as its summary records it, the folder
    checked finished), else the file's bytes (a folder's files)."""
    from leaf.records import SAMPLES, check_finished

    path = Path(path)
    if path.is_dir() and (path / SAMPLES).exists():
        return check_finished(path)["files"][SAMPLES]["sha256"]
    return file_digest(path)


class FolderLock:
    """An exclusive lock on a run's folder (flock on FOLDER/.lock, which holds the owner's PID and host): a second run
    on the same folder is refused instead of redoing the same work. The kernel drops the lock when its process dies,
    however it dies, so a lock left by a dead run never blocks (the file may stay; it is not the lock)."""

    def __init__(self, folder: str | Path, what: str) -> None:
        self.path, self.what, self.fd = Path(folder) / ".lock", what, None
        self.created = False  # whether acquire() made the folder (release() then removes it if nothing else is there)

    def acquire(self) -> FolderLock:
        import fcntl
        import socket

        if self.fd is not None:
            return self
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LeafError(f"{self.path.parent.parent if self.path.parent.name == 'parts' else self.path.parent} is "
                            f"in use by another running leaf {self.what} (PID, host: {owner}). Wait for it to finish "
                            "or stop it, then rerun; two runs on one folder would redo the same work.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Drop the lock. A folder the lock itself created and that holds nothing else (the run stopped before it
        wrote anything: a model that did not load) goes with it."""
        if self.fd is not None:
            if self.created and [p.name for p in self.path.parent.iterdir()] == [self.path.name]:
                self.path.unlink(missing_ok=True)
                try:
                    self.path.parent.rmdir()
                except OSError:
                    pass
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


def file_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files with their relative names."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def describe_model(model) -> dict:
    from leaf.hooks import model_summary

    return model_summary(model)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The code a run ran: leaf's version and a digest of its installed source ("0.1.0+3f9a1c2b7d0e"), every .py file
    and prompt template of leaf, leaf.hooks and leaf.serve (not the demo's weights). Every stage's fingerprint holds
    it, so a resumed or repeated run never mixes results of two versions of the code."""
    import importlib.util

    from leaf import __version__

    digest = hashlib.sha256()
    for package in ("leaf", "leaf.hooks", "leaf.serve"):
        root = Path(next(iter(importlib.util.find_spec(package).submodule_search_locations)))
        files = [f for f in root.rglob("*") if f.suffix in (".py", ".txt", ".jinja") and "__pycache__" not in f.parts
                 and not (package == "leaf" and f.relative_to(root).parts[0] in ("hooks", "serve"))]
        for file in sorted(files):
            digest.update(f"{package}/{file.relative_to(root).as_posix()}\0".encode())
            digest.update(file.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


RECORDED_PACKAGES = ("leaf-distill", "torch", "transformers", "nnsight", "safetensors", "datasets")


def versions(packages: tuple[str, ...] = RECORDED_PACKAGES) -> dict:
    """The installed version of each package (None when missing), and leaf's code version (`leaf-code`)."""
    import importlib.metadata as md

    out = {}
    for name in packages:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    out["leaf-code"] = code_version()
    return out


def processes(device: str):
    """accelerate's view of the processes: N under `accelerate launch`/torchrun (gloo on CPU, NCCL on GPUs), else one.
    The barrier timeout is long: a process that finished its windows waits for the slowest one."""
    import datetime

    from accelerate import PartialState

    return PartialState(cpu=device == "cpu", timeout=datetime.timedelta(hours=12))


def launch_processes(count: int, args: list[str], log=print) -> int:
    """Re-run a leaf command (args start with "leaf") under `accelerate launch` with `count` processes; its exit
    code. accelerate's multi-process launcher is torchrun; on CPU the processes talk over gloo."""
    import shutil
    import subprocess
    import sys

    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        raise LeafError("--num-processes needs accelerate's `accelerate` command (pip install accelerate).")
    launch = [accelerate, "launch", "--multi_gpu", "--num_processes", str(count), "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "leaf", *args[1:]]
    log("running: " + " ".join(launch))
    return subprocess.run(launch).returncode


def process_device(device: str, ranks, share: dict[int, int] | None = None) -> str:
    """Each process of a multi-GPU run takes its own GPU (accelerate's choice), or with a GPU share (--device-map
    auto) the share's first GPU (where its student and its inputs go); otherwise the --device given."""
    if ranks.num_processes > 1 and device == "cuda":
        if share:
            import torch

            first = min(share)
            torch.cuda.set_device(first)
            return f"cuda:{first}"
        return str(ranks.device)
    return device


def gpu_share(ranks) -> dict[int, int] | None:
    """--device-map auto under N processes: process r of a machine's n spreads its teacher over its own
    consecutive 1/n of the machine's GPUs (as {gpu: bytes} for transformers' max_memory); None without GPUs."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        return None
    local = ranks.local_process_index
    per_machine = int(os.environ.get("LOCAL_WORLD_SIZE", ranks.num_processes))  # set by torchrun
    per = gpus // max(per_machine, 1)
    if per < 1:
        raise LeafError(f"--device-map auto with {per_machine} processes on a machine with {gpus} GPU(s): each "
                        "process needs at least one GPU of its own. Start fewer processes.")
    # 85 % of each GPU for the teacher's weights: the rest holds activations (and, on the first, the student)
    return {i: int(0.85 * torch.cuda.get_device_properties(i).total_memory)
            for i in range(local * per, (local + 1) * per)}
