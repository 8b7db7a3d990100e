"""The gateway against real HTTP upstreams (tests.knative.stub_upstream) and a real Redis."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from knative.breakers import BreakerRegistry, BreakerRegistrySettings, BreakerSettings
from knative.gateway import (
    Endpoint,
    Gateway,
    GatewaySettings,
    GatewaySettingsError,
    Route,
    RoutingTable,
    StaticResolver,
    create_gateway_app,
    gateway_of,
)
from knative.gateway._inflight import Ticket
from tests.knative.stub_upstream import StubUpstream

TOKEN = "s3cret-admin-token"
BODY = {"model": "m", "prompt": "hi", "max_tokens": 4}


def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


@pytest.fixture
def stubs() -> Iterator[dict[str, StubUpstream]]:
    s = {n: StubUpstream(name=n).start() for n in ("a", "b", "c", "fb")}
    yield s
    for stub in s.values():
        stub.stop()


def ep(stub: StubUpstream, node: str | None = None, ready: bool = True) -> Endpoint:
    return Endpoint(stub.url, replica=stub.name, node=node, ready=ready)


def table(stubs: dict[str, StubUpstream], names: str = "ab", fallback: bool = True) -> RoutingTable:
    return RoutingTable(
        (Route("primary", 100, tuple(ep(stubs[n]) for n in names)),),
        Route("fallback", 0, (ep(stubs["fb"]),)) if fallback else None,
    )


FAST_SETTINGS = dict(
    try_timeout=2.0, deadline=3.0, connect_timeout=0.5, backoff_base=0.001, backoff_max=0.002,
    admin_token=TOKEN,
)


class NoJitter(random.Random):
    """Draws 0.0 for every weighted choice and backoff (no wait between tries)."""

    def random(self) -> float:
        return 0.0


def make(
    tbl: RoutingTable, breakers: BreakerRegistry | None = None,
    rng: random.Random | None = None, **kw: Any
) -> tuple[Flask, FlaskClient, StaticResolver]:
    settings = GatewaySettings(**{**FAST_SETTINGS, **kw})
    resolver = StaticResolver(tbl)
    app = create_gateway_app(settings, resolver, breakers, rng=rng)
    return app, app.test_client(), resolver


def look_busy(gw: Gateway, url: str, tries: int) -> None:
    """Count ``tries`` tries in progress on ``url``, so the pick avoids it."""
    for _ in range(tries):
        gw.inflight.try_started(url)


@pytest.fixture
def registry(redis_url: str) -> Iterator[BreakerRegistry]:
    policy = BreakerSettings(window_size=20, minimum_calls=4, wait_in_open=30.0)
    reg = BreakerRegistry(BreakerRegistrySettings(redis_url=redis_url, policy=policy))
    assert reg.wait_ready()
    yield reg
    reg.close()


def post(client: FlaskClient, path: str = "/v1/completions", body: Any = None,
         **kw: Any) -> Any:
    return client.post(path, json=BODY if body is None else body, **kw)


# --- the plain path ----------------------------------------------------------------------------


def test_proxies_a_completion(stubs: dict[str, StubUpstream]) -> None:
    _, client, _ = make(table(stubs))
    r = post(client)
    assert r.status_code == 200
    assert r.json["choices"][0]["text"] in ("hello from a", "hello from b")
    assert r.headers["X-Surefoot-Revision"] == "primary"
    assert r.headers["X-Surefoot-Replica"] in ("a", "b")


def test_models_and_embeddings_paths_are_forwarded(stubs: dict[str, StubUpstream]) -> None:
    _, client, _ = make(table(stubs, "a"))
    r = client.get("/v1/models")
    assert r.status_code == 200
    assert r.json["data"][0]["id"] == "a"
    stubs["a"].record_bodies = True
    r = post(client, "/v1/embeddings", {"model": "e", "input": "x"})
    assert r.status_code == 200
    assert json.loads(stubs["a"].bodies[-1]) == {"model": "e", "input": "x"}


def test_weighted_split_across_revisions(stubs: dict[str, StubUpstream]) -> None:
    tbl = RoutingTable((Route("r1", 75, (ep(stubs["a"]),)), Route("r2", 25, (ep(stubs["b"]),))))
    _, client, _ = make(tbl)
    seen = {"r1": 0, "r2": 0}
    for _ in range(200):
        seen[post(client).headers["X-Surefoot-Revision"]] += 1
    assert 120 <= seen["r1"] <= 180, seen


def test_choices_come_from_the_injected_random_instance(stubs: dict[str, StubUpstream]) -> None:
    tbl = RoutingTable((Route("r1", 50, (ep(stubs["a"]), ep(stubs["b"]))),
                        Route("r2", 50, (ep(stubs["c"]), ep(stubs["fb"])))))

    def picks(seed: int) -> list[tuple[str, str]]:
        _, client, _ = make(tbl, rng=random.Random(seed))
        out = []
        for _ in range(30):
            h = post(client).headers
            out.append((h["X-Surefoot-Revision"], h["X-Surefoot-Replica"]))
        return out

    random.seed(1)
    first = picks(7)
    random.seed(2)  # the global generator plays no part
    assert picks(7) == first
    assert len(set(first)) == 4


def test_spreads_over_ready_replicas_and_skips_unready(stubs: dict[str, StubUpstream]) -> None:
    tbl = RoutingTable((Route("primary", 100, (ep(stubs["a"]), ep(stubs["b"]),
                                               ep(stubs["c"], ready=False))),))
    _, client, _ = make(tbl)
    for _ in range(60):
        assert post(client).status_code == 200
    assert stubs["c"].requests == 0
    assert stubs["a"].requests > 10
    assert stubs["b"].requests > 10


def test_idle_replicas_take_requests_in_turn(stubs: dict[str, StubUpstream]) -> None:
    _, client, _ = make(table(stubs, "abc"), rng=random.Random(3))
    for _ in range(9):
        assert post(client).status_code == 200
    assert [stubs[n].requests for n in "abc"] == [3, 3, 3]


def test_tries_that_pick_at_the_same_moment_spread() -> None:
    from knative.gateway._inflight import InFlight

    inflight = InFlight(0.2, 3)
    inflight.try_started("b")  # b is busy, a is not
    rng = random.Random(5)
    # the pick counts each try as it picks, so picks before any try began do not pile up
    got = [inflight.claim(["a", "b"], rng.choice) for _ in range(5)]
    assert got[0] == "a"
    assert sorted(got) == ["a", "a", "a", "b", "b"]
    assert inflight.tries("a") == 3
    assert inflight.tries("b") == 3


def test_every_try_counted_by_the_pick_ends(stubs: dict[str, StubUpstream]) -> None:
    # answers, 503s, a refused connection, streams that die before and after their first
    # event: no try stays counted in progress, so no replica looks busy for ever
    stubs["c"].stop()
    _, client, _ = make(table(stubs, "abc"))
    gw = gateway_of(client.application)
    for mode in ("ok", "503", "die_before_response", "die_mid_stream", "ok"):
        stubs["a"].mode = mode
        post(client)
        r = post(client, body={"prompt": "hi", "stream": True})
        assert r.data
        r.close()
    assert {u: gw.inflight.tries(u) for u in (stubs[n].url for n in "abc")} == {
        stubs[n].url: 0 for n in "abc"}


def test_a_resumed_stream_takes_the_least_busy_replica_of_any_revision(
        stubs: dict[str, StubUpstream]) -> None:
    # the broken stream's revision has only a busy replica left: an idle fallback replica
    # continues it rather than queueing it behind that one's work; among equally busy ones,
    # the stream's own revision does
    from knative.gateway._exchange import ProxyRequest

    tbl = table(stubs, "ab")
    _, client, _ = make(tbl)
    gw = gateway_of(client.application)
    look_busy(gw, stubs["b"].url, 1)
    body = json.dumps({"prompt": "hi", "stream": True}).encode()
    req = ProxyRequest("POST", "/v1/completions", body, {}, time.monotonic() + 5,
                       gw.inflight.begin())
    out = gw.reopen(req, body, {stubs["a"].url}, "primary")
    assert out is not None
    assert [n for n in ("b", "fb") if stubs[n].requests] == ["fb"]
    out.close()
    look_busy(gw, stubs["fb"].url, 1)  # as busy as b: its own revision's replica
    again = gw.reopen(req, body, {stubs["a"].url}, "primary")
    assert again is not None
    assert stubs["b"].requests == 1
    again.close()
    look_busy(gw, stubs["b"].url, 2)  # b busier than the fallback: the least busy
    third = gw.reopen(req, body, {stubs["a"].url}, "primary")
    assert third is not None
    assert (stubs["b"].requests, stubs["fb"].requests) == (1, 2)
    third.close()


def test_client_errors_pass_through_and_do_not_count(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    stubs["a"].mode = "400"
    _, client, _ = make(table(stubs, "a"), registry)
    for _ in range(10):
        r = post(client)
        assert r.status_code == 400
        assert r.json["error"]["code"] == 400
    registry.flush()
    assert registry.state("replica:a") == "closed"
    assert registry.state("revision:primary") == "closed"
    assert stubs["a"].requests == 10  # not retried


def test_500_is_passed_through_not_retried(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = "500"
    _, client, _ = make(table(stubs, "ab"), rng=random.Random(7))
    codes: set[int] = set()
    sent = 0
    while stubs["a"].requests == 0 and sent < 60:  # until the split has picked stub a
        codes.add(post(client).status_code)
        sent += 1
    assert 500 in codes
    assert stubs["a"].requests + stubs["b"].requests == sent


def test_bad_requests_to_the_gateway(stubs: dict[str, StubUpstream]) -> None:
    _, client, _ = make(table(stubs), max_body_bytes=100)
    r = client.delete("/v1/completions")
    assert r.status_code == 405
    assert "DELETE" in r.json["error"]["message"]
    r = post(client, body={"prompt": "x" * 200})
    assert r.status_code == 413
    assert "body" in r.json["error"]["message"]
    assert client.get("/nope").status_code == 404


# --- streams -------------------------------------------------------------------------------------


def sse_events(raw: bytes) -> list[str]:
    return [e[len("data: "):] for e in raw.decode().split("\n\n") if e.startswith("data: ")]


def test_stream_passes_through_event_by_event(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].stream_events = 3
    stubs["a"].stream_gap = 0.05
    _, client, _ = make(table(stubs, "a"))
    t0 = time.monotonic()
    r = post(client, body={**BODY, "stream": True}, buffered=False)
    assert r.status_code == 200
    assert r.mimetype == "text/event-stream"
    chunks = []
    first_at = None
    for chunk in r.response:
        if first_at is None:
            first_at = time.monotonic() - t0
        chunks.append(chunk)
    total = time.monotonic() - t0
    r.close()
    gw = gateway_of(client.application)
    assert (gw.active, gw.retrying, gw.inflight.tries(stubs["a"].url)) == (0, 0, 0)
    events = sse_events(b"".join(chunks))
    assert events[-1] == "[DONE]"
    assert len(events) == 4
    assert json.loads(events[0])["choices"][0]["text"] == "t0 "
    assert first_at is not None
    assert first_at < total - 0.08
    assert all(c.endswith(b"\n\n") for c in chunks)  # whole events only


def test_upstream_dies_mid_stream_gives_a_clean_error_event(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    stubs["a"].mode = "die_mid_stream"
    stubs["a"].die_after = 2
    _, client, _ = make(table(stubs, "a"), registry)
    t0 = time.monotonic()
    r = post(client, body={**BODY, "stream": True})
    assert time.monotonic() - t0 < 1.0
    events = sse_events(r.data)
    assert len(events) == 3
    assert json.loads(events[1])["choices"][0]["text"] == "t1 "
    err = json.loads(events[2])["error"]
    assert err["code"] == 502
    assert "closed the stream" in err["message"]
    assert "[DONE]" not in events
    assert stubs["a"].requests == 1  # never retried after the stream started
    gw = gateway_of(client.application)
    assert gw.active == 0
    assert gw.metrics.get("stream_broken") == 1
    assert gw.inflight.tries(stubs["a"].url) == 0  # the stream gave its try back


def test_stream_dying_before_its_first_event_is_retried(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = "die_mid_stream"
    stubs["a"].die_after = 0
    tbl = RoutingTable((Route("primary", 100, (ep(stubs["a"]),)),),
                       Route("fallback", 0, (ep(stubs["b"]),)))
    _, client, _ = make(tbl)
    r = post(client, body={**BODY, "stream": True})
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Revision"] == "fallback"
    assert sse_events(r.data)[-1] == "[DONE]"


def test_stream_that_stalls_is_ended_by_the_idle_timeout(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = "stall_mid_stream"
    stubs["a"].die_after = 2
    _, client, _ = make(table(stubs, "a"), stream_idle_timeout=0.2)
    t0 = time.monotonic()
    r = post(client, body={**BODY, "stream": True})
    events = sse_events(r.data)
    took = time.monotonic() - t0
    assert len(events) == 3
    assert json.loads(events[-1])["error"]["type"] == "upstream_timeout"
    assert 0.2 <= took < 0.6, took


# --- hangs, deaths, retries, fallback -----------------------------------------------------------


def test_upstream_that_hangs_cannot_outlive_the_deadline(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = "hang"
    _, client, _ = make(table(stubs, "a", fallback=False), try_timeout=0.3, deadline=0.4)
    t0 = time.monotonic()
    r = post(client)
    took = time.monotonic() - t0
    assert r.status_code == 504
    assert r.json["error"]["type"] == "upstream_timeout"
    assert took < 0.6, took


def test_hanging_stream_is_cut_at_the_deadline(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].stream_events = 50
    stubs["a"].stream_gap = 0.1
    _, client, _ = make(table(stubs, "a"), deadline=0.45, stream_idle_timeout=1.0)
    t0 = time.monotonic()
    r = post(client, body={**BODY, "stream": True})
    events = sse_events(r.data)
    took = time.monotonic() - t0
    assert json.loads(events[-1])["error"]["type"] == "deadline_exceeded"
    assert 0.4 <= took < 0.7, took


def test_replica_deleted_mid_request_is_retried(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = "hang"  # a long request in progress on a ...
    tbl = RoutingTable((Route("primary", 100, (ep(stubs["a"]), ep(stubs["b"]))),))
    _, client, _ = make(tbl, rng=NoJitter())
    gw = gateway_of(client.application)
    # Make a the first choice: b looks busier.
    look_busy(gw, stubs["b"].url, 5)
    killer = threading.Timer(0.15, stubs["a"].stop)  # ... replica that is deleted
    killer.start()
    t0 = time.monotonic()
    r = post(client)
    killer.join()
    assert r.status_code == 200, r.data
    assert r.headers["X-Surefoot-Replica"] == "b"
    assert 0.1 < time.monotonic() - t0 < 1.5
    assert stubs["a"].requests == 1
    assert gw.metrics.get("retries") == 1


def test_connection_refused_is_retried_on_another_replica(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].stop()
    _, client, _ = make(table(stubs, "ab", fallback=False))
    for _ in range(10):
        r = post(client)
        assert r.status_code == 200
        assert r.headers["X-Surefoot-Replica"] == "b"


def test_a_full_replica_is_asked_again_after_a_wait_with_no_retry_budget_left(
        stubs: dict[str, StubUpstream]) -> None:
    # every replica says 503 (its queue full) and the retry budget allows no retry: the
    # request waits its turn in the gateway's queue and is answered once there is room
    stubs["a"].mode = "503"
    _, client, _ = make(table(stubs, "a", fallback=False), retry_budget_ratio=0.0,
                        retry_budget_min=0, queue_poll=0.02)
    gw = gateway_of(client.application)
    room = threading.Timer(0.3, lambda: setattr(stubs["a"], "mode", "ok"))
    room.start()
    r = post(client)
    room.join()
    assert r.status_code == 200, r.data
    assert stubs["a"].requests >= 2
    assert gw.metrics.get("queued_busy") >= 1


def test_503_everywhere_then_the_fallback_answers(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = stubs["b"].mode = "503"
    _, client, _ = make(table(stubs, "ab"))
    r = post(client)
    assert r.status_code == 200
    assert r.headers["X-Surefoot-Revision"] == "fallback"
    assert r.json["choices"][0]["text"] == "hello from fb"
    assert stubs["a"].requests == 1
    assert stubs["b"].requests == 1


def test_tries_spent_without_fallback_gives_the_last_error(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].mode = stubs["b"].mode = "503"
    _, client, _ = make(table(stubs, "ab", fallback=False), max_tries=2)
    r = post(client)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.json["error"]["type"] == "upstream_unavailable"


def test_retry_budget_limits_retries(stubs: dict[str, StubUpstream]) -> None:
    stubs["a"].stop()
    tbl = RoutingTable((Route("primary", 100, (ep(stubs["a"]), ep(stubs["b"]))),))
    _, client, _ = make(tbl, retry_budget_min=0, retry_budget_ratio=0.0)
    gw = gateway_of(client.application)
    look_busy(gw, stubs["b"].url, 5)  # so a is tried first
    r = post(client)
    assert r.status_code == 502
    assert r.json["error"]["type"] == "upstream_connection_error"
    assert stubs["b"].requests == 0
    assert gw.metrics.get("retry_budget_exhausted") == 1


def test_retry_budget_is_a_share_of_active_requests(stubs: dict[str, StubUpstream]) -> None:
    _, client, _ = make(table(stubs), retry_budget_min=3, retry_budget_ratio=0.2)
    inflight = gateway_of(client.application).inflight
    reqs = [Ticket() for _ in range(5)]
    inflight.active = 20  # 20% of 20 = 4 concurrent retries, above the floor of 3
    assert [inflight.may_retry(r) for r in reqs] == [True, True, True, True, False]
    inflight.active = 5  # the floor holds
    assert inflight.may_retry(reqs[4]) is False
    inflight.retrying = 2
    assert inflight.may_retry(reqs[4]) is True


# --- breakers --------------------------------------------------------------------------------


def test_primary_breaker_forced_open_the_client_gets_the_fallback(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    _, client, _ = make(table(stubs), registry)
    r = client.post("/admin/breakers/revision:primary", json={"action": "force_open"},
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.json["changed"]
    assert r.json["status"]["state"] == "forced_open"
    for _ in range(10):
        r = post(client)
        assert r.status_code == 200
        assert r.headers["X-Surefoot-Revision"] == "fallback"
        assert r.json["choices"][0]["text"] == "hello from fb"
    assert stubs["a"].requests == stubs["b"].requests == 0
    r = client.post("/admin/breakers/revision:primary", json={"action": "reset"},
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.json["status"]["state"] == "closed"
    assert post(client).headers["X-Surefoot-Revision"] == "primary"


def test_open_breaker_pushed_from_elsewhere_stops_routing(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry, redis_url: str
) -> None:
    _, client, _ = make(table(stubs, "ab", fallback=False), registry)
    other = BreakerRegistry(BreakerRegistrySettings(redis_url=redis_url), start=False)
    other.open("replica:a", "xid 79 on its node")
    assert wait_until(lambda: registry.state("replica:a") == "open")
    for _ in range(20):
        assert post(client).headers["X-Surefoot-Replica"] == "b"
    assert stubs["a"].requests == 0
    other.open("node:n1", "lost")  # a node key with no replica on it changes nothing
    other.close()


def test_node_breaker_skips_every_replica_on_that_node(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    tbl = RoutingTable((Route("primary", 100, (ep(stubs["a"], node="n1"),
                                               ep(stubs["b"], node="n2"))),))
    _, client, _ = make(tbl, registry)
    registry.open("node:n1", "gpu fell off the bus")
    for _ in range(10):
        assert post(client).headers["X-Surefoot-Replica"] == "b"
    assert stubs["a"].requests == 0


def test_failures_trip_the_replica_breaker(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    stubs["a"].mode = "die_before_response"
    _, client, _ = make(table(stubs, "ab", fallback=False), registry)
    # replicas are picked at random, so how many tries reach "a" varies: send until the
    # breaker has seen enough of them (bounded), every request still answered
    for _ in range(60):
        assert post(client).status_code == 200
        if registry.state("replica:a") == "open":
            break
    assert wait_until(lambda: registry.state("replica:a") == "open")
    before = stubs["a"].requests
    for _ in range(10):
        assert post(client).headers["X-Surefoot-Replica"] == "b"
    assert stubs["a"].requests == before
    assert registry.state("revision:primary") == "closed"  # the revision as a whole is fine


def test_everything_open_and_no_fallback_is_a_clear_503(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    _, client, _ = make(table(stubs, "ab", fallback=False), registry)
    registry.force_open("revision:primary", "test")
    r = post(client)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.json["error"]["type"] == "no_ready_replica"


def test_stale_keep_alive_connection_is_replaced_silently(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    _, client, _ = make(table(stubs, "a", fallback=False), registry)
    assert post(client).status_code == 200
    port = stubs["a"].port
    stubs["a"].stop()  # the replica restarts: the pooled connection is dead
    stubs["a"] = StubUpstream(port, name="a").start()
    assert post(client).status_code == 200
    registry.flush()
    rows = {s.key: s for s in registry.statuses()[0]}
    assert "replica:a" not in rows or rows["replica:a"].state == "closed"


# --- admin API ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Basic abc"}, 401),
        ({"Authorization": "Bearer"}, 401),
        ({"Authorization": "Bearer wrong-token!"}, 403),
    ],
)
def test_admin_needs_the_token(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry, headers: dict[str, str],
    status: int,
) -> None:
    _, client, _ = make(table(stubs), registry)
    r = client.get("/admin/breakers", headers=headers)
    assert r.status_code == status
    assert "Authorization" in r.json["error"]["message"]
    r = client.post("/admin/breakers/revision:primary", json={"action": "force_open"},
                    headers=headers)
    assert r.status_code == status
    assert registry.state("revision:primary") == "closed"


def test_admin_disabled_without_a_token(stubs: dict[str, StubUpstream]) -> None:
    _, client, _ = make(table(stubs), admin_token=None)
    r = client.get("/admin/breakers", headers={"Authorization": "Bearer anything-at-all"})
    assert r.status_code == 403
    assert "disabled" in r.json["error"]["message"]


@pytest.mark.parametrize(
    ("key", "body", "fragment"),
    [
        ("revision:primary", b"not json", "body: expected a JSON object"),
        ("revision:primary", b"[1, 2]", "body: expected a JSON object"),
        ("revision:primary", b"{}", "action: missing"),
        ("revision:primary", b'{"action": "explode"}', "action: 'explode' is not one of"),
        ("revision:primary", b'{"action": "reset", "reason": 5}', "reason: must be a string"),
        ("revision:primary", b'{"action": "reset", "force": true}', "unknown fields: force"),
        ("bad key{x}", b'{"action": "reset"}', "key: "),
        ("bad key{x}", b'{"action": "nope"}', "action: 'nope'"),
    ],
)
def test_malformed_admin_requests(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry, key: str, body: bytes,
    fragment: str,
) -> None:
    _, client, _ = make(table(stubs), registry)
    r = client.post(f"/admin/breakers/{key}", data=body, content_type="application/json",
                    headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400, r.data
    assert fragment in r.json["error"]["message"]


def test_admin_lists_breakers(stubs: dict[str, StubUpstream], registry: BreakerRegistry) -> None:
    _, client, _ = make(table(stubs), registry)
    registry.open("node:n9", "xid 79")
    r = client.get("/admin/breakers", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200
    assert r.json["stale"] is False
    assert r.json["degraded"] is False
    (row,) = [b for b in r.json["breakers"] if b["key"] == "node:n9"]
    assert row["state"] == "open"
    assert row["reason"] == "xid 79"
    assert row["until"] > row["since"]


def test_admin_without_breakers_is_503(stubs: dict[str, StubUpstream]) -> None:
    _, client, _ = make(table(stubs))
    r = client.get("/admin/breakers", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 503


# --- probes, metrics, settings -------------------------------------------------------------------


def test_probes_and_metrics(stubs: dict[str, StubUpstream], registry: BreakerRegistry) -> None:
    _, client, resolver = make(table(stubs), registry)
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    post(client)
    text = client.get("/metrics").data.decode()
    assert "surefoot_gateway_active_requests 0" in text
    assert "surefoot_gateway_breakers_degraded 0" in text
    resolver.set(RoutingTable())
    assert client.get("/readyz").status_code == 503


def test_metrics_in_the_prometheus_text_format(
    stubs: dict[str, StubUpstream], registry: BreakerRegistry
) -> None:
    stubs["a"].mode = "503"
    _, client, _ = make(table(stubs, "a"), registry)
    registry.open("node:n9", "xid 79")
    assert wait_until(lambda: registry.state("node:n9") == "open")
    assert post(client).headers["X-Surefoot-Revision"] == "fallback"
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.mimetype == "text/plain"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.data.decode())
        for s in family.samples
    }
    for event in ("upstream_upstream_unavailable", "retries", "fallback_after_failure",
                  "answered_by_fallback"):
        assert samples[("surefoot_gateway_events_total", (("event", event),))] == 1, event
    assert samples[("surefoot_gateway_breaker_state", (("key", "node:n9"), ("state", "open")))] == 1
    assert samples[("surefoot_gateway_active_requests", ())] == 0
    assert samples[("surefoot_gateway_active_retries", ())] == 0
    assert samples[("surefoot_gateway_breakers_degraded", ())] == 0
    # Each gateway counts for itself.
    _, other, _ = make(table(stubs, "a"), registry)
    assert gateway_of(other.application).metrics.get("retries") == 0
    assert gateway_of(client.application).metrics.get("retries") == 1


def test_gateway_settings_validation_and_env() -> None:
    with pytest.raises(GatewaySettingsError) as e:
        GatewaySettings(deadline=0, max_tries=0, retry_budget_ratio=2, admin_token="short")
    for name in ("deadline", "max_tries", "retry_budget_ratio", "admin_token"):
        assert name in str(e.value)
    s = GatewaySettings.from_env(
        {"SUREFOOT_GATEWAY_DEADLINE": "7.5", "SUREFOOT_GATEWAY_MAX_TRIES": "2",
         "SUREFOOT_GATEWAY_ADMIN_TOKEN": "0123456789"},
        max_tries=4,
    )
    assert (s.deadline, s.max_tries, s.admin_token) == (7.5, 4, "0123456789")
    with pytest.raises(GatewaySettingsError) as e:
        GatewaySettings.from_env({"SUREFOOT_GATEWAY_DEADLINE": "soon"})
    assert "SUREFOOT_GATEWAY_DEADLINE" in str(e.value)


def test_gateway_serves_when_redis_is_unreachable(
    stubs: dict[str, StubUpstream], free_port: int
) -> None:
    settings = BreakerRegistrySettings(redis_url=f"redis://127.0.0.1:{free_port}/0",
                                       redis_timeout=0.05, reconnect_interval=0.05)
    reg = BreakerRegistry(settings)
    try:
        assert not reg.wait_ready(0.1)
        assert reg.degraded
        _, client, _ = make(table(stubs, "ab"), reg)
        worst = 0.0
        for _ in range(20):
            t0 = time.monotonic()
            assert post(client).status_code == 200
            worst = max(worst, time.monotonic() - t0)
        assert worst < 0.05, worst  # no request waits on the missing Redis
        r = client.get("/admin/breakers", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
        assert r.json["stale"] is True
        assert r.json["degraded"] is True
        r = client.post("/admin/breakers/revision:primary", json={"action": "force_open"},
                        headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
    finally:
        reg.close()
