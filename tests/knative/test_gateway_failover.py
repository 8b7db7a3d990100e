"""Faults that pile up: the gateway answers 503 only when no ready replica of any revision can
take the request. Real HTTP upstreams (stub servers, one of them a process killed with SIGKILL),
a real Redis for the breakers, and a clock that moves only when the gateway sleeps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from knative import Replica, Target
from knative.breakers import BreakerRegistry, BreakerRegistrySettings, BreakerSettings
from knative.gateway import (
    Endpoint,
    Gateway,
    GatewaySettings,
    GatewaySettingsError,
    PlatformResolver,
    Route,
    RoutingTable,
    StaticResolver,
    create_gateway_app,
    gateway_of,
)
from tests.conftest import FakeTime, wait_for
from tests.knative.stub_upstream import StubUpstream

BODY = {"model": "m", "prompt": "hi", "max_tokens": 4}
FAST: dict[str, Any] = dict(try_timeout=2.0, deadline=3.0, connect_timeout=0.5, backoff_base=0.001,
                            backoff_max=0.002, queue_timeout=10.0, queue_poll=0.05)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stubs() -> Iterator[dict[str, StubUpstream]]:
    s = {n: StubUpstream(name=n).start() for n in ("a", "b", "fb", "fb2")}
    yield s
    for stub in s.values():
        stub.stop()


@pytest.fixture
def registry(redis_url: str) -> Iterator[BreakerRegistry]:
    policy = BreakerSettings(window_size=10, minimum_calls=4, wait_in_open=30.0,
                             permitted_calls_in_half_open=1)
    reg = BreakerRegistry(BreakerRegistrySettings(redis_url=redis_url, policy=policy))
    assert reg.wait_ready()
    yield reg
    reg.close()


def ep(stub: StubUpstream, ready: bool = True, node: str | None = None) -> Endpoint:
    return Endpoint(stub.url, replica=stub.name, node=node, ready=ready)


def make(tbl: RoutingTable, breakers: BreakerRegistry | None = None,
         clock: FakeTime | None = None, **kw: Any) -> tuple[FlaskClient, Gateway, StaticResolver]:
    resolver = StaticResolver(tbl)
    sleep = (clock or FakeTime()).sleep
    app = create_gateway_app(GatewaySettings(**{**FAST, **kw}), resolver, breakers, sleep=sleep)
    return app.test_client(), gateway_of(app), resolver


def post(client: FlaskClient) -> Any:
    return client.post("/v1/completions", json=BODY)


def on_fallback(s: dict[str, StubUpstream], primary_ready: bool = True) -> RoutingTable:
    """The traffic all on the fallback; the primary a 0% target with replicas a and b."""
    fb = Route("fallback", 100, (ep(s["fb"]),))
    primary = Route("primary", 0, (ep(s["a"], primary_ready), ep(s["b"], primary_ready)))
    return RoutingTable((fb,), Route("fallback", 0, fb.endpoints), (primary,))


# --- the fallback falls over to the primary; 0% targets are used -----------------------------


class StubProcess:
    """A stub upstream in its own process, to be killed with SIGKILL like a lost replica."""

    def __init__(self, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.knative.stub_upstream", "--port", "0", "--name", name],
            cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), line
        self.url = line.split()[1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def test_fallback_killed_while_traffic_is_on_it_the_primary_answers(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    fb = StubProcess("fbproc")
    try:
        fb_route = Route("fallback", 100, (Endpoint(fb.url, "fbproc"),))
        primary = Route("primary", 0, (ep(stubs["a"]), ep(stubs["b"])))
        client, gw, _ = make(RoutingTable((fb_route,), Route("fallback", 0, fb_route.endpoints),
                                          (primary,)), registry)
        r = post(client)
        assert r.headers["X-Surefoot-Revision"] == "fallback"
        fb.kill()  # the table still says ready: the platform has not noticed yet
        for _ in range(10):
            r = post(client)
            assert r.status_code == 200, r.data
            assert r.headers["X-Surefoot-Revision"] == "primary"
        assert gw.metrics.get("failover_after_failure") >= 1
    finally:
        fb.kill()


def test_fallback_known_lost_goes_straight_to_the_primary(stubs: dict[str, StubUpstream]) -> None:
    fb = Route("fallback", 100, (ep(stubs["fb"], ready=False),))
    primary = Route("primary", 0, (ep(stubs["a"]),))
    client, gw, _ = make(RoutingTable((fb,), Route("fallback", 0, fb.endpoints), (primary,)))
    r = post(client)
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Revision"] == "primary"
    assert stubs["fb"].requests == 0
    assert gw.metrics.get("failover_direct") == 1
    assert gw.readiness()[0]


def test_a_target_at_0_percent_is_used_before_failing(stubs: dict[str, StubUpstream]) -> None:
    primary = Route("primary", 100, (ep(stubs["a"], ready=False),))
    canary = Route("canary", 0, (ep(stubs["b"]),))
    client, _, _ = make(RoutingTable((primary,), None, (canary,)))
    r = post(client)
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Revision"] == "canary"


def test_a_stream_goes_to_the_primary_when_the_fallback_is_lost(
    stubs: dict[str, StubUpstream]
) -> None:
    stubs["fb"].stop()
    client, _, _ = make(on_fallback(stubs))
    r = client.post("/v1/completions", json={**BODY, "stream": True})
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Revision"] == "primary"
    assert r.data.decode().rstrip().endswith("data: [DONE]")


def test_failover_to_another_revision_is_not_bounded_by_the_retry_budget(
    stubs: dict[str, StubUpstream]
) -> None:
    stubs["a"].stop()
    tbl = RoutingTable((Route("primary", 100, (ep(stubs["a"]), ep(stubs["b"]))),),
                       Route("fallback", 0, (ep(stubs["fb"]),)))
    client, gw, _ = make(tbl, retry_budget_min=0, retry_budget_ratio=0.0)
    gw.inflight.try_started(stubs["b"].url)  # b looks busy: a is tried first
    r = post(client)
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Revision"] == "fallback"  # not b: a retry the budget denies
    assert stubs["b"].requests == 0
    assert gw.metrics.get("retry_budget_exhausted") == 1


def test_the_resolver_keeps_0_percent_targets_as_standby() -> None:
    class Platform:
        def replicas(self, service: str) -> list[Replica]:
            return [Replica("p-0", "n1", "primary", "http://127.0.0.1:9001", True),
                    Replica("f-0", "n2", "fallback", "http://127.0.0.1:9002", False)]

        def traffic(self, service: str) -> list[Target]:
            return [Target("primary", 0), Target("fallback", 100, "fallback")]

    t = PlatformResolver(Platform(), "svc", start=False).refresh()  # type: ignore[arg-type]
    assert [r.revision for r in t.routes] == ["fallback"]
    assert [(r.revision, r.percent) for r in t.standby] == [("primary", 0)]
    assert [e.replica for e in t.standby[0].ready()] == ["p-0"]
    assert t.ready_endpoints() == 1


# --- breakers never take the service down while a replica is ready ---------------------------


def test_every_breaker_opened_by_failures_while_replicas_are_ready_is_still_served(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    """The issue's second scenario: traffic 10/90, replicas of both revisions ready, and the
    breakers of both revisions opened by the failures of the gateway's own tries."""
    tbl = RoutingTable((Route("primary", 10, (ep(stubs["a"]), ep(stubs["b"]))),
                        Route("fallback", 90, (ep(stubs["fb"]), ep(stubs["fb2"])))),
                       Route("fallback", 0, (ep(stubs["fb"]), ep(stubs["fb2"]))))
    client, gw, _ = make(tbl, registry)
    for s in stubs.values():
        s.mode = "die_before_response"
    for _ in range(12):
        post(client)
        registry.flush()
        if all(registry.state(f"revision:{r}") == "open" for r in ("primary", "fallback")):
            break
    states = {k: registry.state(k) for k in ("revision:primary", "revision:fallback")}
    assert set(states.values()) == {"open"}, states
    view = registry.view()
    assert "failure rate" in view["revision:primary"].reason
    gens = {k: s.generation for k, s in view.items()}
    for s in stubs.values():
        s.mode = "ok"  # the replicas are fine again; the breakers still wait in open
    for _ in range(10):
        r = post(client)
        assert r.status_code == 200, r.data
    assert gw.metrics.get("last_resort") == 10
    registry.flush()
    # the last resort's tries are not counted: no breaker moved
    assert {k: s.generation for k, s in registry.view().items()} == gens


