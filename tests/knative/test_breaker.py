"""The shared breaker against a real Redis server: states, windows, generations, atomicity,
push to local views, fail static while Redis is away, CloudEvents on transitions."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import ClassVar

import pytest
import redis

from knative.breakers import (
    BreakerRegistry,
    BreakerRegistrySettings,
    BreakerSettings,
    BreakerStore,
    CloudEventSink,
    EmbeddedRedis,
    InvalidBreakerKey,
    InvalidBreakerSettings,
    Transition,
)

FAST = BreakerSettings(
    window_size=10,
    minimum_calls=4,
    failure_rate_threshold=0.5,
    wait_in_open=1.0,
    wait_backoff=2.0,
    max_wait_in_open=3.0,
    permitted_calls_in_half_open=2,
    max_wait_in_half_open=5.0,
)


def wait_until(cond: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def make_settings(url: str, **kw: object) -> BreakerRegistrySettings:
    kw.setdefault("policy", FAST)
    return BreakerRegistrySettings(redis_url=url, **kw)  # type: ignore[arg-type]


@pytest.fixture
def reg(redis_url: str) -> Iterator[BreakerRegistry]:
    """A registry without threads: the test drives refresh/flush/tick."""
    r = BreakerRegistry(make_settings(redis_url), start=False)
    r.refresh(wholesale=True)
    yield r
    r.close()


def fail(reg: BreakerRegistry, key: str, n: int, ok: bool = False, seconds: float = 0.01) -> None:
    for _ in range(n):
        p = reg.acquire(key)
        assert p is not None
        reg.record(p, ok, seconds)


# --- settings and keys ------------------------------------------------------------------------


def test_settings_report_every_bad_field_at_once() -> None:
    with pytest.raises(InvalidBreakerSettings) as e:
        BreakerSettings(
            window="sliding",
            minimum_calls=0,
            failure_rate_threshold=1.5,
            wait_in_open=-1,
            permitted_calls_in_half_open=0,
        )
    msg = str(e.value)
    for name in ("window", "minimum_calls", "failure_rate_threshold", "wait_in_open",
                 "permitted_calls_in_half_open"):
        assert name in msg


def test_registry_settings_reject_bad_url_and_intervals() -> None:
    with pytest.raises(InvalidBreakerSettings) as e:
        BreakerRegistrySettings(redis_url="http://x", refresh_interval=0, prefix="a{b}")
    assert "redis_url" in str(e.value)
    assert "refresh_interval" in str(e.value)
    assert "prefix" in str(e.value)


def test_registry_settings_from_env_read_policy_kinds_and_process_settings() -> None:
    env = {
        "SUREFOOT_REDIS_URL": "redis://127.0.0.1:6390/0",
        "SUREFOOT_BREAKER_WAIT_IN_OPEN": "10",
        "SUREFOOT_BREAKER_NODE_MINIMUM_CALLS": "2",
        "SUREFOOT_BREAKER_REFRESH_INTERVAL": "0.5",
        "SUREFOOT_BREAKER_PREFIX": "sf",
        "SUREFOOT_BREAKER_WINDOW_SIZE": "",  # empty: the default applies
    }
    s = BreakerRegistrySettings.from_env(env, refresh_interval=None, flush_interval=0.01)
    assert s.redis_url == "redis://127.0.0.1:6390/0"
    assert (s.policy.wait_in_open, s.policy.window_size) == (10.0, 50)
    assert s.policy_for("node:n-1").minimum_calls == 2
    assert s.policy_for("node:n-1").wait_in_open == 10.0  # the kind starts from the policy
    assert s.policy_for("replica:r-0") == s.policy
    assert (s.refresh_interval, s.flush_interval, s.prefix) == (0.5, 0.01, "sf")
    over = BreakerRegistrySettings.from_env(env, redis_url="redis://other:6379/0")
    assert over.redis_url == "redis://other:6379/0"


def test_registry_settings_from_env_name_every_bad_variable() -> None:
    env = {
        "SUREFOOT_BREAKER_WAIT_IN_OPEN": "soon",
        "SUREFOOT_BREAKER_REVISION_WINDOW_SIZE": "1.5",
        "SUREFOOT_BREAKER_MAX_PENDING": "lots",
    }
    with pytest.raises(InvalidBreakerSettings) as e:
        BreakerRegistrySettings.from_env(env, redis_url="redis://127.0.0.1:6379/0")
    for name in ("SUREFOOT_BREAKER_WAIT_IN_OPEN", "SUREFOOT_BREAKER_REVISION_WINDOW_SIZE",
                 "SUREFOOT_BREAKER_MAX_PENDING"):
        assert name in str(e.value)
    with pytest.raises(InvalidBreakerSettings, match="SUREFOOT_REDIS_URL"):
        BreakerRegistrySettings.from_env({})


@pytest.mark.parametrize("key", ["", "a{b}", "has space", "x" * 300, "{tag}"])
def test_bad_keys_are_refused(reg: BreakerRegistry, key: str) -> None:
    with pytest.raises(InvalidBreakerKey):
        reg.open(key, "test")


def test_keys_of_one_breaker_share_a_hash_tag(reg: BreakerRegistry) -> None:
    k1, k2 = reg.store.keys_of("node:n-1")
    assert "{node:n-1}" in k1
    assert "{node:n-1}" in k2


# --- the state machine ------------------------------------------------------------------------


def test_opens_on_failure_rate_only_after_minimum_calls(reg: BreakerRegistry) -> None:
    key = "replica:a"
    fail(reg, key, 3)
    assert reg.flush() == []
    assert reg.state(key) == "closed"
    fail(reg, key, 1)
    (t,) = reg.flush()
    assert (t.old, t.new, t.generation) == ("closed", "open", 1)
    assert "failure rate" in t.reason
    assert reg.state(key) == "open"
    assert reg.acquire(key) is None
    assert not reg.allows(key)


def test_successes_keep_it_closed(reg: BreakerRegistry) -> None:
    key = "replica:b"
    fail(reg, key, 6, ok=True)
    fail(reg, key, 4)  # 40% < 50%
    assert reg.flush() == []
    assert reg.state(key) == "closed"


def test_count_window_forgets_old_calls(reg: BreakerRegistry) -> None:
    key = "replica:c"
    fail(reg, key, 3)
    reg.flush()
    fail(reg, key, 10, ok=True)  # pushes the three failures out of the 10-call ring
    reg.flush()
    fail(reg, key, 4)  # 4 of 10 failed
    assert reg.flush() == []
    assert reg.state(key) == "closed"


def test_slow_call_rate_opens(redis_url: str) -> None:
    policy = BreakerSettings(minimum_calls=4, slow_call_rate_threshold=0.5, slow_call_duration=1.0)
    with BreakerRegistry(make_settings(redis_url, policy=policy), start=False) as reg:
        key = "replica:slow"
        fail(reg, key, 2, ok=True, seconds=0.1)
        fail(reg, key, 2, ok=True, seconds=2.5)
        (t,) = reg.flush()
        assert t.new == "open"
        assert "slow call rate" in t.reason


def test_time_window_forgets_calls_older_than_the_window(redis_url: str) -> None:
    policy = BreakerSettings(window="time", window_size=5, minimum_calls=4)
    with BreakerRegistry(make_settings(redis_url, policy=policy), start=False) as reg:
        key = "replica:t"
        fail(reg, key, 3)
        reg.flush()
        reg.store.clock_offset_ms = 6_000  # six seconds later: those three are gone
        fail(reg, key, 1)
        fail(reg, key, 3, ok=True)
        assert reg.flush() == []
        assert reg.state(key) == "closed"
        fail(reg, key, 4)  # now 5 of 8 in the last 5 s
        (t,) = reg.flush()
        assert t.new == "open"


def test_open_waits_then_half_opens_then_closes(reg: BreakerRegistry) -> None:
    key = "replica:d"
    fail(reg, key, 4)
    reg.flush()
    assert reg.tick() == []  # wait not over
    reg.store.clock_offset_ms = 1_100
    (t,) = reg.tick()
    assert (t.old, t.new) == ("open", "half_open")
    p1, p2, p3 = reg.acquire(key), reg.acquire(key), reg.acquire(key)
    assert p1 is not None
    assert p2 is not None
    assert p3 is None
    assert not reg.allows(key)  # known exhausted: no more Redis round trips
    reg.record(p1, True, 0.01)
    assert reg.flush() == []
    reg.record(p2, True, 0.01)
    (t,) = reg.flush()
    assert (t.old, t.new, t.opens) == ("half_open", "closed", 0)
    assert reg.acquire(key) is not None


def test_failed_probe_reopens_with_backoff_capped(reg: BreakerRegistry) -> None:
    key = "replica:e"
    fail(reg, key, 4)
    (t1,) = reg.flush()
    assert t1.until is not None
    assert t1.until - t1.at == pytest.approx(1.0, abs=0.01)
    offset = 0
    waits = []
    for _ in range(3):
        offset += 4_000
        reg.store.clock_offset_ms = offset
        (h,) = reg.tick()
        assert h.new == "half_open"
        p = reg.acquire(key)
        assert p is not None
        reg.record(p, False, 0.01)
        (t,) = reg.flush()
        assert t.new == "open"
        assert t.until is not None
        waits.append(round(t.until - t.at, 2))
    assert waits == [2.0, 3.0, 3.0]  # 1 s doubled, then capped at 3 s


def test_open_acquire_moves_to_half_open_when_the_wait_is_over(reg: BreakerRegistry) -> None:
    key = "replica:lazy"
    reg.open(key, "test")
    reg.store.clock_offset_ms = 1_500
    gen, t = reg.store.acquire(key)
    assert t is not None
    assert t.new == "half_open"
    assert gen == t.generation


def test_stuck_half_open_reopens(reg: BreakerRegistry) -> None:
    key = "replica:stuck"
    reg.open(key, "test")
    reg.store.clock_offset_ms = 1_100
    reg.tick()
    assert reg.state(key) == "half_open"
    assert reg.acquire(key) is not None  # a probe that never reports
    reg.store.clock_offset_ms = 1_100 + 5_100
    (t,) = reg.tick()
    assert (t.old, t.new) == ("half_open", "open")


def test_operator_states(reg: BreakerRegistry) -> None:
    key = "revision:primary"
    t = reg.force_open(key, "maintenance")
    assert t is not None
    assert t.new == "forced_open"
    assert reg.acquire(key) is None
    assert reg.open(key, "event") is None  # the operator's word wins
    reg.store.clock_offset_ms = 10_000_000
    assert reg.tick() == []  # no timeout out of forced-open
    reg.store.clock_offset_ms = 0

    assert reg.force_closed(key) is not None
    p = reg.acquire(key)
    assert p is not None
    assert not p.counted
    for _ in range(20):
        reg.record(p, False, 0.01)
    assert reg.flush() == []
    assert reg.state(key) == "forced_closed"

    assert reg.disable(key) is not None
    p = reg.acquire(key)
    assert p is not None
    assert not p.counted

    t = reg.reset(key)
    assert t is not None
    assert (t.old, t.new) == ("disabled", "closed")
    assert reg.acquire(key) == (key, t.generation, True)


def test_direct_open_half_open_close(reg: BreakerRegistry) -> None:
    key = "node:gpu-1"
    t = reg.open(key, "xid 79")
    assert t is not None
    assert t.new == "open"
    assert t.reason == "xid 79"
    assert reg.open(key, "again") is None  # already open
    assert reg.close_breaker("replica:never") is None  # closed already
    t = reg.half_open(key, "gpu healthy")
    assert t is not None
    assert t.new == "half_open"
    t = reg.close_breaker(key, "operator")
    assert t is not None
    assert t.new == "closed"


def test_expected_generation_makes_open_conditional(reg: BreakerRegistry) -> None:
    key = "revision:r"
    t = reg.store.open(key, "first", expected_generation=0)
    assert t is not None
    assert t.generation == 1
    reg.store.close(key, "ok")
    assert reg.store.open(key, "stale", expected_generation=1) is None


def test_late_result_from_an_older_generation_is_dropped(reg: BreakerRegistry) -> None:
    key = "replica:late"
    old = reg.acquire(key)
    assert old is not None
    assert old.generation == 0
    reg.open(key, "event")
    reg.close_breaker(key, "recovered")  # generation 2, closed again
    applied, t = reg.store.record(key, old.generation, "ffff")
    assert applied is False
    assert t is None
    applied, t = reg.store.record(key, 2, "ff")
    assert applied is True
    assert reg.state(key) == "closed"


def test_twenty_clients_tripping_at_once_make_one_transition(redis_url: str) -> None:
    settings = make_settings(redis_url)
    key = "replica:herd"
    made: list[Transition] = []
    lock = threading.Lock()

    def hook(t: Transition) -> None:
        with lock:
            made.append(t)

    listener = redis.Redis.from_url(redis_url).pubsub(  # type: ignore[no-untyped-call]
        ignore_subscribe_messages=True
    )
    stores = [BreakerStore.from_url(settings, hook) for _ in range(20)]
    listener.subscribe(stores[0].channel)
    barrier = threading.Barrier(20)

    def client(store: BreakerStore) -> None:
        barrier.wait()
        for _ in range(3):
            store.record(key, 0, "ff")

    threads = [threading.Thread(target=client, args=(s,)) for s in stores]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert [(t.old, t.new, t.generation) for t in made] == [("closed", "open", 1)]
    msgs = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        m = listener.get_message(timeout=0.05)
        if m is not None:
            msgs.append(json.loads(m["data"]))
    assert [(m["old"], m["new"]) for m in msgs] == [("closed", "open")]
    assert stores[0].status(key).generation == 1
    listener.close()
    for s in stores:
        s.client.close()


def test_statuses_lists_every_breaker(reg: BreakerRegistry) -> None:
    reg.open("node:a", "x")
    reg.force_closed("replica:b", "y")
    rows, stale = reg.statuses()
    assert not stale
    assert [(s.key, s.state) for s in rows] == [("node:a", "open"), ("replica:b", "forced_closed")]


# --- push, refresh, fail static ----------------------------------------------------------------


def test_transitions_reach_other_processes_views(redis_url: str) -> None:
    settings = make_settings(redis_url)
    with BreakerRegistry(settings) as a, BreakerRegistry(settings) as b:
        assert a.wait_ready()
        assert b.wait_ready()
        store = BreakerStore.from_url(settings)
        t0 = time.monotonic()
        store.open("replica:x", "event")
        assert wait_until(lambda: a.state("replica:x") == "open" and b.state("replica:x") == "open")
        assert time.monotonic() - t0 < 0.5
        store.close("replica:x", "ok")
        assert wait_until(
            lambda: a.state("replica:x") == "closed" and b.state("replica:x") == "closed"
        )
        store.client.close()


def test_view_is_refreshed_even_if_a_message_is_lost(redis_url: str) -> None:
    settings = make_settings(redis_url, refresh_interval=0.2)
    with BreakerRegistry(settings) as reg:
        assert reg.wait_ready()
        store = reg.store
        k, _ = store.keys_of("replica:lost")
        # A change that was never published (as if the message was lost).
        store.client.hset(k, mapping={"state": "open", "gen": "7", "until": "0"})
        store.client.sadd(store.index, "replica:lost")
        assert wait_until(lambda: reg.state("replica:lost") == "open", timeout=2.0)
        assert reg.generation("replica:lost") == 7
        assert reg.view_age < 1.0


def test_results_flow_to_redis_in_the_background(redis_url: str) -> None:
    with BreakerRegistry(make_settings(redis_url)) as reg:
        assert reg.wait_ready()
        fail(reg, "replica:bg", 4)
        assert wait_until(lambda: reg.state("replica:bg") == "open")


def test_redis_killed_mid_traffic_and_restarted() -> None:
    with EmbeddedRedis() as server:
        settings = make_settings(server.url, redis_timeout=0.05, reconnect_interval=0.05,
                                 refresh_interval=0.5)
        with BreakerRegistry(settings) as reg:
            assert reg.wait_ready()
            reg.open("replica:dead", "event")
            assert reg.acquire("replica:dead") is None
            stop = threading.Event()
            worst = [0.0]
            served = [0]

            def traffic() -> None:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    p = reg.acquire("replica:live")
                    if p is not None:
                        reg.record(p, True, 0.001)
                    reg.acquire("replica:dead")
                    worst[0] = max(worst[0], time.perf_counter() - t0)
                    served[0] += 1
                    time.sleep(0.0005)

            th = threading.Thread(target=traffic)
            th.start()
            time.sleep(0.05)
            server.kill()
            assert wait_until(lambda: reg.degraded, timeout=2.0)
            # Fail static: the last known states hold, requests are not blocked on Redis.
            assert reg.state("replica:dead") == "open"
            assert reg.acquire("replica:dead") is None
            assert reg.acquire("replica:live") is not None
            # Counted locally: a replica failing while Redis is away is opened for this process.
            fail(reg, "replica:flaky", 4)
            assert "replica:flaky" in reg.locally_open()
            assert reg.acquire("replica:flaky") is None
            before = served[0]
            time.sleep(0.1)
            assert served[0] > before  # traffic kept flowing
            server.start()  # same port, empty (no persistence)
            assert wait_until(lambda: not reg.degraded, timeout=5.0)
            stop.set()
            th.join(5)
            # Re-read everything: the restarted server knows no open breaker.
            assert wait_until(lambda: reg.state("replica:dead") == "closed", timeout=2.0)
            assert reg.locally_open() == []
            assert worst[0] < 0.05, f"a request waited {worst[0]:.3f} s on Redis"
            # And it works again end to end.
            fail(reg, "replica:after", 4)
            assert wait_until(lambda: reg.state("replica:after") == "open")


def test_half_open_probe_while_redis_is_away_is_local(redis_url: str) -> None:
    reg = BreakerRegistry(make_settings(redis_url), start=False)
    try:
        reg.open("replica:h", "x")
        reg.store.clock_offset_ms = 1_100
        reg.tick()
        reg.health.set_subscribed(False)  # as if the subscription dropped
        assert reg.degraded
        permits = [reg.acquire("replica:h") for _ in range(3)]
        assert [p is not None for p in permits] == [True, True, False]
    finally:
        reg.close()


# --- transition hook and CloudEvents ----------------------------------------------------------


class _Sink(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


def test_transitions_post_cloudevents_to_the_sink(redis_url: str) -> None:
    _Sink.received = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    sink = CloudEventSink(f"http://127.0.0.1:{srv.server_address[1]}/", source="/test")
    try:
        reg = BreakerRegistry(make_settings(redis_url), sink, start=False)
        t1 = reg.open("node:n1", "xid 79")
        reg.half_open("node:n1", "healthy")
        reg.close_breaker("node:n1", "probes ok")
        reg.force_open("revision:primary", "operator")
        reg.open("replica:r-0", "no catalog scope for replicas")
        reg.close()
        sink.close()
        got = [(h["ce-type"], h["ce-subject"], h["ce-breakerstate"], h["ce-breakergen"],
                json.loads(b)["reason"]) for h, b in _Sink.received]
        assert got == [
            ("dev.surefoot.breaker.opened", "node/n1", "open", "1", "xid 79"),
            ("dev.surefoot.breaker.halfopened", "node/n1", "half_open", "2", "healthy"),
            ("dev.surefoot.breaker.closed", "node/n1", "closed", "3", "probes ok"),
            ("dev.surefoot.breaker.opened", "revision/primary", "forced_open", "1", "operator"),
        ]
        h, body = _Sink.received[0]
        assert t1 is not None
        assert h["ce-id"] == f"node:n1/1/{round(t1.at * 1000)}"
        assert h["ce-specversion"] == "1.0"
        assert h["ce-source"] == "/test"
        data = json.loads(body)
        assert (data["scope"], data["name"]) == ("node", "n1")
        assert data["hold_seconds"] == pytest.approx(FAST.wait_in_open, abs=0.01)
        assert sink.sent == 4
        assert sink.failed == 0
        assert sink.skipped == 1
    finally:
        srv.shutdown()
        srv.server_close()


def test_unreachable_sink_does_not_break_the_breaker(redis_url: str, free_port: int) -> None:
    from events import RetryPolicy, SenderSettings

    sink = CloudEventSink(f"http://127.0.0.1:{free_port}/",
                          settings=SenderSettings(timeout_s=0.2, retry=RetryPolicy(retries=0)))
    reg = BreakerRegistry(make_settings(redis_url), sink, start=False)
    t0 = time.monotonic()
    assert reg.open("node:n2", "x") is not None
    assert time.monotonic() - t0 < 0.2  # the post happens off this thread
    reg.close()
    sink.close()
    assert sink.failed == 1


def test_failing_hook_is_contained(redis_url: str) -> None:
    def boom(t: Transition) -> None:
        raise RuntimeError("hook bug")

    reg = BreakerRegistry(make_settings(redis_url), boom, start=False)
    assert reg.open("node:n3", "x") is not None
    assert reg.state("node:n3") == "open"
    reg.close()
