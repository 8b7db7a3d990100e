"""The operator's forced breakers outlive Redis: kept in a ConfigMap on a cluster (the fake
API server, held to the real schemas) and in a file under ``surefoot up``, written back into a
real Redis that comes back empty, and never taken for empty when the home cannot be read."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from knative import PlatformError
from knative.breakers import (
    BreakerRegistrySettings,
    BreakerStore,
    DurableBreakers,
    DurableHome,
    FileHome,
)
from knative.platforms.kube import ConfigMapHome
from tests.kube_fake import FakeKubeServer


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer() as server:
        yield server


def _homes(kube: FakeKubeServer, tmp_path: Path) -> dict[str, DurableHome]:
    from kubernetes import client, config

    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "surefoot"}})
    path = kube.write_kubeconfig(tmp_path / "kubeconfig", namespace="surefoot")
    api = config.new_client_from_config(config_file=path)
    assert isinstance(api, client.ApiClient)
    return {"configmap": ConfigMapHome(api, "surefoot", "surefoot-llm-forced-breakers"),
            "file": FileHome(tmp_path / "forced.json")}


@pytest.mark.parametrize("home_kind", ["configmap", "file"])
def test_forced_states_come_back_into_an_empty_redis(kube: FakeKubeServer, tmp_path: Path,
                                                     redis_url: str, home_kind: str) -> None:
    home = _homes(kube, tmp_path)[home_kind]
    settings = BreakerRegistrySettings(redis_url=redis_url, prefix=f"t{home_kind}:breaker")
    store = BreakerStore.from_url(settings)
    durable = DurableBreakers(home, settings)
    durable.sync()  # a fresh Redis: the marker is set, nothing to restore
    store.force_open("revision:surefoot-llm-v1", "operator: bad build")
    store.act("node:gpu-2", "force_closed", "operator: known good")
    durable.sync()
    assert set(durable.read()) == {"revision:surefoot-llm-v1", "node:gpu-2"}
    # Redis loses everything (a fresh server, a flush)
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"t{home_kind}:*"):
        client.delete(key)
    assert store.status("revision:surefoot-llm-v1").state == "closed"
    DurableBreakers(home, settings).sync()  # another process, after a restart
    assert store.status("revision:surefoot-llm-v1").state == "forced_open"
    assert store.status("node:gpu-2").state == "forced_closed"
    # a forced state released by the operator is released in the home too
    store.act("node:gpu-2", "reset", "operator: done")
    durable.sync()
    assert set(durable.read()) == {"revision:surefoot-llm-v1"}
    durable.close()


def test_an_unreadable_configmap_is_an_error_not_empty(tmp_path: Path) -> None:
    from kubernetes import client

    conf = client.Configuration()
    conf.host = "http://127.0.0.1:9"  # nothing listens
    home = ConfigMapHome(client.ApiClient(conf), "surefoot", "x", timeout=1.0)
    with pytest.raises(PlatformError):
        home.read()


def test_the_functions_host_keeps_and_restores_them(kube: FakeKubeServer, tmp_path: Path,
                                                    redis_url: str) -> None:
    """`surefoot functions` on a cluster: a forced breaker reaches the ConfigMap, and comes
    back after Redis lost it."""
    import os
    import socket
    import subprocess
    import sys
    import time

    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "surefoot"}})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SUREFOOT_")},
           "SUREFOOT_KUBECONFIG": kube.write_kubeconfig(tmp_path / "kubeconfig"),
           "SUREFOOT_NAMESPACE": "surefoot", "SUREFOOT_SERVICE": "surefoot-llm",
           "SUREFOOT_REDIS_URL": redis_url}
    proc = subprocess.Popen([sys.executable, "-m", "surefoot", "functions", "--host",
                             "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = BreakerStore.from_url(BreakerRegistrySettings(redis_url=redis_url))
    key = "revision:surefoot-llm-fallback-v1"

    def until(predicate: object, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():  # type: ignore[operator]
            assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    def kept() -> bool:
        try:
            cm = kube.get("configmaps", "surefoot-llm-forced-breakers", "surefoot")
        except Exception:
            return False
        return key in cm.get("data", {}).get("state.json", "")

    try:
        store.force_open(key, "operator: fallback image is bad")
        until(kept, "the forced breaker never reached the ConfigMap")
        client = redis.Redis.from_url(redis_url)
        for k in client.scan_iter("surefoot:breaker:*"):
            client.delete(k)
        until(lambda: store.status(key).state == "forced_open", "not restored")
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
