"""The sandbox for model-written programs: each runs in its own subprocess, never in leaf's own interpreter.

    from leaf.sandbox import Limits, run_programs
    results = run_programs(["print(1 + 1)", "while True: pass"], limits=Limits(timeout_s=2))
    [r.status for r in results]   # ["passed", "timeout"]

One program, one run (`run_program`):
- a fresh interpreter (`python -I -S`: no user site, no environment variables read, this environment's
  site-packages on its path) in a fresh temporary folder (its working directory and HOME), deleted afterwards; the program is `main.py` there;
- resource limits set before the program's first line (`setrlimit`: CPU seconds, address space, file size, open
  files, processes), so a 20 GB allocation fails with MemoryError and a fork bomb runs out of processes;
- when leaf runs as root, the program runs as an unprivileged user id of its own (one per worker slot), so the
  process limit binds (the kernel exempts root from it), it cannot signal leaf or write root's files, and every
  process left under that id is killed afterwards;
- a wall-clock timeout that kills the whole process tree (its session, and its PID namespace where there is one);
- stdout and stderr captured to files capped by the file-size limit (a program that prints 1 GB is stopped at the
  cap) and read back up to `output_bytes`;
- isolation, the strongest available (`available_isolation`), recorded in every result:
  `bwrap` (bubblewrap): new network, PID, IPC and UTS namespaces, the whole file system read-only except the
  program's folder, a private /tmp and /dev; `unshare` (util-linux, as root): new network and PID namespaces;
  `none`: limits and the process group only (no network isolation).

What it does not guard against: kernel exploits, CPU or memory bandwidth taken from other work while a program
runs (up to its CPU limit), reading files the user id may read (the file system is visible, read-only under bwrap),
and, without root and without bwrap, signals to the user's other processes. It is the isolation code-evaluation
harnesses use (separate process, limits, timeout), with namespaces on top where the kernel allows them; for
untrusted models at scale, run leaf itself in a container or VM.

Running model-written code is opt-in: commands take --allow-code-execution, and `require_permission` says what
would run and how to allow it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from leaf.errors import LeafError

ISOLATIONS = ("auto", "bwrap", "unshare", "none")
UID_BASE = 100_000  # sandbox user ids when leaf runs as root: UID_BASE + 64 * (pid % 10_000) + slot
UID_SLOTS = 64


@dataclass(frozen=True)
class Limits:
    """Resource limits of one program run."""

    timeout_s: float = 10.0         # wall clock, from start to kill
    cpu_s: int | None = None        # RLIMIT_CPU (default: the timeout rounded up, plus 1)
    memory_mb: int = 4096           # RLIMIT_AS: address space
    file_size_mb: int = 16          # RLIMIT_FSIZE: any file written, stdout and stderr included
    processes: int = 32             # RLIMIT_NPROC: processes and threads of the sandbox user
    open_files: int = 64            # RLIMIT_NOFILE
    output_bytes: int = 64 * 1024   # stdout / stderr kept in the result, each

    def __post_init__(self) -> None:
        checks = [(self.timeout_s > 0, f"timeout {self.timeout_s} s"), (self.memory_mb >= 64, f"{self.memory_mb} MB"),
                  (self.file_size_mb >= 1, f"file size {self.file_size_mb} MB"), (self.processes >= 1, "processes"),
                  (self.open_files >= 8, "open files"), (self.output_bytes >= 0, "output bytes"),
                  (self.cpu_s is None or self.cpu_s >= 1, "cpu seconds")]
        for ok, what in checks:
            if not ok:
                raise LeafError(f"Sandbox limit out of range: {what}. Limits: {self}.")

    @property
    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1

    def rlimits(self) -> dict[str, int]:
        mb = 1 << 20
        return {"RLIMIT_CPU": self.cpu_seconds, "RLIMIT_AS": self.memory_mb * mb,
                "RLIMIT_FSIZE": self.file_size_mb * mb, "RLIMIT_NOFILE": self.open_files,
                "RLIMIT_NPROC": self.processes, "RLIMIT_CORE": 0}


@dataclass
class Execution:
    """What one program run gave."""

    status: str                   # passed (exit 0), failed (any other end), timeout (killed at the wall clock)
    returncode: int | None        # negative: killed by that signal
    stdout: str
    stderr: str
    duration_s: float
    isolation: str                # bwrap, unshare or none: what was in force
    truncated: bool = False       # output cut at output_bytes or stopped at the file-size limit
    signal: str | None = None     # e.g. SIGKILL, SIGXFSZ, SIGXCPU
    error: str | None = None      # the sandbox itself failed to start the program

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_json(self) -> dict:
        return asdict(self)


# Runs in the child before the program: limits, then (as root) the sandbox user, then the program as __main__. Its
# settings come first as a Python literal (`spec = {...}`, written by leaf), so that it imports nothing but os,
# resource and sys: json and runpy cost two thirds of a bare interpreter's start again.
_LAUNCHER = r"""
import os, resource, sys
if spec["mounts"]:  # unshare --mount as root: make the interpreter reachable for the sandbox user (see _hidden)
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    def mount(source, target, kind, flags, data):
        if libc.mount(source, target.encode(), kind, flags, data) != 0:
            raise OSError(ctypes.get_errno(), f"sandbox: mount on {target} failed")
    for hidden, roots in spec["mounts"]:
        keep = [(os.open(root, os.O_PATH), root) for root in roots]
        mount(b"tmpfs", hidden, b"tmpfs", 0, b"mode=0755")
        for fd, root in keep:
            os.makedirs(root, exist_ok=True)
            mount(f"/proc/self/fd/{fd}".encode(), root, None, 4096 | 16384, None)  # MS_BIND | MS_REC
