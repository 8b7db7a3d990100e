"""quarantine_node against the fake Kubernetes API (KnativePlatform, PDB-aware eviction) and a
real Redis: label, cordon, drain; scale-awareness; caps; dry-run; opt-out; release."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

import events as ev
from functions import (
    ACTED,
    DEFERRED,
    DRY_RUN,
    DUPLICATE,
    NOOP,
    Context,
    PermanentFunctionError,
    TemporaryFunctionError,
    quarantine_node,
)
from functions._state import deferred, quarantined
from tests.conftest import FakeTime
from tests.functions._helpers import GPU_LABEL, add_primary_pod, healthy, lost, node_obj, ping, xid
from tests.kube_fake import FakeKubeServer
from tests.kube_fake._state import resource_named

LABEL = "surefoot.dev/gpu-error"


def is_quarantined(kube: FakeKubeServer, node: str) -> bool:
    obj = node_obj(kube, node)
    return obj["metadata"]["labels"].get(LABEL) == "true" and bool(
        obj["spec"].get("unschedulable"))


def pods_on(kube: FakeKubeServer, node: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in kube.list("pods")
                  if p["spec"].get("nodeName") == node)


def evictions(kube: FakeKubeServer) -> int:
    return sum(1 for r in kube.requests_to("/api/v1/namespaces/default/pods")
               if r.path.endswith("/eviction") and r.status == 201)


def test_fatal_xid_labels_cordons_and_drains(cluster: FakeKubeServer, ctx: Context) -> None:
    cluster.add_pod("logger", node="gpu-1", owner=("DaemonSet", "logger"))
    event = xid("gpu-1", 79)
    out = quarantine_node.handle(event, ctx)
    assert out.status == ACTED
    assert is_quarantined(cluster, "gpu-1")
    assert pods_on(cluster, "gpu-1") == ["logger"]  # DaemonSet pods stay
    assert out.reply is not None
    p = ev.payload_of(out.reply)
    assert isinstance(p, ev.NodeQuarantined)
    assert p.evicted_pods == ("primary-1",)
    assert p.cause_event_id == event.id
    assert not p.dry_run
    assert quarantined(ctx) == ["gpu-1"]
    assert quarantine_node.status(ctx)[0]["node"] == "gpu-1"


@pytest.mark.parametrize("number", [43, 45])
def test_benign_xid_quarantines_nothing(cluster: FakeKubeServer, ctx: Context,
                                        number: int) -> None:
    out = quarantine_node.handle(xid("gpu-1", number), ctx)
    assert out.status == NOOP
    assert out.reply is None
    assert not is_quarantined(cluster, "gpu-1")
    assert pods_on(cluster, "gpu-1") == ["primary-1"]
    assert not [r for r in cluster.requests if r.method == "PATCH"]
    assert quarantined(ctx) == []


def test_redelivery_drains_once(cluster: FakeKubeServer, ctx: Context) -> None:
    event = xid("gpu-1", 79)
    first = quarantine_node.handle(event, ctx)
    again = quarantine_node.handle(event, ctx)
    assert again.status == DUPLICATE
    assert again.reply is not None
    assert first.reply is not None
    assert again.reply.id == first.reply.id
    assert evictions(cluster) == 1
    # a different event about the same node finds it quarantined already
    assert quarantine_node.handle(lost("gpu-1"), ctx).status == NOOP


def test_concurrent_deliveries_quarantine_once(cluster: FakeKubeServer,
                                               make_ctx: Callable[..., Context]) -> None:
    contexts = [make_ctx() for _ in range(4)]
    event = xid("gpu-2", 79)
    barrier = threading.Barrier(len(contexts))
    statuses: list[str] = []

    def deliver(c: Context) -> None:
        barrier.wait()
        statuses.append(quarantine_node.handle(event, c).status)

    threads = [threading.Thread(target=deliver, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(statuses) == sorted([ACTED] + [DUPLICATE] * 3)
    assert evictions(cluster) == 1
    assert is_quarantined(cluster, "gpu-2")


def test_drain_is_deferred_below_the_primary_minimum(cluster: FakeKubeServer,
                                                     make_ctx: Callable[..., Context],
                                                     fake_time: FakeTime) -> None:
    ctx = make_ctx(primary_min_ready=3)
    out = quarantine_node.handle(xid("gpu-1", 95), ctx)
    assert out.status == ACTED
    assert "drain deferred" in out.reason
    assert is_quarantined(cluster, "gpu-1")
    assert pods_on(cluster, "gpu-1") == ["primary-1"]
    assert [m for m, _ in deferred(ctx)] == ["quarantine_node|drain|gpu-1"]
    # a replacement replica becomes ready elsewhere; the deferred drain runs when due
    add_primary_pod(cluster, "primary-4", "gpu-4")
    fake_time.advance(ctx.settings.drain_retry_s + 1)
    swept = quarantine_node.sweep(ctx)
    assert [o.status for o in swept] == [ACTED]
    assert pods_on(cluster, "gpu-1") == []
    assert deferred(ctx) == []


def test_a_lost_gpu_drains_regardless_of_the_minimum(cluster: FakeKubeServer,
                                                     make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(primary_min_ready=3)
    out = quarantine_node.handle(lost("gpu-1"), ctx)
    assert out.status == ACTED
    assert pods_on(cluster, "gpu-1") == []


def test_a_notready_node_drains_regardless_of_the_minimum(cluster: FakeKubeServer,
                                                          make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(primary_min_ready=3)
    cluster.set_node_ready("gpu-1", False)
    out = quarantine_node.handle(xid("gpu-1", 95), ctx)
    assert out.status == ACTED
    assert pods_on(cluster, "gpu-1") == []


def test_pdb_429_is_retried_with_backoff(cluster: FakeKubeServer, ctx: Context,
                                         fake_time: FakeTime) -> None:
    cluster.fail_next("/api/v1/namespaces/default/pods/primary-1/eviction", 429, times=2)
    out = quarantine_node.handle(xid("gpu-1", 79), ctx)
    assert out.status == ACTED
    assert pods_on(cluster, "gpu-1") == []
    assert len(fake_time.sleeps) == 2  # the platform's backoff, on the injected clock


def test_pdb_refusal_past_the_drain_timeout_is_retried_later(cluster: FakeKubeServer,
                                                             ctx: Context,
                                                             fake_time: FakeTime) -> None:
    cluster.fail_next("/api/v1/namespaces/default/pods/primary-1/eviction", 429, times=100)
    out = quarantine_node.handle(xid("gpu-1", 79), ctx)
    assert out.status == ACTED
    assert "refused" in out.reason
    assert [m for m, _ in deferred(ctx)] == ["quarantine_node|drain|gpu-1"]
    cluster._faults.clear()  # the budget allows it now
    fake_time.advance(ctx.settings.drain_retry_s + 1)
    assert [o.status for o in quarantine_node.sweep(ctx)] == [ACTED]
    assert pods_on(cluster, "gpu-1") == []


def test_cap_on_nodes_at_once(cluster: FakeKubeServer, make_ctx: Callable[..., Context]) -> None:
    for i in range(5, 11):
        cluster.add_node(f"gpu-{i}", labels=dict(GPU_LABEL))
    ctx = make_ctx(max_quarantined=2, max_quarantined_percent=100, primary_min_ready=0)
    assert quarantine_node.handle(lost("gpu-5"), ctx).status == ACTED
    assert quarantine_node.handle(lost("gpu-6"), ctx).status == ACTED
    out = quarantine_node.handle(lost("gpu-7"), ctx)
    assert out.status == NOOP
    assert "cap reached" in out.reason
    assert not is_quarantined(cluster, "gpu-7")
    quarantine_node.release(ctx, "gpu-5")
    assert quarantine_node.handle(lost("gpu-7"), ctx).status == ACTED


def test_cap_on_the_share_of_gpu_nodes(cluster: FakeKubeServer,
                                       make_ctx: Callable[..., Context]) -> None:
    cluster.add_node("cpu-1")  # not a GPU node: does not count
    ctx = make_ctx(max_quarantined=10, max_quarantined_percent=50, primary_min_ready=0)
    assert quarantine_node.cap_for(ctx, ctx.platform.nodes()) == 2  # 50% of 4 GPU nodes
    assert quarantine_node.handle(lost("gpu-1"), ctx).status == ACTED
    assert quarantine_node.handle(lost("gpu-2"), ctx).status == ACTED
    assert quarantine_node.handle(lost("gpu-3"), ctx).status == NOOP


def test_cap_is_at_least_one_node(cluster: FakeKubeServer,
                                  make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(max_quarantined_percent=10)
    assert quarantine_node.cap_for(ctx, ctx.platform.nodes()) == 1


def test_cap_holds_under_a_storm_of_concurrent_faults(cluster: FakeKubeServer,
                                                      make_ctx: Callable[..., Context]) -> None:
    for i in range(5, 13):
        cluster.add_node(f"gpu-{i}", labels=dict(GPU_LABEL))
    contexts = [make_ctx(max_quarantined=3, max_quarantined_percent=100) for _ in range(8)]
    barrier = threading.Barrier(8)
    statuses: list[str] = []

    def fault(i: int) -> None:
        barrier.wait()
        statuses.append(quarantine_node.handle(lost(f"gpu-{i + 5}"), contexts[i]).status)

    threads = [threading.Thread(target=fault, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses.count(ACTED) == 3
    assert statuses.count(NOOP) == 5
    assert sum(is_quarantined(cluster, f"gpu-{i}") for i in range(5, 13)) == 3
    assert len(quarantined(contexts[0])) == 3


def test_nodes_that_disappeared_give_their_place_back(cluster: FakeKubeServer,
                                                      make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(max_quarantined=1, primary_min_ready=0)
    assert quarantine_node.handle(lost("gpu-1"), ctx).status == ACTED
    cluster.state.delete(resource_named("nodes"), None, "gpu-1")
    assert quarantine_node.handle(lost("gpu-2"), ctx).status == ACTED


def test_dry_run_changes_nothing(cluster: FakeKubeServer,
                                 make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(dry_run=True)
    out = quarantine_node.handle(xid("gpu-1", 79), ctx)
    assert out.status == DRY_RUN
    p = ev.payload_of(out.reply) if out.reply else None
    assert isinstance(p, ev.NodeQuarantined)
    assert p.dry_run
    assert p.evicted_pods == ("primary-1",)
    assert "would label, cordon and drain" in p.reason
    assert not is_quarantined(cluster, "gpu-1")
    assert pods_on(cluster, "gpu-1") == ["primary-1"]
    assert not [r for r in cluster.requests if r.method in ("PATCH", "POST")]
    assert quarantined(ctx) == []


def test_dry_run_reports_the_scale_guard(cluster: FakeKubeServer,
                                         make_ctx: Callable[..., Context]) -> None:
    ctx = make_ctx(dry_run=True, primary_min_ready=3)
    out = quarantine_node.handle(xid("gpu-1", 95), ctx)
    assert out.status == DRY_RUN
    assert "defer the drain" in out.reason


def test_opted_out_node_is_left_alone(cluster: FakeKubeServer, ctx: Context) -> None:
    cluster.patch_object("nodes", "gpu-1",
                         {"metadata": {"labels": {"surefoot.dev/quarantine": "disabled"}}}, None)
    out = quarantine_node.handle(xid("gpu-1", 79), ctx)
    assert out.status == NOOP
    assert "opted out" in out.reason
    assert not is_quarantined(cluster, "gpu-1")
    assert pods_on(cluster, "gpu-1") == ["primary-1"]


def test_unknown_node_is_a_noop(cluster: FakeKubeServer, ctx: Context) -> None:
    assert quarantine_node.handle(lost("nowhere"), ctx).status == NOOP


def test_node_patch_5xx_is_temporary_then_redelivery_works(cluster: FakeKubeServer,
                                                           ctx: Context) -> None:
    event = xid("gpu-1", 79)
    cluster.fail_next("/api/v1/nodes/gpu-1", 500, method="PATCH")
    with pytest.raises(TemporaryFunctionError):
        quarantine_node.handle(event, ctx)
    out = quarantine_node.handle(event, ctx)
    assert out.status == ACTED
    assert is_quarantined(cluster, "gpu-1")
    assert quarantined(ctx) == ["gpu-1"]


def test_node_patch_409_is_temporary(cluster: FakeKubeServer, ctx: Context) -> None:
    cluster.fail_next("/api/v1/nodes/gpu-1", 409, method="PATCH")
    with pytest.raises(TemporaryFunctionError):
        quarantine_node.handle(xid("gpu-1", 79), ctx)


def test_forbidden_cordon_is_permanent_and_frees_the_cap(cluster: FakeKubeServer,
                                                         ctx: Context) -> None:
    cluster.fail_next("/api/v1/nodes/gpu-1", 403, method="PATCH")
    with pytest.raises(PermanentFunctionError):
        quarantine_node.handle(xid("gpu-1", 79), ctx)
    assert quarantined(ctx) == []


def test_healthy_releases_after_the_hold_time(cluster: FakeKubeServer, ctx: Context,
                                              fake_time: FakeTime) -> None:
    quarantine_node.handle(lost("gpu-1"), ctx)
    assert quarantine_node.handle(healthy("gpu-1"), ctx).status == DEFERRED
    fake_time.advance(ctx.settings.release_hold_s - 5)
    assert quarantine_node.sweep(ctx) == []
    fake_time.advance(10)
    out = quarantine_node.handle(ping(), ctx)
    assert out.status == ACTED
    assert out.reply is not None
    assert out.reply.type == ev.NodeReleased.TYPE
    obj = node_obj(cluster, "gpu-1")
    assert LABEL not in obj["metadata"]["labels"]
    assert not obj["spec"].get("unschedulable")
    assert quarantined(ctx) == []


def test_a_new_fault_cancels_the_release(cluster: FakeKubeServer, ctx: Context,
                                         fake_time: FakeTime) -> None:
    quarantine_node.handle(lost("gpu-1"), ctx)
    quarantine_node.handle(healthy("gpu-1"), ctx)
    quarantine_node.handle(xid("gpu-1", 79), ctx)
    fake_time.advance(ctx.settings.release_hold_s + 1)
    assert quarantine_node.sweep(ctx) == []
    assert is_quarantined(cluster, "gpu-1")


def test_healthy_for_a_node_not_quarantined_is_a_noop(cluster: FakeKubeServer,
                                                      ctx: Context) -> None:
    assert quarantine_node.handle(healthy("gpu-2"), ctx).status == NOOP
    assert deferred(ctx) == []


def test_operator_release(cluster: FakeKubeServer, ctx: Context) -> None:
    quarantine_node.handle(lost("gpu-3"), ctx)
    out = quarantine_node.release(ctx, "gpu-3")
    assert out.status == ACTED
    assert not is_quarantined(cluster, "gpu-3")
    assert quarantine_node.release(ctx, "gpu-3").status == NOOP
    with pytest.raises(PermanentFunctionError, match="does not exist"):
        quarantine_node.release(ctx, "nowhere")


def test_release_leaves_nodes_cordoned_by_someone_else(cluster: FakeKubeServer,
                                                       ctx: Context) -> None:
    ctx.platform.cordon("gpu-2")
    assert quarantine_node.release(ctx, "gpu-2").status == NOOP
    assert node_obj(cluster, "gpu-2")["spec"].get("unschedulable")
