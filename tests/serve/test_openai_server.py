"""`leaf serve --openai`: vLLM's OpenAI-compatible server on loopback, started once for this module (a start costs
three interpreters importing vLLM: ~40 s here). Its greedy completion is HF's, its API key is enforced, and SIGTERM to
leaf stops vLLM too. The SIGTERM test stops the shared server, so it comes last in this file."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from leaf.end_of_turn import stop_ids
from leaf.serve.engines import HFEngine
from leaf.serve.openai_server import stop
from leaf.serve.prompts import render
from tests.shared import free_port

pytest.importorskip("vllm")

KEY = "sesame"


@pytest.fixture(scope="module")
def server(analyzed, tmp_path_factory):
    """(process, port, output folder, model): `leaf serve --openai --api-key` on the shared analyze run's student,
    as a user starts it, once healthy."""
    import os

    port = free_port()
    out = tmp_path_factory.mktemp("openai") / "server"
    process = subprocess.Popen([sys.executable, "-m", "leaf", "serve", "--openai", "--model", analyzed.student,
                                "--port", str(port), "--output", str(out), "--api-key", KEY],
                               env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "the server did not answer /health within 300 s"
                time.sleep(0.5)
        yield process, port, out, analyzed.student
    finally:  # the SIGTERM test stopped it, unless it was deselected or failed first
        stop(process)


def _request(port: int, path: str, body: dict | None = None, key: str | None = KEY) -> urllib.request.Request:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    return urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)


def test_openai_server_answers_like_hf_greedy(server):
    """Its greedy completion of a rendered prompt is HF's greedy text."""
    _, port, _, student = server
    hf = HFEngine(student)
    prompt = render(hf.tokenizer, "Tom has 3 apples and buys 2 more. How many apples?")
    expected = hf.generate([prompt], [12])[0][0]
    body = {"model": student, "prompt": prompt, "max_tokens": 12, "temperature": 0, "skip_special_tokens": True,
            "stop_token_ids": stop_ids(hf.tokenizer)}
    reply = json.loads(urllib.request.urlopen(_request(port, "/v1/completions", body), timeout=120).read())
    assert reply["choices"][0]["text"] == expected.text


def test_sigterm_stops_the_openai_server_and_its_api_key_is_enforced(server):
    """An API key is enforced; SIGTERM to `leaf serve --openai` stops vLLM too (it used to keep listening,
    re-parented to PID 1), and leaf's log of the server is kept. (A server that dies on its own is reported with its
    exit code and log: tests/test_faults.py.)"""
    process, port, out, _ = server
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(_request(port, "/v1/models", key=None), timeout=10)
    assert denied.value.code == 401
    assert json.loads(urllib.request.urlopen(_request(port, "/v1/models"), timeout=10).read())["data"]
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # nothing listens any more
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                time.sleep(0.5)
        except OSError:
            break
    else:
        pytest.fail("the vLLM server still listens after SIGTERM to leaf")
    assert (out / "openai_server.log").stat().st_size > 0