def test_a_primary_half_open_while_the_fallback_is_down(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry, redis_url: str
) -> None:
    stubs["fb"].stop()
    tbl = RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),),
                       Route("fallback", 0, (ep(stubs["fb"]),)))
    client, _, _ = make(tbl, registry)
    registry.open("revision:primary", "test")
    registry.half_open("revision:primary", "test")
    other = BreakerRegistry(registry.settings, start=False)
    try:
        other.refresh()
        probe = other.acquire("revision:primary")  # another gateway takes the only probe
        assert probe is not None
        assert probe.generation == registry.generation("revision:primary")
        assert other.acquire("revision:primary") is None
        r = post(client)
        assert r.status_code == 200, r.data
        assert r.headers["X-Surefoot-Revision"] == "primary"
        assert registry.state("revision:primary") == "half_open"
    finally:
        other.close()


def test_a_half_open_probe_that_succeeds_closes_the_primary(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    stubs["fb"].stop()
    tbl = RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),),
                       Route("fallback", 0, (ep(stubs["fb"]),)))
    client, _, _ = make(tbl, registry)
    registry.open("revision:primary", "test")
    registry.half_open("revision:primary", "test")
    assert post(client).headers["X-Surefoot-Revision"] == "primary"
    registry.flush()
    assert wait_for(lambda: registry.state("revision:primary") == "closed", 3, "closed")