if os.getpid() == 1:  # unshare's PID namespace: stay as its init (reaping orphans), the program runs as pid 2
    child = os.fork()
    if child:
        while True:
            pid, status = os.wait()
            if pid == child:
                code = os.waitstatus_to_exitcode(status)
                os._exit(code if code >= 0 else 128 - code)
for name, value in spec["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if os.getuid() == 0 and spec["uid"] is not None:
    os.setgroups([]); os.setgid(spec["uid"]); os.setuid(spec["uid"])
sys.argv = ["main.py"]
sys.path[:0] = [os.getcwd()]
sys.path += spec["site"]  # -S: no site.py (two thirds of the interpreter's start), its folders added by hand
def _run():  # the program runs as __main__, in a namespace that holds none of the launcher's names
    path = os.path.join(os.getcwd(), "main.py")
    with open(path, "rb") as handle:
        code = compile(handle.read(), path, "exec")
    main = sys.modules["__main__"].__dict__
    for name in [n for n in main if n not in ("__name__", "__builtins__", "__doc__", "__spec__", "__loader__",
                                              "__package__")]:
        del main[name]
    main["__file__"] = path
    exec(code, main)
_run()
"""


def _launcher(spec: dict) -> str:
    return f"spec = {spec!r}\n{_LAUNCHER}"

def _probe(command: list[str]) -> bool:
    try:
        return subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def isolation_support() -> dict[str, bool]:
    """Which isolations work on this machine (tried once per process: a namespace may be forbidden here)."""
    bwrap = shutil.which("bwrap")
    unshare = shutil.which("unshare")
    return {"bwrap": bool(bwrap) and _probe([bwrap, *_bwrap_flags(), "--", "true"]),
            "unshare": bool(unshare) and os.geteuid() == 0 and _probe([unshare, *_UNSHARE_FLAGS, "--", "true"]),
            # as root the program runs as its own user, who must be able to reach this Python without mounts
            "none": os.geteuid() != 0 or not _hidden()}


def available_isolation() -> str:
    """The strongest isolation that works here: bwrap, else unshare, else none."""
    support = isolation_support()
    for name in ("bwrap", "unshare", "none"):
        if support[name]:
            return name
    raise LeafError(_unsupported("none"))


def resolve_isolation(name: str) -> str:
    """`auto` -> the strongest available; a named isolation must work here (LeafError with the fix otherwise)."""
    if name not in ISOLATIONS:
        raise LeafError(f"Unknown sandbox isolation {name!r}. Available: {', '.join(ISOLATIONS)}.")
    if name == "auto":
        return available_isolation()
    if not isolation_support()[name]:
        raise LeafError(_unsupported(name))
    return name


def _unsupported(name: str) -> str:
    fix = {"bwrap": "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap); without root it also needs "
                    "unprivileged user namespaces",
           "unshare": "run as root (util-linux's unshare needs it for a network namespace), or install bubblewrap",
           "none": f"as root the sandbox runs programs as an unprivileged user, who cannot enter "
                   f"{(_hidden() or [('?',)])[0][0]} to reach this Python; install bubblewrap (apt-get install "
                   "bubblewrap), use unshare (both mount it in), or a Python every user can read"}[name]
    return (f"Sandbox isolation {name!r} does not work on this machine: {fix}. Or use --sandbox-isolation auto "
            "(the strongest that works).")


_UNSHARE_FLAGS = ["--net", "--pid", "--fork", "--kill-child", "--ipc", "--uts", "--mount"]


def _bwrap_flags() -> list[str]:
    flags = ["--die-with-parent", "--new-session", "--unshare-net", "--unshare-pid", "--unshare-ipc",
             "--unshare-uts", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    if os.geteuid() != 0:
        flags.insert(0, "--unshare-user")
    # the interpreter and its packages may live under /tmp (a venv in a temporary clone): mount them back
    for path in sorted(_python_roots()):
        if path == "/tmp" or path.startswith("/tmp/"):
            flags += ["--ro-bind", path, path]
    if os.geteuid() == 0:  # a folder the sandbox user may not enter (/root) becomes an empty one, the Python kept
        for hidden, roots in _hidden():
            flags += ["--tmpfs", hidden]
            made: set[Path] = set()
            for root in roots:  # the folders between stay enterable (bwrap would make them 0700)
                for between in reversed(Path(root).parents):
                    if between not in made and str(between).startswith(hidden + "/"):
                        flags += ["--perms", "0755", "--dir", str(between)]
                        made.add(between)
                flags += ["--ro-bind", root, root]
    return flags


def _python_roots() -> set[str]:
    roots = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))}
    roots |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    return roots


@functools.cache
def _site_folders() -> list[str]:
    """This interpreter's site-packages folders: the program imports what leaf's environment has (numpy, ...)."""
    import site

    return [p for p in [*site.getsitepackages(), site.getusersitepackages()] if os.path.isdir(p)]


def _hidden() -> list[tuple[str, list[str]]]:
    """Folders on the way to the interpreter and its packages that other users may not enter (pyenv under /root,
    mode 0700), each with the Python folders under it: the sandbox user could not import the standard library.
    Under bwrap and unshare such a folder is replaced by an empty one and the Python folders mounted back."""
    out: dict[str, list[str]] = {}
    for root in sorted(_python_roots()):
        parts = Path(root).parts
        for depth in range(2, len(parts)):
            ancestor = str(Path(*parts[:depth]))
            if not os.stat(ancestor).st_mode & 0o001:
                out.setdefault(ancestor, []).append(root)
                break
    return [(hidden, roots) for hidden, roots in out.items()
            if not any(hidden.startswith(other + "/") for other in out)]


def _wrap(isolation: str, folder: Path, command: list[str]) -> list[str]:
    if isolation == "bwrap":
        return [shutil.which("bwrap"), *_bwrap_flags(), "--bind", str(folder), str(folder),
                "--chdir", str(folder / "work"), "--", *command]
    if isolation == "unshare":
        return [shutil.which("unshare"), *_UNSHARE_FLAGS, "--", *command]
    return command


def _environment(work: Path) -> dict[str, str]:
    """A clean environment: nothing of leaf's own (tokens, credentials) reaches the program."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TMPDIR": str(work),
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _sandbox_uid(slot: int) -> int | None:
    """The user id a program runs as when leaf is root (one per worker slot and leaf process), else None."""
    if os.geteuid() != 0:
        return None
    return UID_BASE + UID_SLOTS * (os.getpid() % 10_000) + slot % UID_SLOTS


KILL_ROUNDS = 20  # each round walks the process table once (~15 µs here); a fork bomb holds at most 32 processes
KILL_TIMEOUT_S = 30  # a survivor that stops the sweeper (SIGSTOP to everything) must not hang leaf

# Runs as root in a fresh interpreter, becomes the sandbox user and signals everything it may (kill(-1) spares the
# caller itself), KILL_ROUNDS times over.
_KILLER = r"""
import os, signal, sys
uid, rounds = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
for _ in range(rounds):
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        break
"""


def _kill_user(uid: int) -> None:
    """SIGKILL every process of `uid` (what a program left behind, a fork bomb's survivors): a fresh interpreter
    that becomes `uid` and signals everything it may (kill(-1)), KILL_ROUNDS times over: a process forked while one
    round ran is killed by the next. (kill(-1) succeeds whenever any other process exists, even one it may not
    signal, so its return value cannot say that none is left. Under bwrap and unshare the PID namespace's end has
    already killed them all.) A new interpreter rather than os.fork(): subprocess starts it with vfork, while a
    fork copies the caller's page tables, ~0.2 s per program when a 3 GB model is loaded in this process."""
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _KILLER, str(uid), str(KILL_ROUNDS)], env={},
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              close_fds=True, timeout=KILL_TIMEOUT_S)
        failure = (f"exit {done.returncode}: {done.stderr.decode(errors='replace').strip()[-300:]}"
                   if done.returncode else None)
    except (OSError, subprocess.TimeoutExpired) as exc:
        failure = str(exc)
    if failure:
        raise LeafError(f"sandbox: could not end the processes of sandbox user {uid} ({failure}); some may still "
                        f"run: pkill -KILL -U {uid}")


