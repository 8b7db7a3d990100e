"""`surefoot serve` as a real process: gunicorn, the openai client, SIGTERM while streaming."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(*extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    cmd = [sys.executable, "-m", "surefoot", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--embedding-model", "", "--n-ctx", "512", "--max-tokens", "256", *extra]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read().decode() if proc.stdout else "exited")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("replica did not become ready in 60 s")


@pytest.fixture(scope="module")
def replica():
    proc, url = _start()
    yield url
    proc.terminate()
    proc.wait(30)


def test_openai_client_completion_and_chat(replica):
    client = openai.OpenAI(base_url=f"{replica}/v1", api_key="unused")
    out = client.completions.create(model="gemma-3-270m", prompt="Hello", max_tokens=3)
    assert out.choices[0].text
    assert out.usage.completion_tokens > 0
    chat = client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Hi"}], max_tokens=3)
    assert chat.choices[0].message.role == "assistant"
    models = [m.id for m in client.models.list()]
    assert models == ["gemma-3-270m"]


def test_openai_client_streams(replica):
    client = openai.OpenAI(base_url=f"{replica}/v1", api_key="unused")
    stream = client.chat.completions.create(
        model="gemma-3-270m", messages=[{"role": "user", "content": "Count to five"}],
        max_tokens=6, stream=True)
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_openai_client_sees_bad_request(replica):
    client = openai.OpenAI(base_url=f"{replica}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="gemma-3-270m", prompt="x", max_tokens=0)
    assert "max_tokens" in str(info.value)


def test_sigterm_during_stream_finishes_the_stream_then_exits_zero():
    proc, url = _start("--grace-seconds", "60")
    body = {"prompt": "Write a long story about a dragon.", "max_tokens": 48, "stream": True,
            "temperature": 0, "stop": []}
    events: list[str] = []
    first = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    first.set()

    t = threading.Thread(target=consume)
    t.start()
    assert first.wait(60)
    proc.send_signal(signal.SIGTERM)
    # readiness goes false at once, new work is refused with a retryable 503
    deadline = time.monotonic() + 5
    ready_status = None
    while time.monotonic() < deadline:
        try:
            ready_status = httpx.get(f"{url}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            ready_status = -1
        if ready_status != 200:
            break
        time.sleep(0.02)
    assert ready_status == 503
    refused = httpx.post(f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert refused.status_code == 503
    assert refused.headers["Retry-After"]
    t.join(120)
    assert events[-1] == "[DONE]", events[-3:]
    assert len(events) > 10
    assert proc.wait(60) == 0


def test_bad_model_path_fails_fast_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "surefoot", "serve", "--model", "/nonexistent/model.gguf"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
