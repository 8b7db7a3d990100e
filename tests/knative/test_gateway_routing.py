"""Routing tables: the static flags, and the resolver over the platform seam."""

from __future__ import annotations

from typing import Any

import pytest

from knative import Replica, Target, TemporaryPlatformError
from knative.gateway import Endpoint, PlatformResolver, Route, RoutingSpecError, static_table
from knative.gateway._upstream import PoolExhausted, UpstreamPool


class ScriptedPlatform:
    """Answers ``replicas`` and ``traffic`` from attributes the test sets (the rest of the
    Platform protocol is not used by the resolver)."""

    def __init__(self) -> None:
        self.reps: list[Replica] = []
        self.targets: list[Target] = []
        self.fail: Exception | None = None

    def replicas(self, service: str) -> list[Replica]:
        if self.fail:
            raise self.fail
        return list(self.reps)

    def traffic(self, service: str) -> list[Target]:
        if self.fail:
            raise self.fail
        return list(self.targets)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the resolver must not call platform.{name}")


def test_static_table_from_flags() -> None:
    t = static_table(
        ["primary=90=http://127.0.0.1:9001,http://127.0.0.1:9002/", "canary=10=http://h:9003"],
        "fallback=http://127.0.0.1:9100",
    )
    assert [(r.revision, r.percent) for r in t.routes] == [("primary", 90), ("canary", 10)]
    assert t.routes[0].endpoints[1] == Endpoint("http://127.0.0.1:9002", "127.0.0.1:9002")
    assert (t.routes[0].endpoints[0].host, t.routes[0].endpoints[0].port) == ("127.0.0.1", 9001)
    assert t.fallback == Route("fallback", 0, (Endpoint("http://127.0.0.1:9100",
                                                        "127.0.0.1:9100"),))
    assert t.ready_endpoints() == 4


@pytest.mark.parametrize(
    ("targets", "fallback", "fragment"),
    [
        ([], None, "no target given"),
        (["p=100=http://a:1", "p=0=http://b:2"], None, "name a revision twice"),
        (["p=101=http://a:1"], None, "not within 0..100"),
        (["p=100="], None, "no replica URL"),
        (["p=100=http://a:notaport"], None, "bad port"),
        (["p=100=http://a:1/v1"], None, "without a path"),
        (["p=100=http://a:1"], "=http://b:2", "expected REVISION=URL"),
    ],
)
def test_static_table_errors(targets: list[str], fallback: str | None, fragment: str) -> None:
    with pytest.raises(RoutingSpecError) as e:
        static_table(targets, fallback)
    assert fragment in str(e.value)


def test_platform_resolver_builds_routes_from_traffic_and_replicas() -> None:
    p = ScriptedPlatform()
    p.targets = [Target("r2", 100, "current"), Target("r1", 0, "previous"),
                 Target("fb", 0, "fallback")]
    p.reps = [
        Replica("r2-a", "n1", "r2", "http://10.0.0.1:8012", True),
        Replica("r2-b", "n2", "r2", "http://10.0.0.2:8012", False),  # not ready
        Replica("r2-c", "n3", "r2", "http://10.0.0.3:8012", True, phase="Terminating"),
        Replica("r2-d", None, "r2", None, False, phase="Pending"),  # no URL yet
        Replica("fb-a", "n4", "fb", "http://10.0.0.9:8012", True),
    ]
    res = PlatformResolver(p, "svc", start=False)
    t = res.refresh()
    assert [r.revision for r in t.routes] == ["r2"]  # 0% entries do not take traffic
    assert [(e.replica, e.node, e.ready) for e in t.routes[0].endpoints] == [
        ("r2-a", "n1", True), ("r2-b", "n2", False), ("r2-c", "n3", False)]
    assert t.fallback is not None
    assert t.fallback.revision == "fb"
    assert [e.replica for e in t.fallback.ready()] == ["fb-a"]
    assert res.table() is t


def test_platform_resolver_keeps_the_last_table_when_the_platform_fails() -> None:
    p = ScriptedPlatform()
    p.targets = [Target("r1", 100)]
    p.reps = [Replica("r1-a", "n1", "r1", "http://10.0.0.1:8012", True)]
    res = PlatformResolver(p, "svc", fallback_revision="small", start=False)
    good = res.refresh()
    assert good.fallback is not None
    assert good.fallback.endpoints == ()
    p.fail = TemporaryPlatformError("apiserver 503")
    with pytest.raises(TemporaryPlatformError):
        res.refresh()
    assert res.table() is good


def test_platform_resolver_thread_refreshes_and_survives_errors() -> None:
    import time

    p = ScriptedPlatform()
    p.targets = [Target("r1", 100)]
    p.fail = TemporaryPlatformError("not yet")
    res = PlatformResolver(p, "svc", interval=0.02)
    try:
        assert res.table().routes == ()
        p.fail = None
        p.reps = [Replica("r1-a", "n1", "r1", "http://10.0.0.1:8012", True)]
        deadline = time.monotonic() + 2
        while not res.table().routes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert res.table().routes[0].endpoints[0].replica == "r1-a"
    finally:
        res.close()


def test_pool_is_bounded() -> None:
    pool = UpstreamPool(max_per_host=2)
    a = pool.acquire("127.0.0.1", 9, 0.01)
    b = pool.acquire("127.0.0.1", 9, 0.01)
    with pytest.raises(PoolExhausted):
        pool.acquire("127.0.0.1", 9, 0.02)
    pool.release(a, False)
    c = pool.acquire("127.0.0.1", 9, 0.01)
    pool.release(b, False)
    pool.release(c, False)
    assert pool.created == 3
