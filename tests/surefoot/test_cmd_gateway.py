"""``surefoot gateway``: bad input exits 2 with one line; a real server routes and falls back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from surefoot.cli import main
from tests.knative.stub_upstream import StubUpstream


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "no target given"),
        (["--target", "primary"], "expected REVISION=PERCENT=URL"),
        (["--target", "p=abc=http://127.0.0.1:1"], "percent 'abc' is not an integer"),
        (["--target", "p=50=http://127.0.0.1:1"], "sum to 50, not 100"),
        (["--target", "p=100=ftp://x"], "is not an http://host:port URL"),
        (["--target", "p=100=http://127.0.0.1:1", "--fallback", "nourl"], "fallback 'nourl'"),
        (["--target", "p=100=http://127.0.0.1:1", "--deadline", "-1"], "deadline"),
        (["--target", "p=100=http://127.0.0.1:1", "--port", "70000"], "port: 70000"),
        (["--target", "p=100=http://127.0.0.1:1", "--own-port", "70000"], "own_port: 70000"),
        (["--target", "p=100=http://127.0.0.1:1", "--port", "8123", "--own-port", "8123"],
         "own_port: 8123"),
        (["--target", "p=100=http://127.0.0.1:1", "--events-sink", "nats://x"], "--events-sink"),
        (["--platform", "knative"], "needs --service"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["gateway", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err, err
    assert len(err.splitlines()) == 1, err


def test_bad_env_value(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SUREFOOT_GATEWAY_MAX_TRIES", "many")
    assert main(["gateway", "--target", "p=100=http://127.0.0.1:1"]) == 2
    assert "SUREFOOT_GATEWAY_MAX_TRIES" in capsys.readouterr().err


def test_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["gateway", "--target", "p=100=http://127.0.0.1:1", "--port",
                     str(port), "--no-breakers"]) == 2
    assert "already in use" in capsys.readouterr().err


def _call(url: str, body: Any = None, headers: dict[str, str] | None = None,
          timeout: float = 5.0) -> tuple[int, dict[str, str], Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json",
                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


@pytest.fixture
def upstreams() -> Iterator[tuple[StubUpstream, StubUpstream]]:
    a = StubUpstream(name="primary-0").start()
    fb = StubUpstream(name="fallback-0").start()
    yield a, fb
    a.stop()
    fb.stop()


def test_gateway_process_routes_and_falls_back(
    upstreams: tuple[StubUpstream, StubUpstream], redis_url: str, free_port: int
) -> None:
    a, fb = upstreams
    env = {**os.environ, "SUREFOOT_REDIS_URL": redis_url,
           "SUREFOOT_GATEWAY_ADMIN_TOKEN": "token-for-tests"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "surefoot", "--log-level", "WARNING", "gateway", "--port",
         str(free_port), "--workers", "2", "--target", f"primary=100={a.url}",
         "--fallback", f"fallback={fb.url}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{free_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if _call(base + "/readyz")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.1)
        status, headers, body = _call(base + "/v1/completions", {"prompt": "hi"})
        assert status == 200
        assert headers["X-Surefoot-Revision"] == "primary"
        auth = {"Authorization": "Bearer token-for-tests"}
        status, _, body = _call(base + "/admin/breakers/revision:primary",
                                {"action": "force_open"}, auth)
        assert status == 200
        assert body["status"]["state"] == "forced_open"
        # Both worker processes learn it by push; every client request gets the fallback.
        time.sleep(0.2)
        for _ in range(20):
            status, headers, body = _call(base + "/v1/completions", {"prompt": "hi"})
            assert status == 200, body
            assert headers["X-Surefoot-Revision"] == "fallback"
            assert body["choices"][0]["text"] == "hello from fallback-0"
        assert _call(base + "/admin/breakers", headers={})[0] == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