def test_forced_open_everywhere_is_a_503_at_once_naming_the_breakers(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    clock = FakeTime()
    client, _, _ = make(RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),)), registry,
                        clock)
    registry.force_open("revision:primary", "operator")
    r = post(client)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert "forced open (revision:primary)" in r.json["error"]["message"]
    assert clock.sleeps == []
    assert stubs["a"].requests == 0


# --- short of capacity: wait, bounded, then shed ----------------------------------------------


def test_requests_wait_and_succeed_when_capacity_returns(stubs: dict[str, StubUpstream]) -> None:
    clock = FakeTime()
    client, gw, resolver = make(on_fallback(stubs, primary_ready=False), None, clock)
    stubs["fb"].stop()
    resolver.set(RoutingTable((Route("fallback", 100, (ep(stubs["fb"], ready=False),)),), None,
                              (Route("primary", 0, (ep(stubs["a"], False),)),)))

    def back(_: float) -> None:
        if len(clock.sleeps) == 4:  # a replica of the primary became ready
            resolver.set(on_fallback(stubs, primary_ready=True))

    clock.on_sleep = back
    r = post(client)
    assert r.status_code == 200, r.data
    assert r.headers["X-Surefoot-Revision"] == "primary"
    assert len(clock.sleeps) == 4
    assert sum(clock.sleeps) == pytest.approx(4 * FAST["queue_poll"])
    assert gw.metrics.get("queued") == 1
    assert gw.inflight.waiting == 0


def test_a_replica_lost_mid_request_and_back_at_the_same_url_is_waited_for(
    stubs: dict[str, StubUpstream]
) -> None:
    port = stubs["a"].port
    stubs["a"].stop()
    clock = FakeTime()
    client, _, resolver = make(RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),)),
                               None, clock)

    def restarted(_: float) -> None:
        if len(clock.sleeps) == 3:
            stubs["a"] = StubUpstream(port, name="a").start()
            resolver.set(RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),)))

    clock.on_sleep = restarted
    r = post(client)
    assert r.status_code == 200, r.data
    assert r.headers["X-Surefoot-Replica"] == "a"


@pytest.mark.parametrize(("settings", "bound"), [
    ({"deadline": 3.0, "queue_timeout": 10.0}, "its 3.0 s deadline"),
    ({"deadline": 3.0, "queue_timeout": 0.5}, "the queue timeout of 0.5 s"),
])
def test_shed_with_retry_after_when_the_wait_runs_out(
    stubs: dict[str, StubUpstream], settings: dict[str, float], bound: str
) -> None:
    clock = FakeTime()
    client, gw, _ = make(RoutingTable((Route("primary", 100, (ep(stubs["a"], False),)),)),
                         None, clock, **settings)
    r = post(client)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.json["error"]["type"] == "no_ready_replica"
    assert bound in r.json["error"]["message"]
    assert sum(clock.sleeps) <= min(settings.values()) + 1e-9
    assert sum(clock.sleeps) == pytest.approx(min(settings.values()), abs=0.06)
    assert gw.metrics.get("shed_deadline") == 1
    assert stubs["a"].requests == 0