def _nproc_limit(limits: Limits, uid: int | None) -> int:
    """RLIMIT_NPROC counts every process of the real user: without a user of its own, the program gets the user's
    current count plus its allowance."""
    if uid is not None:
        return limits.processes
    me = os.getuid()
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == me
            except OSError:
                pass
    return count + limits.processes


def _read_capped(path: Path, cap: int) -> tuple[str, bool]:
    with open(path, "rb") as handle:
        data = handle.read(cap + 1)
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap


def run_program(source: str, *, stdin: str = "", limits: Limits = Limits(), isolation: str = "auto",
                slot: int = 0) -> Execution:
    """Run one Python program in the sandbox; returns its Execution (never raises for what the program does)."""
    isolation = resolve_isolation(isolation)
    uid = _sandbox_uid(slot)
    folder = Path(tempfile.mkdtemp(prefix="leaf-sandbox-"))
    work = folder / "work"
    try:
        work.mkdir()
        (work / "main.py").write_text(source, encoding="utf-8")
        if uid is not None:  # the program's folder is its own; the rest of `folder` is root's (0711: no listing)
            os.chown(work, uid, uid)
            os.chmod(folder, 0o711)
        spec = {"rlimits": {**limits.rlimits(), "RLIMIT_NPROC": _nproc_limit(limits, uid)}, "uid": uid,
                "mounts": _hidden() if uid is not None and isolation == "unshare" else [], "site": _site_folders()}
        command = _wrap(isolation, folder, [sys.executable, "-I", "-S", "-c", _launcher(spec)])
        (folder / "stdin").write_text(stdin, encoding="utf-8")
        with open(folder / "stdin", "rb") as cin, open(folder / "stdout", "wb") as out, \
                open(folder / "stderr", "wb") as err:
            start = time.perf_counter()
            try:
                process = subprocess.Popen(command, cwd=work, env=_environment(work), stdin=cin, stdout=out,
                                           stderr=err, start_new_session=True, close_fds=True)
            except OSError as exc:
                return Execution("failed", None, "", "", 0.0, isolation, error=f"could not start: {exc}")
            timed_out = not _wait(process, limits.timeout_s)
            if timed_out:
                _kill_group(process.pid)
            returncode = process.wait()
            duration = time.perf_counter() - start
        _kill_group(process.pid)  # anything left in its session (no PID namespace under `none`)
        if uid is not None:
            _kill_user(uid)
        stdout, cut_out = _read_capped(folder / "stdout", limits.output_bytes)
        stderr, cut_err = _read_capped(folder / "stderr", limits.output_bytes)
        returncode, signame = _exit_status(returncode)
        status = "timeout" if timed_out else ("passed" if returncode == 0 else "failed")
        return Execution(status, returncode, stdout, stderr, duration, isolation,
                         truncated=cut_out or cut_err or signame == "SIGXFSZ", signal=signame)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait(process: subprocess.Popen, timeout: float) -> bool:
    """Whether the process ended within `timeout` seconds. A pidfd wakes at its exit (Popen.wait(timeout) polls
    with sleeps of up to 50 ms, a third of a short program's run)."""
    import select

    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # not Linux 5.3+: Popen's polling wait
        try:
            process.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _exit_status(returncode: int) -> tuple[int, str | None]:
    """The program's exit status: a negative return code is the signal that killed it. Behind unshare or bwrap the
    program is not leaf's child: a signal death shows as exit code 128 + N."""
    if returncode < 0:
        return returncode, signal.Signals(-returncode).name
    if returncode > 128 and returncode - 128 in {s.value for s in signal.Signals}:
        number = returncode - 128
        return -number, signal.Signals(number).name
    return returncode, None


