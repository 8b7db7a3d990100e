"""reroute_traffic follows ready capacity: never onto a revision without ready replicas, split in
proportion to ready replicas, back as capacity changes, and the sweep repairs lost events
(fake Kubernetes API, real Redis)."""

from __future__ import annotations

import logging

import pytest

import events as ev
from functions import ACTED, NOOP, Context, reroute_traffic
from knative.breakers import node_key, revision_key
from tests.conftest import FakeTime
from tests.functions._helpers import closed, make_cluster, opened, traffic_of
from tests.kube_fake import FakeKubeServer

FALLBACK_POD = {"serving.knative.dev/revision": "surefoot-fallback", "app": "surefoot-fallback"}
REROUTED = [("surefoot-primary", 0, "primary"), ("surefoot-fallback", 100, "fallback")]
NORMAL = [("surefoot-primary", 100, "primary"), ("surefoot-fallback", 0, "fallback")]
PRIMARY = revision_key("surefoot-primary")


@pytest.fixture
def cluster(kube: FakeKubeServer) -> FakeKubeServer:
    """Three ready primaries (gpu-1..3), three ready fallbacks (gpu-4, gpu-2, gpu-3)."""
    make_cluster(kube)
    for i in (2, 3):
        kube.add_pod(f"fallback-{i}", node=f"gpu-{i}", labels=dict(FALLBACK_POD))
    return kube


def fallbacks_ready(kube: FakeKubeServer, ready: bool, names: tuple[str, ...] = (
        "fallback-1", "fallback-2", "fallback-3")) -> None:
    for n in names:
        kube.set_pod_ready(n, ready)


def trip(ctx: Context) -> ev.Event:
    """The primary's breaker opens (in Redis) and its event is delivered."""
    ctx.breakers.open(PRIMARY, "failing")
    event = opened()
    reroute_traffic.handle(event, ctx)
    return event


