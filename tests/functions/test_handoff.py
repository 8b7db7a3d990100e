"""Hand-overs: a redelivery that finds the first delivery still running is answered 202 and
kept; the host's sweep settles it (the winner's reply again, or the event handled again)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import events as ev
from functions import ACTED, DEFERRED, DUPLICATE, Context, Host, quarantine_node
from functions._once import handoffs, run_handoffs, seen_key
from tests.conftest import FakeTime
from tests.functions._helpers import Sink, xid
from tests.kube_fake import FakeKubeServer


@pytest.fixture
def quick(make_ctx: Callable[..., Context]) -> Context:
    return make_ctx(inflight_wait_s=0.01, lease_s=30.0)


def claim(ctx: Context, event: ev.Event) -> str:
    key = seen_key(ctx, quarantine_node.NAME, event)
    ctx.redis.set(key, "R:first-delivery", px=60_000)
    return key


def test_a_handover_whose_winner_failed_is_handled_by_the_sweep(
    cluster: FakeKubeServer, quick: Context, fake_time: FakeTime, sink: Sink
) -> None:
    event = xid("gpu-1", 79)
    key = claim(quick, event)
    out = quarantine_node.handle(event, quick)
    assert out.status == DEFERRED
    assert len(handoffs(quick)) == 1
    quick.redis.delete(key)  # the first delivery failed after the broker had given up on it
    assert run_handoffs(quick, {quarantine_node.NAME: quarantine_node.handle}) == []  # not due
    fake_time.advance(31)
    host = Host(quick.settings, quick)
    done = [o for o in host.sweep() if o.function == quarantine_node.NAME]
    assert done[0].status == ACTED
    assert "node.quarantined" in sink.types()[-1]
    assert handoffs(quick) == []


def test_a_handover_whose_winner_finished_sends_its_reply_again(
    cluster: FakeKubeServer, quick: Context, fake_time: FakeTime, sink: Sink
) -> None:
    event = xid("gpu-1", 79)
    key = claim(quick, event)
    assert quarantine_node.handle(event, quick).status == DEFERRED
    quick.redis.delete(key)
    first = quarantine_node.handle(event, quick)  # the first delivery finishes meanwhile
    assert first.status == ACTED
    fake_time.advance(31)
    settled = run_handoffs(quick, {quarantine_node.NAME: quarantine_node.handle})
    assert [o.status for o in settled] == [DUPLICATE]
    assert settled[0].reply is not None
    assert first.reply is not None
    assert settled[0].reply.id == first.reply.id  # the reply its broker may never have had


def test_a_handover_whose_winner_still_runs_waits(
    cluster: FakeKubeServer, quick: Context, fake_time: FakeTime
) -> None:
    event = xid("gpu-1", 79)
    claim(quick, event)
    assert quarantine_node.handle(event, quick).status == DEFERRED
    fake_time.advance(31)
    assert run_handoffs(quick, {quarantine_node.NAME: quarantine_node.handle}) == []
    assert len(handoffs(quick)) == 1  # checked again a lease later


def test_a_redelivery_during_a_long_restore_is_accepted_over_http(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context], fake_time: FakeTime, sink: Sink
) -> None:
    """What dropped ``breaker.closed`` under ``surefoot up``: the restore waits between its
    steps longer than the broker waits for an answer; the broker's retry of the same event
    found the first delivery still running and got 503 until it gave up. Now the retry is
    accepted (202, handed over) and the sweep sends the first's reply once it finished."""
    import threading

    import httpx

    from functions import FunctionsServer, reroute_traffic
    from knative.breakers import revision_key
    from tests.functions._helpers import closed, opened, traffic_of

    ctx = make_ctx(inflight_wait_s=0.05)
    for i in (2, 3):
        cluster.add_pod(f"fallback-{i}", node=f"gpu-{i}", labels={
            "serving.knative.dev/revision": "surefoot-fallback", "app": "surefoot-fallback"})
    primary = revision_key("surefoot-primary")
    ctx.breakers.open(primary, "failing")
    reroute_traffic.handle(opened(), ctx)
    ctx.breakers.close(primary, "probes ok")
    in_step, go_on = threading.Event(), threading.Event()

    def between_steps(_: float) -> None:
        if not in_step.is_set():
            in_step.set()
            assert go_on.wait(10)

    fake_time.on_sleep = between_steps
    event = closed()
    msg = ev.to_binary(event)
    with FunctionsServer(ctx.settings, ctx, sweep=False) as server:
        url = f"{server.url}/reroute_traffic"
        first: list[httpx.Response] = []
        t = threading.Thread(target=lambda: first.append(
            httpx.post(url, content=msg.body, headers=msg.headers, timeout=20)))
        t.start()
        assert in_step.wait(10)  # the restore is between its steps
        retry = httpx.post(url, content=msg.body, headers=msg.headers, timeout=20)
        assert retry.status_code == 202
        assert retry.headers["Surefoot-Outcome"] == "deferred"
        assert "handed over" in retry.headers["Surefoot-Reason"]
        go_on.set()
        t.join(20)
        assert first[0].status_code == 200
        assert traffic_of(cluster)[0] == ("surefoot-primary", 100, "primary")
        fake_time.advance(ctx.settings.lease_s + 1)
        settled = [o for o in server.host.sweep() if o.details.get("first_status")]
        assert [o.status for o in settled] == [DUPLICATE]
        assert sink.events[-1].id == first[0].headers["ce-id"]  # the reply, to the sink