def run_programs(sources: Sequence[str], *, stdins: Sequence[str] | None = None, limits: Limits = Limits(),
                 isolation: str = "auto", workers: int | None = None, progress: bool = False,
                 description: str = "running programs", on_result: Callable[[int, Execution], None] | None = None
                 ) -> list[Execution]:
    """Run programs in parallel (`workers` at once, default the CPU count), each in its own sandbox; results in
    input order. A progress bar on stderr with `progress`."""
    from concurrent.futures import ThreadPoolExecutor

    isolation = resolve_isolation(isolation)
    workers = max(1, min(workers or os.cpu_count() or 1, UID_SLOTS, len(sources) or 1))
    stdins = list(stdins) if stdins is not None else [""] * len(sources)
    if len(stdins) != len(sources):
        raise ValueError(f"{len(stdins)} stdins for {len(sources)} programs")
    slots = list(range(workers))
    lock = threading.Lock()
    results: list[Execution | None] = [None] * len(sources)

    def one(index: int) -> Execution:
        with lock:
            slot = slots.pop()
        try:
            return run_program(sources[index], stdin=stdins[index], limits=limits, isolation=isolation, slot=slot)
        finally:
            with lock:
                slots.append(slot)

    from rich.console import Console
    from rich.progress import Progress

    with Progress(disable=not progress, console=Console(stderr=True)) as bar, ThreadPoolExecutor(workers) as pool:
        task = bar.add_task(description, total=len(sources))
        futures = {pool.submit(one, i): i for i in range(len(sources))}
        from concurrent.futures import as_completed

        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_result is not None:
                on_result(index, results[index])
            bar.advance(task)
    return results  # type: ignore[return-value]