def test_the_queue_full_is_a_503_at_once(stubs: dict[str, StubUpstream]) -> None:
    release = threading.Event()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # the first waiter holds its place until released
        sleeps.append(seconds)
        release.wait(10)

    resolver = StaticResolver(RoutingTable((Route("primary", 100, (ep(stubs["a"], False),)),)))
    app = create_gateway_app(GatewaySettings(**{**FAST, "queue_size": 1}), resolver,
                             sleep=sleep)
    gw = gateway_of(app)
    first: list[Any] = []
    t = threading.Thread(target=lambda: first.append(post(app.test_client())))
    t.start()
    try:
        wait_for(lambda: gw.inflight.waiting == 1, 5, "the first request waiting")
        n = len(sleeps)
        r = post(app.test_client())
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
        assert "wait queue is full (1 requests" in r.json["error"]["message"]
        assert len(sleeps) == n  # answered without waiting
        assert gw.metrics.get("shed_queue_full") == 1
        resolver.set(RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),)))
    finally:
        release.set()
        t.join(10)
    assert first[0].status_code == 200


def test_no_queue_sheds_at_once(stubs: dict[str, StubUpstream]) -> None:
    clock = FakeTime()
    client, _, _ = make(RoutingTable((Route("primary", 100, (ep(stubs["a"], False),)),)),
                        None, clock, queue_size=0)
    r = post(client)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert "waiting for one is off (queue_size 0)" in r.json["error"]["message"]
    assert clock.sleeps == []


def test_a_full_replica_is_asked_again_when_it_has_room(stubs: dict[str, StubUpstream]) -> None:
    """A replica's 503 (its queue full) is short capacity, not none: the request waits, backing
    off, and is served once the replica has room."""
    stubs["a"].mode = "503"
    clock = FakeTime()

    def room(_: float) -> None:
        if len(clock.sleeps) == 3:
            stubs["a"].mode = "ok"

    clock.on_sleep = room
    client, gw, _ = make(RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),)), None, clock,
                         backoff_base=0.0, backoff_max=0.0, retry_budget_min=100)
    r = post(client)
    assert r.status_code == 200
    assert stubs["a"].requests == 4
    assert gw.metrics.get("queued_busy") >= 3
    assert clock.sleeps[:2] == sorted(clock.sleeps[:2])  # backing off


def test_a_replica_that_stays_full_has_its_503_passed_on(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = "503"
    clock = FakeTime()
    client, _, _ = make(RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),)), None, clock,
                        backoff_base=0.0, backoff_max=0.0)
    r = post(client)
    assert r.status_code == 503
    assert r.json["error"]["type"] == "upstream_unavailable"
    assert 0 < len(clock.sleeps) < 100  # bounded by the retry budget and the queue timeout
    clock = FakeTime()
    client, _, _ = make(RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),)), None, clock,
                        backoff_base=0.0, backoff_max=0.0, queue_size=0)
    assert post(client).status_code == 503
    assert clock.sleeps == []  # no waiting at all with the queue off


def test_queue_settings_are_checked_and_read_from_the_environment() -> None:
    with pytest.raises(GatewaySettingsError) as e:
        GatewaySettings(queue_size=-1, queue_timeout=0, queue_poll=2)
    for name in ("queue_size", "queue_timeout", "queue_poll"):
        assert name in str(e.value)
    s = GatewaySettings.from_env({"SUREFOOT_GATEWAY_QUEUE_SIZE": "8",
                                  "SUREFOOT_GATEWAY_QUEUE_TIMEOUT": "2.5"})
    assert (s.queue_size, s.queue_timeout) == (8, 2.5)
    with pytest.raises(GatewaySettingsError) as e:
        GatewaySettings.from_env({"SUREFOOT_GATEWAY_QUEUE_SIZE": "lots"})
    assert "SUREFOOT_GATEWAY_QUEUE_SIZE" in str(e.value)
