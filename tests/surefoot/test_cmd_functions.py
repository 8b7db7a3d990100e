"""``surefoot functions`` and ``surefoot release``: bad input exits 2 with one line; a real host
process serves events against the fake Kubernetes API; release through a host or directly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import events as ev
from functions import FunctionSettings, FunctionsServer, build_context, quarantine_node
from knative.breakers import BreakerRegistrySettings
from knative.platforms.kube import KnativePlatform
from surefoot.cli import main
from tests.functions._helpers import lost, make_cluster
from tests.kube_fake import FakeKubeServer

LABEL = "surefoot.dev/gpu-error"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SUREFOOT_") or key in ("PORT", "KUBECONFIG"):
            monkeypatch.delenv(key)


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer() as server:
        make_cluster(server)
        yield server


@pytest.mark.parametrize(("argv", "env", "fragment"), [
    (["--port", "70000"], {}, "not a TCP port"),
    ([], {"SUREFOOT_MAX_QUARANTINED": "many"}, "SUREFOOT_MAX_QUARANTINED"),
    ([], {"SUREFOOT_RESTORE_STEPS": "50,10"}, "restore_steps"),
    ([], {"SUREFOOT_DRY_RUN": "perhaps"}, "not a boolean"),
    (["--platform", "local"], {"SUREFOOT_REDIS_URL": "redis://127.0.0.1:1"},
     "runs inside `surefoot up`"),
    ([], {}, "SUREFOOT_REDIS_URL"),
    (["--redis-url", "http://x"], {}, "redis_url"),
    (["--sink", "nats://x"], {}, "sink"),
    ([], {"PORT": "eighty"}, "PORT"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], env: dict[str, str], fragment: str,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["functions", "--host", "127.0.0.1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err, err
    assert len(err.splitlines()) == 1, err


def test_port_in_use(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["functions", "--host", "127.0.0.1", "--port", str(port),
                     "--redis-url", redis_url]) == 2
    assert "already in use" in capsys.readouterr().err


def test_release_needs_a_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["release", " ", "--url", "http://127.0.0.1:9"]) == 2
    assert "NODE" in capsys.readouterr().err


def test_release_with_a_bad_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["release", "gpu-1", "--url", "ftp://x"]) == 2
    assert main(["release", "gpu-1", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err


@pytest.fixture
def running_host(kube: FakeKubeServer, redis_url: str) -> Iterator[tuple[str, KnativePlatform,
                                                                         FunctionSettings]]:
    settings = FunctionSettings(redis_url=redis_url, admin_token="tok", sweep_interval_s=0)
    platform = KnativePlatform(kube.api_client(), "default", sleep=lambda s: None)
    ctx = build_context(settings, platform,
                        breaker_settings=BreakerRegistrySettings(redis_url=redis_url))
    quarantine_node.handle(lost("gpu-1"), ctx)
    with FunctionsServer(settings, ctx) as server:
        yield server.url, platform, settings
    ctx.close()


def test_release_through_a_running_host(running_host: tuple[str, KnativePlatform, object],
                                        kube: FakeKubeServer, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = running_host[0]
    assert main(["release", "gpu-1", "--url", url]) == 2
    assert "SUREFOOT_ADMIN_TOKEN" in capsys.readouterr().err
    monkeypatch.setenv("SUREFOOT_ADMIN_TOKEN", "tok")
    assert main(["release", "nowhere", "--url", url]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("SUREFOOT_FUNCTIONS_URL", url)
    assert main(["release", "gpu-1"]) == 0
    assert "gpu-1: acted" in capsys.readouterr().out
    node = kube.get("nodes", "gpu-1", None)
    assert LABEL not in node["metadata"]["labels"]
    assert not node["spec"].get("unschedulable")


def test_release_directly_on_the_cluster(kube: FakeKubeServer, redis_url: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    settings = FunctionSettings(redis_url=redis_url)
    platform = KnativePlatform(kube.api_client(), "default", sleep=lambda s: None)
    ctx = build_context(settings, platform,
                        breaker_settings=BreakerRegistrySettings(redis_url=redis_url))
    quarantine_node.handle(lost("gpu-2"), ctx)
    ctx.close()
    monkeypatch.setenv("SUREFOOT_KUBECONFIG", kube.write_kubeconfig(tmp_path / "kubeconfig"))
    monkeypatch.setenv("SUREFOOT_REDIS_URL", redis_url)
    assert main(["release", "gpu-2"]) == 0
    assert not kube.get("nodes", "gpu-2", None)["spec"].get("unschedulable")
    assert main(["release", "nowhere"]) == 2
    assert "does not exist" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_functions_process_serves_and_stops_on_sigterm(kube: FakeKubeServer, redis_url: str,
                                                       tmp_path: Path) -> None:
    port = _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SUREFOOT_")},
           "SUREFOOT_KUBECONFIG": kube.write_kubeconfig(tmp_path / "kubeconfig"),
           "SUREFOOT_REDIS_URL": redis_url, "SUREFOOT_SWEEP_INTERVAL_S": "0.2"}
    proc = subprocess.Popen([sys.executable, "-m", "surefoot", "functions", "--host",
                             "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "host did not start"
            assert proc.poll() is None, "host did not start"
            time.sleep(0.1)
        msg = ev.to_binary(lost("gpu-3"))
        r = httpx.post(f"{url}/quarantine_node", content=msg.body, headers=msg.headers,
                       timeout=30)
        assert r.status_code == 200
        assert r.headers["ce-type"] == ev.NodeQuarantined.TYPE
        assert kube.get("nodes", "gpu-3", None)["spec"].get("unschedulable") is True
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out.decode()
    assert b"surefoot functions on http://127.0.0.1" in out