ALLOW_FLAG = "--allow-code-execution"


@dataclass(frozen=True)
class SandboxConfig:
    """The sandbox settings a command passes on (built from its --allow-code-execution / --sandbox-* options)."""

    allow: bool = False
    isolation: str = "auto"
    limits: Limits = field(default_factory=Limits)
    workers: int | None = None

    def require(self, what: str, count: int) -> None:
        """Stop unless the user allowed running model-written code: say what would run and how to allow it."""
        if not self.allow:
            raise LeafError(
                f"{what} would run {count} model-written program(s) (each in leaf's sandbox: its own process, "
                f"resource limits, a {self.limits.timeout_s:g} s timeout, no network where the kernel allows it). "
                f"Running code a model wrote is opt-in: add {ALLOW_FLAG} to allow it (see docs/code.md, what the "
                "sandbox guards against and what it does not).")

    def describe(self) -> dict:
        """What results files record about the sandbox."""
        return {"isolation": resolve_isolation(self.isolation), "limits": asdict(self.limits),
                "root_drops_to_own_uid": os.geteuid() == 0}


@dataclass(kw_only=True)
class SandboxOptions:
    """The sandbox options of a command that grades code (a base of its config dataclass: eval, serve, analyze)."""

    allow_code_execution: bool = field(default=False, metadata={"help": (
        "Run model-written programs against the tests of code rows, in leaf's sandbox (own process, resource "
        "limits, timeout, no network where the kernel allows). Off by default: a code task stops and says what "
        "would run.")})
    sandbox_isolation: str = field(default="auto", metadata={"help": (
        "Sandbox isolation: auto (the strongest that works here), bwrap (bubblewrap: namespaces, read-only file "
        "system), unshare (network and PID namespaces, needs root) or none (limits and process group only).")})
    sandbox_timeout: float = field(default=10.0, metadata={"help": "Wall-clock seconds per program run."})
    sandbox_memory_mb: int = field(default=4096, metadata={"help": "Address-space limit per program, in MB."})
    sandbox_workers: int | None = field(default=None, metadata={"help": (
        "Programs run at once (default: the CPU count).")})

    def sandbox(self) -> SandboxConfig:
        if self.sandbox_isolation not in ISOLATIONS:
            raise LeafError(f"--sandbox-isolation must be one of {', '.join(ISOLATIONS)}, got "
                            f"{self.sandbox_isolation!r}.")
        if self.sandbox_workers is not None and self.sandbox_workers < 1:
            raise LeafError(f"--sandbox-workers must be at least 1, got {self.sandbox_workers}.")
        if not self.sandbox_timeout > 0:
            raise LeafError(f"--sandbox-timeout must be positive (seconds), got {self.sandbox_timeout}.")
        if self.sandbox_memory_mb < 64:
            raise LeafError(f"--sandbox-memory-mb must be at least 64 (an interpreter needs it), got "
                            f"{self.sandbox_memory_mb}.")
        return SandboxConfig(allow=self.allow_code_execution, isolation=self.sandbox_isolation,
                             limits=Limits(timeout_s=self.sandbox_timeout, memory_mb=self.sandbox_memory_mb),
                             workers=self.sandbox_workers)