def test_no_reroute_onto_a_fallback_without_ready_replicas(
    cluster: FakeKubeServer, ctx: Context, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    fallbacks_ready(cluster, False)
    ctx.breakers.open(PRIMARY, "failing")
    with caplog.at_level(logging.WARNING):
        out = reroute_traffic.handle(opened(), ctx)
    assert out.status == NOOP
    assert "surefoot-fallback has no ready replica; traffic left as it is" in out.reason
    assert "traffic left as it is" in caplog.text
    assert fake_time.sleeps == []  # no wait for replicas that are not there
    assert traffic_of(cluster) == NORMAL
    # the fallback gets a ready replica: the sweep moves the share
    cluster.set_pod_ready("fallback-1", True)
    assert [o.status for o in reroute_traffic.sweep(ctx)] == [ACTED]
    assert traffic_of(cluster) == REROUTED


def test_neither_revision_ready_leaves_the_traffic_and_says_so(
    cluster: FakeKubeServer, ctx: Context, caplog: pytest.LogCaptureFixture
) -> None:
    fallbacks_ready(cluster, False)
    for i in (1, 2, 3):
        cluster.set_pod_ready(f"primary-{i}", False)
    ctx.breakers.open(PRIMARY, "failing")
    with caplog.at_level(logging.WARNING):
        out = reroute_traffic.handle(opened(), ctx)
        swept = reroute_traffic.sweep(ctx)
    assert out.status == NOOP
    assert "neither surefoot-primary nor surefoot-fallback has a ready replica" in out.reason
    assert "neither surefoot-primary nor surefoot-fallback has a ready replica" in caplog.text
    assert swept == []
    assert traffic_of(cluster) == NORMAL


def test_fallback_lost_while_the_traffic_is_on_it_moves_back(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    trip(ctx)
    assert traffic_of(cluster) == REROUTED
    fallbacks_ready(cluster, False)  # every fallback replica lost
    out = reroute_traffic.sweep(ctx)
    assert [o.status for o in out] == [ACTED]
    assert traffic_of(cluster) == NORMAL  # the primary is the only revision that can answer
    p = ev.payload_of(out[0].reply) if out[0].reply else None
    assert isinstance(p, ev.TrafficRerouted)
    assert (p.from_revision, p.to_revision, p.percent) == (
        "surefoot-fallback", "surefoot-primary", 100)
    # a fallback replica is back while the breaker is still open: off the primary again
    cluster.set_pod_ready("fallback-1", True)
    assert [o.status for o in reroute_traffic.sweep(ctx)] == [ACTED]
    assert traffic_of(cluster) == REROUTED


def test_fallback_node_breaker_moves_the_share_back(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    """The fallback's last ready replica sits behind a node breaker that opens."""
    trip(ctx)
    fallbacks_ready(cluster, False, ("fallback-2", "fallback-3"))
    ctx.breakers.open(node_key("gpu-4"), "xid 79")
    event = ev.build(ev.BreakerOpened(scope="node", name="gpu-4", reason="xid"),
                     source="/test/breakers")
    assert reroute_traffic.handle(event, ctx).status == ACTED
    assert traffic_of(cluster) == NORMAL


def test_capacity_split_follows_ready_counts(cluster: FakeKubeServer, ctx: Context) -> None:
    for n in ("gpu-1", "gpu-2"):
        ctx.breakers.open(node_key(n), "xid")
    event = ev.build(ev.BreakerOpened(scope="node", name="gpu-2", reason="xid"),
                     source="/test/breakers")
    out = reroute_traffic.handle(event, ctx)
    assert out.status == ACTED
    assert out.details["primary_percent"] == 33  # 1 ready primary : 2 ready fallbacks
    cluster.set_pod_ready("fallback-3", False)  # 1 : 1
    assert [o.status for o in reroute_traffic.sweep(ctx)] == [ACTED]
    assert traffic_of(cluster) == [("surefoot-primary", 50, "primary"),
                                   ("surefoot-fallback", 50, "fallback")]
    cluster.set_pod_ready("fallback-1", False)  # 1 : 0 -> all to the primary
    reroute_traffic.sweep(ctx)
    assert traffic_of(cluster)[0] == ("surefoot-primary", 100, "primary")


def test_split_arithmetic_by_capacity() -> None:
    from functions._split import capacity_share

    assert capacity_share(100, 100, 1, 2) == 33
    assert capacity_share(100, 100, 2, 2) == 50
    assert capacity_share(100, 60, 3, 1) == 60  # never above the primary's normal share
    assert capacity_share(100, 100, 0, 2) == 0
    assert capacity_share(100, 100, 1, 0) == 100  # a fallback without ready replicas: none


def test_sweep_repairs_a_lost_open_event(cluster: FakeKubeServer, ctx: Context) -> None:
    ctx.breakers.open(PRIMARY, "failing")  # its breaker.opened event was dead-lettered
    assert traffic_of(cluster) == NORMAL
    assert [o.status for o in reroute_traffic.sweep(ctx)] == [ACTED]
    assert traffic_of(cluster) == REROUTED


def test_sweep_repairs_a_lost_close_event(cluster: FakeKubeServer, ctx: Context) -> None:
    trip(ctx)
    ctx.breakers.close(PRIMARY, "probes ok")  # its breaker.closed event was lost
    assert traffic_of(cluster) == REROUTED
    out = reroute_traffic.sweep(ctx)
    assert [o.status for o in out] == [ACTED]
    assert traffic_of(cluster) == NORMAL
    assert reroute_traffic.sweep(ctx) == []  # nothing left to repair


def test_sweep_gives_a_half_open_primary_its_trial(cluster: FakeKubeServer, ctx: Context) -> None:
    trip(ctx)
    ctx.breakers.half_open(PRIMARY, "wait over")  # its breaker.halfopened event was lost
    assert ctx.breakers.status(PRIMARY).state == "half_open"
    assert [o.status for o in reroute_traffic.sweep(ctx)] == [ACTED]
    assert traffic_of(cluster)[0] == ("surefoot-primary", 10, "primary")


def test_paused_restore_does_not_move_onto_a_fallback_without_replicas(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    trip(ctx)
    ctx.breakers.close(PRIMARY, "ok")
    reroute_traffic.handle(closed(), ctx)
    assert traffic_of(cluster) == NORMAL
    # a new reroute, then the primary's replicas go while the fallback's are gone too
    trip(ctx)
    ctx.breakers.close(PRIMARY, "ok")
    fallbacks_ready(cluster, False)
    reroute_traffic.sweep(ctx)  # the fallback lost: back to the primary
    assert traffic_of(cluster) == NORMAL


def node_opened(ctx: Context, node: str) -> ev.Event:
    ctx.breakers.open(node_key(node), "xid 79")
    return ev.build(ev.BreakerOpened(scope="node", name=node, reason="xid 79"),
                    source="/test/breakers")


def test_compound_faults_never_leave_traffic_on_a_revision_without_replicas(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    """Faults one after the other, none repaired: XID on the fallback's node, eviction of a
    primary's node, XID on another primary's node, a replica killed."""
    # 1. XID 79 on gpu-4 (a fallback's node): the primary keeps its minimum, nothing moves
    assert reroute_traffic.handle(node_opened(ctx, "gpu-4"), ctx).status == NOOP
    assert traffic_of(cluster) == NORMAL
    # 2. gpu-1 evicted: its primary is gone (no breaker event); still two ready primaries
    cluster.set_pod_ready("primary-1", False)
    assert reroute_traffic.sweep(ctx) == []
    assert traffic_of(cluster) == NORMAL
    # 3. XID 79 on gpu-2: one ready primary (gpu-3), one ready fallback (gpu-3): half each,
    #    not everything onto a fallback that has one replica left
    out = reroute_traffic.handle(node_opened(ctx, "gpu-2"), ctx)
    assert out.status == ACTED
    assert traffic_of(cluster) == [("surefoot-primary", 50, "primary"),
                                   ("surefoot-fallback", 50, "fallback")]
    # 4. the last healthy fallback replica is killed: all back to the primary that can answer
    cluster.set_pod_ready("fallback-3", False)
    assert [o.status for o in reroute_traffic.sweep(ctx)] == [ACTED]
    assert traffic_of(cluster)[0] == ("surefoot-primary", 100, "primary")
    # the primary's capacity comes back (gpu-2 repaired): the capacity reroute is undone
    ctx.breakers.close(node_key("gpu-2"), "replaced")
    cluster.set_pod_ready("fallback-3", True)
    assert [o.status for o in reroute_traffic.sweep(ctx)] == [ACTED]
    assert traffic_of(cluster) == NORMAL
