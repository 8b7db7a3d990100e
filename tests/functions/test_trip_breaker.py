"""trip_breaker against a real Redis: node breakers on fatal GPU faults, revision breakers on
repeated crashes, half-open after the hold time, idempotency."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import events as ev
from functions import ACTED, DEFERRED, DUPLICATE, NOOP, Context, trip_breaker
from functions._state import deferred
from knative.breakers import node_key, revision_key
from tests.conftest import FakeTime
from tests.functions._helpers import crashloop, ecc, healthy, lost, oom, ping, xid


def state(ctx: Context, key: str) -> str:
    return ctx.breakers.status(key).state


@pytest.mark.parametrize("event", [
    xid("gpu-1", 79), xid("gpu-1", 95), xid("gpu-1", 48), lost("gpu-1"), ecc("gpu-1"),
], ids=["xid79", "xid95", "xid48-unknown-containment", "gpu.lost", "ecc-uncorrected"])
def test_fatal_gpu_fault_opens_the_node_breaker(ctx: Context, event: ev.Event) -> None:
    out = trip_breaker.handle(event, ctx)
    assert out.status == ACTED
    assert state(ctx, node_key("gpu-1")) == "open"
    assert out.reply is not None
    assert out.reply.type == ev.BreakerOpened.TYPE
    data = ev.payload_of(out.reply)
    assert isinstance(data, ev.BreakerOpened)
    assert (data.scope, data.name, data.cause_event_id) == ("node", "gpu-1", event.id)
    assert data.hold_seconds
    assert data.hold_seconds > 0
    st = ctx.breakers.status(node_key("gpu-1"))
    assert st.since is not None
    assert out.reply.id == f"node:gpu-1/{st.generation}/{round(st.since * 1000)}"
    assert out.reply.extensions == {"breakerstate": "open", "breakergen": str(st.generation)}


@pytest.mark.parametrize("number", [43, 45, 63, 92, 13, 31, 121])
def test_benign_or_application_xids_open_nothing(ctx: Context, number: int) -> None:
    out = trip_breaker.handle(xid("gpu-1", number), ctx)
    assert out.status == NOOP
    assert out.reply is None
    assert state(ctx, node_key("gpu-1")) == "closed"


def test_a_lying_source_cannot_make_xid_43_fatal(ctx: Context) -> None:
    event = xid("gpu-1", 43, fatal=True, severity="fatal", action="reboot")
    assert trip_breaker.handle(event, ctx).status == NOOP
    assert state(ctx, node_key("gpu-1")) == "closed"


def test_escalated_application_xid_is_fatal(ctx: Context) -> None:
    event = xid("gpu-1", 13, fatal=True, severity="critical", action="reset_gpu",
                escalated=True, count=3)
    assert trip_breaker.handle(event, ctx).status == ACTED
    assert state(ctx, node_key("gpu-1")) == "open"


def test_decoded_xid_48_contained_is_not_fatal(ctx: Context) -> None:
    event = xid("gpu-1", 48, fatal=False, severity="warning", action="restart_app")
    assert trip_breaker.handle(event, ctx).status == NOOP


def test_corrected_only_ecc_is_not_fatal(ctx: Context) -> None:
    event = ev.build(ev.GpuEcc(node="gpu-1", severity="warning", action="schedule_reset",
                               fatal=False, volatile_uncorrected=0, remapped_rows_pending=True),
                     source="/t")
    assert trip_breaker.handle(event, ctx).status == NOOP


def test_redelivery_acts_once_and_replies_the_same_event(ctx: Context) -> None:
    event = xid("gpu-1", 79)
    first = trip_breaker.handle(event, ctx)
    gen = ctx.breakers.status(node_key("gpu-1")).generation
    again = trip_breaker.handle(event, ctx)
    assert again.status == DUPLICATE
    assert again.reply is not None
    assert first.reply is not None
    assert again.reply.id == first.reply.id
    assert again.reply.data == first.reply.data
    assert ctx.breakers.status(node_key("gpu-1")).generation == gen


def test_a_second_fault_while_open_is_a_noop(ctx: Context) -> None:
    trip_breaker.handle(xid("gpu-1", 79), ctx)
    out = trip_breaker.handle(lost("gpu-1"), ctx)
    assert out.status == NOOP
    assert "already open" in out.reason


def test_concurrent_deliveries_act_once(make_ctx: Callable[..., Context]) -> None:
    contexts = [make_ctx() for _ in range(6)]
    event = xid("gpu-2", 79)
    barrier = threading.Barrier(len(contexts))
    results: list[str] = []
    lock = threading.Lock()

    def deliver(c: Context) -> None:
        barrier.wait()
        out = trip_breaker.handle(event, c)
        with lock:
            results.append(out.status)

    threads = [threading.Thread(target=deliver, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == sorted([ACTED] + [DUPLICATE] * 5)
    st = contexts[0].breakers.status(node_key("gpu-2"))
    assert st.state == "open"
    assert st.generation == 1


def test_repeated_crashes_open_the_revision_breaker(ctx: Context, fake_time: FakeTime) -> None:
    key = revision_key("surefoot-primary")
    assert trip_breaker.handle(oom("primary-1"), ctx).status == NOOP
    fake_time.advance(60)
    assert trip_breaker.handle(crashloop("primary-2"), ctx).status == NOOP
    assert state(ctx, key) == "closed"
    fake_time.advance(60)
    out = trip_breaker.handle(oom("primary-3"), ctx)
    assert out.status == ACTED
    assert state(ctx, key) == "open"
    data = ev.payload_of(out.reply) if out.reply else None
    assert isinstance(data, ev.BreakerOpened)
    assert data.scope == "revision"
    assert data.name == "surefoot-primary"


def test_crashes_outside_the_window_do_not_count(ctx: Context, fake_time: FakeTime) -> None:
    trip_breaker.handle(oom("primary-1"), ctx)
    trip_breaker.handle(oom("primary-1"), ctx)
    fake_time.advance(ctx.settings.crash_window_s + 1)
    out = trip_breaker.handle(oom("primary-1"), ctx)
    assert out.status == NOOP
    assert out.reason.startswith("1 of 3")


def test_a_redelivered_crash_counts_once(ctx: Context) -> None:
    event = oom("primary-1")
    for _ in range(5):
        trip_breaker.handle(event, ctx)
    # Even bypassing the dedupe (another function path), the window counts ids, not calls.
    for _ in range(3):
        trip_breaker.handle.__wrapped__(event, ctx)  # type: ignore[attr-defined]
    assert state(ctx, revision_key("surefoot-primary")) == "closed"


def test_crashes_are_counted_per_revision(ctx: Context) -> None:
    trip_breaker.handle(oom("a", "rev-a"), ctx)
    trip_breaker.handle(oom("a", "rev-a"), ctx)
    trip_breaker.handle(oom("b", "rev-b"), ctx)
    assert state(ctx, revision_key("rev-a")) == "closed"
    assert state(ctx, revision_key("rev-b")) == "closed"


def test_healthy_half_opens_after_the_hold_time(ctx: Context, fake_time: FakeTime) -> None:
    trip_breaker.handle(xid("gpu-1", 79), ctx)
    out = trip_breaker.handle(healthy("gpu-1"), ctx)
    assert out.status == DEFERRED
    assert trip_breaker.sweep(ctx) == []  # not due yet
    fake_time.advance(ctx.settings.node_hold_s - 1)
    assert trip_breaker.sweep(ctx) == []
    fake_time.advance(2)
    swept = trip_breaker.sweep(ctx)
    assert [o.status for o in swept] == [ACTED]
    assert swept[0].reply is not None
    assert swept[0].reply.type == ev.BreakerHalfOpened.TYPE
    assert state(ctx, node_key("gpu-1")) == "half_open"
    assert deferred(ctx) == []


def test_a_new_fault_cancels_the_pending_half_open(ctx: Context, fake_time: FakeTime) -> None:
    trip_breaker.handle(xid("gpu-1", 79), ctx)
    ctx.breakers.half_open(node_key("gpu-1"))  # a gateway probe window began
    trip_breaker.handle(xid("gpu-1", 79), ctx)  # and failed again: open
    assert trip_breaker.handle(healthy("gpu-1"), ctx).status == DEFERRED
    trip_breaker.handle(lost("gpu-1"), ctx)  # open already: no transition, but cancels
    assert deferred(ctx) == []
    fake_time.advance(ctx.settings.node_hold_s + 1)
    assert trip_breaker.sweep(ctx) == []
    assert state(ctx, node_key("gpu-1")) == "open"


def test_ping_runs_the_due_half_opens(ctx: Context, fake_time: FakeTime) -> None:
    trip_breaker.handle(xid("gpu-3", 79), ctx)
    trip_breaker.handle(healthy("gpu-3"), ctx)
    fake_time.advance(ctx.settings.node_hold_s + 1)
    out = trip_breaker.handle(ping(), ctx)
    assert out.status == ACTED
    assert out.reply is not None
    assert out.reply.type == ev.BreakerHalfOpened.TYPE


def test_healthy_without_an_open_breaker_is_a_noop(ctx: Context) -> None:
    assert trip_breaker.handle(healthy("gpu-1"), ctx).status == NOOP


def test_zero_hold_half_opens_at_once(make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(node_hold_s=0)
    trip_breaker.handle(lost("gpu-1"), ctx)
    assert trip_breaker.handle(healthy("gpu-1"), ctx).status == ACTED
    assert state(ctx, node_key("gpu-1")) == "half_open"


def test_forced_closed_breaker_is_left_to_the_operator(ctx: Context) -> None:
    ctx.breakers.force_closed(node_key("gpu-1"), "operator")
    out = trip_breaker.handle(xid("gpu-1", 79), ctx)
    assert out.status == NOOP
    assert "forced_closed" in out.reason


def test_redis_down_is_a_temporary_error(make_ctx: Callable[..., Context],
                                         redis_server: object) -> None:
    import redis as redis_lib

    from functions import TemporaryFunctionError

    ctx = make_ctx(redis_client=redis_lib.Redis(host="127.0.0.1", port=1,
                                                socket_connect_timeout=0.2))
    with pytest.raises(TemporaryFunctionError):
        trip_breaker.handle(xid("gpu-1", 79), ctx)


def test_wrong_type_is_refused(ctx: Context) -> None:
    with pytest.raises(ev.EventValidationError) as info:
        trip_breaker.handle(ev.build(ev.NodeReady(node="x"), source="/t"), ctx)
    assert "type" in info.value.errors
