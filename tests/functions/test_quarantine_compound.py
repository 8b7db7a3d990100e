"""quarantine_node when faults pile up: never the last node with a ready replica of a revision,
and the caps count the nodes cordoned for any reason (fake Kubernetes API, real Redis)."""

from __future__ import annotations

from collections.abc import Callable

from functions import ACTED, DEFERRED, NOOP, Context, quarantine_node
from functions._state import quarantined
from tests.conftest import FakeTime
from tests.functions._helpers import healthy, lost, node_obj, xid
from tests.kube_fake import FakeKubeServer

FALLBACK_POD = {"serving.knative.dev/revision": "surefoot-fallback", "app": "surefoot-fallback"}


def cordoned(kube: FakeKubeServer, name: str) -> bool:
    return bool(node_obj(kube, name).get("spec", {}).get("unschedulable"))


def test_the_last_node_with_a_ready_fallback_is_left_in_service(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context], fake_time: FakeTime
) -> None:
    ctx = make_ctx(primary_min_ready=0)
    out = quarantine_node.handle(xid("gpu-4", 79), ctx)  # gpu-4 holds the only fallback
    assert out.status == DEFERRED
    assert "last ready replica of surefoot-fallback" in out.reason
    assert not cordoned(cluster, "gpu-4")
    assert quarantined(ctx) == []
    # still the last one when the retry is due: held again
    fake_time.advance(ctx.settings.drain_retry_s + 1)
    assert [o.status for o in quarantine_node.sweep(ctx)] == [DEFERRED]
    # a fallback replica is ready elsewhere: the retry quarantines the node
    cluster.add_pod("fallback-2", node="gpu-2", labels=dict(FALLBACK_POD))
    fake_time.advance(ctx.settings.drain_retry_s + 1)
    assert [o.status for o in quarantine_node.sweep(ctx)] == [ACTED]
    assert cordoned(cluster, "gpu-4")
    assert quarantined(ctx) == ["gpu-4"]


def test_the_last_node_with_a_ready_primary_is_left_in_service(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx(primary_min_ready=0, max_quarantined=4, max_quarantined_percent=100)
    cluster.add_pod("fallback-2", node="gpu-1", labels=dict(FALLBACK_POD))
    for n in ("gpu-1", "gpu-2"):
        cluster.set_pod_ready(f"primary-{n[-1]}", False)
    out = quarantine_node.handle(lost("gpu-3"), ctx)
    assert out.status == DEFERRED
    assert "surefoot-primary" in out.reason
    assert not cordoned(cluster, "gpu-3")


def test_a_held_quarantine_is_dropped_when_the_gpu_is_healthy(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context], fake_time: FakeTime
) -> None:
    ctx = make_ctx(primary_min_ready=0)
    assert quarantine_node.handle(xid("gpu-4", 79), ctx).status == DEFERRED
    assert "held quarantine is dropped" in quarantine_node.handle(healthy("gpu-4"), ctx).reason
    cluster.add_pod("fallback-2", node="gpu-2", labels=dict(FALLBACK_POD))
    fake_time.advance(ctx.settings.drain_retry_s + 1)
    assert quarantine_node.sweep(ctx) == []
    assert not cordoned(cluster, "gpu-4")


def test_the_count_cap_counts_a_node_cordoned_by_someone_else(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx(max_quarantined=1, max_quarantined_percent=100, primary_min_ready=0)
    ctx.platform.cordon("gpu-1")  # an operator's drain for a repair, still cordoned
    out = quarantine_node.handle(lost("gpu-2"), ctx)
    assert out.status == NOOP
    assert out.details["capped"] is True
    assert "gpu-1 (cordoned, not by Surefoot)" in out.reason
    assert not cordoned(cluster, "gpu-2")


def test_the_percent_cap_counts_a_node_cordoned_by_someone_else(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx(max_quarantined=10, max_quarantined_percent=50, primary_min_ready=0)
    ctx.platform.cordon("gpu-1")
    assert quarantine_node.handle(lost("gpu-2"), ctx).status == ACTED  # 2 of 2 out
    out = quarantine_node.handle(lost("gpu-3"), ctx)
    assert out.status == NOOP
    assert "cap reached: 2 of 2" in out.reason
