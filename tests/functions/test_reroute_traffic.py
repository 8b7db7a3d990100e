"""reroute_traffic against the fake Kubernetes API (KnativePlatform) and a real Redis."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

import events as ev
from functions import (
    ACTED,
    DEFERRED,
    DUPLICATE,
    NOOP,
    Context,
    PermanentFunctionError,
    TemporaryFunctionError,
    reroute_traffic,
)
from functions._state import deferred
from knative import Target
from knative.breakers import node_key, revision_key
from tests.conftest import FakeTime
from tests.functions._helpers import KSVC_PATH, Sink, closed, make_cluster, opened, ping, traffic_of
from tests.kube_fake import FakeKubeServer

REROUTED = [("surefoot-primary", 0, "primary"), ("surefoot-fallback", 100, "fallback")]
NORMAL = [("surefoot-primary", 100, "primary"), ("surefoot-fallback", 0, "fallback")]
SPLIT_1_2 = [("surefoot-primary", 33, "primary"), ("surefoot-fallback", 67, "fallback")]


FALLBACK_POD = {"serving.knative.dev/revision": "surefoot-fallback", "app": "surefoot-fallback"}


@pytest.fixture
def cluster(kube: FakeKubeServer) -> FakeKubeServer:
    """The functions' test cluster, with the fallback at its boosted min-scale (3) of ready
    replicas, so a reroute moves the traffic without waiting."""
    make_cluster(kube)
    for i in (2, 3):
        kube.add_pod(f"fallback-{i}", node=f"gpu-{i}", labels=dict(FALLBACK_POD))
    return kube


def scale_of(kube: FakeKubeServer, revision: str) -> tuple[str | None, str | None]:
    ann = kube.get("revisions.serving.knative.dev", revision)["metadata"].get("annotations", {})
    return ann.get("autoscaling.knative.dev/min-scale"), ann.get(
        "autoscaling.knative.dev/max-scale"
    )


def patches(kube: FakeKubeServer) -> int:
    return len(kube.requests_to(KSVC_PATH, "PATCH"))


def test_primary_breaker_opened_reroutes_to_fallback(cluster: FakeKubeServer, ctx: Context) -> None:
    event = opened()
    out = reroute_traffic.handle(event, ctx)
    assert out.status == ACTED
    assert traffic_of(cluster) == REROUTED  # primary stays listed at 0% with its tag
    assert scale_of(cluster, "surefoot-fallback") == ("3", "0")  # 1 + boost 2
    assert out.reply is not None
    data = ev.payload_of(out.reply)
    assert isinstance(data, ev.TrafficRerouted)
    assert (data.from_revision, data.to_revision, data.percent) == (
        "surefoot-primary",
        "surefoot-fallback",
        100,
    )
    assert data.cause_event_id == event.id
    assert {"revisionName": "surefoot-primary", "percent": 0, "tag": "primary"} in data.targets


def test_other_breakers_do_nothing(cluster: FakeKubeServer, ctx: Context) -> None:
    assert reroute_traffic.handle(opened("gpu-1", scope="node"), ctx).status == NOOP
    assert reroute_traffic.handle(opened("surefoot-fallback"), ctx).status == NOOP
    assert reroute_traffic.handle(opened("other-revision"), ctx).status == NOOP
    assert traffic_of(cluster) == NORMAL
    assert patches(cluster) == 0


def test_redelivery_patches_once(cluster: FakeKubeServer, ctx: Context) -> None:
    event = opened()
    first = reroute_traffic.handle(event, ctx)
    again = reroute_traffic.handle(event, ctx)
    assert again.status == DUPLICATE
    assert again.reply is not None
    assert first.reply is not None
    assert again.reply.id == first.reply.id
    assert patches(cluster) == 1


def test_a_second_open_event_keeps_the_split(cluster: FakeKubeServer, ctx: Context) -> None:
    reroute_traffic.handle(opened(), ctx)
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == NOOP
    assert patches(cluster) == 1
    assert traffic_of(cluster) == REROUTED


def test_concurrent_deliveries_patch_once(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context]
) -> None:
    contexts = [make_ctx() for _ in range(4)]
    event = opened()
    barrier = threading.Barrier(len(contexts))
    statuses: list[str] = []

    def deliver(c: Context) -> None:
        barrier.wait()
        statuses.append(reroute_traffic.handle(event, c).status)

    threads = [threading.Thread(target=deliver, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(statuses) == sorted([ACTED] + [DUPLICATE] * 3)
    assert patches(cluster) == 1
    assert traffic_of(cluster) == REROUTED


def test_stale_patch_409_rereads_and_retries(cluster: FakeKubeServer, ctx: Context) -> None:
    cluster.fail_next(KSVC_PATH, 409, method="PATCH")
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == ACTED
    assert traffic_of(cluster) == REROUTED
    reads = cluster.requests_to(KSVC_PATH, "GET")
    assert len(reads) >= 4  # traffic re-read after the conflict


def test_api_5xx_is_temporary_and_redelivery_succeeds(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    event = opened()
    cluster.fail_next(KSVC_PATH, 503, method="PATCH")
    with pytest.raises(TemporaryFunctionError):
        reroute_traffic.handle(event, ctx)
    assert traffic_of(cluster) == NORMAL
    out = reroute_traffic.handle(event, ctx)  # the broker's redelivery
    assert out.status == ACTED
    assert traffic_of(cluster) == REROUTED


def test_api_429_is_temporary(cluster: FakeKubeServer, ctx: Context) -> None:
    cluster.fail_next(KSVC_PATH, 429, method="GET")
    with pytest.raises(TemporaryFunctionError):
        reroute_traffic.handle(opened(), ctx)


def test_api_403_is_permanent(cluster: FakeKubeServer, ctx: Context) -> None:
    cluster.fail_next(KSVC_PATH, 403, method="PATCH")
    with pytest.raises(PermanentFunctionError, match="RBAC"):
        reroute_traffic.handle(opened(), ctx)


def test_restore_in_steps_with_health_checks(
    cluster: FakeKubeServer, ctx: Context, fake_time: FakeTime, sink: Sink
) -> None:
    reroute_traffic.handle(opened(), ctx)
    seen: list[list[Any]] = []
    fake_time.on_sleep = lambda s: seen.append(traffic_of(cluster))
    out = reroute_traffic.handle(closed(), ctx)
    assert out.status == ACTED
    assert traffic_of(cluster) == NORMAL
    assert seen == [
        [("surefoot-primary", 10, "primary"), ("surefoot-fallback", 90, "fallback")],
        [("surefoot-primary", 50, "primary"), ("surefoot-fallback", 50, "fallback")],
    ]
    assert fake_time.sleeps == [30.0, 30.0]
    steps = [ev.payload_of(e) for e in sink.events] + [ev.payload_of(out.reply)]  # type: ignore[arg-type]
    assert [(s.step, s.percent) for s in steps] == [(1, 10), (2, 50), (3, 100)]  # type: ignore[attr-defined]
    assert scale_of(cluster, "surefoot-fallback") == ("1", "0")
    # a second close is nothing to do
    assert reroute_traffic.handle(closed(), ctx).status == NOOP


def test_restore_steps_are_configurable(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context], fake_time: FakeTime
) -> None:
    ctx = make_ctx(restore_steps=(25, 100), restore_step_wait_s=5.0)
    reroute_traffic.handle(opened(), ctx)
    seen: list[Any] = []
    fake_time.on_sleep = lambda s: seen.append(traffic_of(cluster)[0])
    reroute_traffic.handle(closed(), ctx)
    assert seen == [("surefoot-primary", 25, "primary")]
    assert fake_time.sleeps == [5.0]


def test_restore_returns_to_the_split_before_the_reroute(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    ctx.platform.set_traffic(
        "surefoot",
        [Target("surefoot-primary", 80, "primary"), Target("surefoot-fallback", 20, "fallback")],
    )
    reroute_traffic.handle(opened(), ctx)
    assert traffic_of(cluster) == REROUTED
    reroute_traffic.handle(closed(), ctx)
    assert traffic_of(cluster) == [
        ("surefoot-primary", 80, "primary"),
        ("surefoot-fallback", 20, "fallback"),
    ]


def test_unhealthy_primary_pauses_the_restore(
    cluster: FakeKubeServer, ctx: Context, fake_time: FakeTime
) -> None:
    reroute_traffic.handle(opened(), ctx)
    for i in (1, 2, 3):
        cluster.set_pod_ready(f"primary-{i}", False)
    out = reroute_traffic.handle(closed(), ctx)
    assert out.status == DEFERRED
    assert traffic_of(cluster) == REROUTED
    assert sum(fake_time.sleeps) >= ctx.settings.restore_health_timeout_s
    assert [m for m, _ in deferred(ctx)] == ["reroute_traffic|restore|surefoot"]
    # the primary comes back; the sweep retries the restore when due
    cluster.set_pod_ready("primary-2", True)
    fake_time.advance(ctx.settings.restore_step_wait_s + 1)
    swept = reroute_traffic.sweep(ctx)
    assert [o.status for o in swept] == [ACTED]
    assert traffic_of(cluster) == NORMAL


def test_replicas_on_nodes_with_open_breakers_do_not_count(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context]
) -> None:
    ctx = make_ctx(restore_min_ready=2)
    reroute_traffic.handle(opened(), ctx)
    ctx.breakers.open(node_key("gpu-1"), "xid")
    ctx.breakers.open(node_key("gpu-2"), "xid")
    n, detail = reroute_traffic.primary_health(ctx)
    assert n == 1
    assert "gpu-1, gpu-2" in detail
    assert reroute_traffic.handle(closed(), ctx).status == DEFERRED


def test_health_recovering_during_the_wait(
    cluster: FakeKubeServer, ctx: Context, fake_time: FakeTime
) -> None:
    reroute_traffic.handle(opened(), ctx)
    for i in (1, 2, 3):
        cluster.set_pod_ready(f"primary-{i}", False)
    fake_time.on_sleep = lambda s: cluster.set_pod_ready("primary-1", True)
    assert reroute_traffic.handle(closed(), ctx).status == ACTED
    assert traffic_of(cluster) == NORMAL


def test_a_new_open_supersedes_a_restore_in_progress(
    cluster: FakeKubeServer, ctx: Context, make_ctx: Callable[..., Context], fake_time: FakeTime
) -> None:
    other = make_ctx()
    reroute_traffic.handle(opened(), ctx)
    calls = []

    def during_wait(_: float) -> None:
        if not calls:
            calls.append(1)
            ctx.breakers.open(revision_key("surefoot-primary"), "failing again")
            reroute_traffic.handle(opened(), other)

    fake_time.on_sleep = during_wait
    out = reroute_traffic.handle(closed(), ctx)
    assert out.status == NOOP
    assert "superseded" in out.reason
    assert traffic_of(cluster) == REROUTED


def test_restore_stops_if_the_breaker_reopened(cluster: FakeKubeServer, ctx: Context) -> None:
    reroute_traffic.handle(opened(), ctx)
    ctx.breakers.open(revision_key("surefoot-primary"), "again")
    out = reroute_traffic.handle(closed(), ctx)
    assert out.status == NOOP
    assert "open again" in out.reason
    assert traffic_of(cluster) == REROUTED


def test_restore_never_lowers_the_primary(cluster: FakeKubeServer, ctx: Context) -> None:
    out = reroute_traffic.handle(closed(), ctx)  # nothing was rerouted
    assert out.status == NOOP
    assert traffic_of(cluster) == NORMAL
    assert patches(cluster) == 0


def test_missing_fallback_target_is_added(kube: FakeKubeServer, ctx: Context) -> None:
    kube.add_revision("surefoot-primary", service="surefoot")
    kube.add_revision("surefoot-fallback", configuration="surefoot-fallback")
    kube.create(
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": "surefoot", "namespace": "default"},
            "spec": {
                "template": {
                    "metadata": {"name": "surefoot-primary"},
                    "spec": {"containers": [{"image": "x/y:1"}]},
                },
                "traffic": [{"revisionName": "surefoot-primary", "percent": 100, "tag": "primary"}],
            },
        }
    )
    # the split adds the fallback target...
    assert reroute_traffic.rerouted_split(ctx.platform.traffic("surefoot"), ctx.settings) == [
        Target("surefoot-primary", 0, "primary"), Target("surefoot-fallback", 100, "fallback")]
    # ...but a fallback the service does not route to has no ready replica of the service:
    # the traffic is not moved to it
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == NOOP
    assert "has a ready replica; traffic left as it is" in out.reason
    assert traffic_of(kube) == [("surefoot-primary", 100, "primary")]


def test_service_without_the_primary_is_permanent(kube: FakeKubeServer, ctx: Context) -> None:
    kube.add_revision("surefoot-other", service="surefoot")
    kube.create(
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": "surefoot", "namespace": "default"},
            "spec": {
                "template": {
                    "metadata": {"name": "surefoot-other"},
                    "spec": {"containers": [{"image": "x/y:1"}]},
                },
                "traffic": [{"revisionName": "surefoot-other", "percent": 100}],
            },
        }
    )
    with pytest.raises(PermanentFunctionError, match="not in the traffic"):
        reroute_traffic.handle(opened(), ctx)


def test_ping_runs_a_due_restore(
    cluster: FakeKubeServer, ctx: Context, fake_time: FakeTime
) -> None:
    reroute_traffic.handle(opened(), ctx)
    for i in (1, 2, 3):
        cluster.set_pod_ready(f"primary-{i}", False)
    reroute_traffic.handle(closed(), ctx)
    cluster.set_pod_ready("primary-1", True)
    fake_time.advance(100)
    out = reroute_traffic.handle(ping(), ctx)
    assert out.status == ACTED
    assert traffic_of(cluster) == NORMAL


# --- KServe -------------------------------------------------------------------------------


class FakeCanary:
    """An InferenceService's canaryTrafficPercent, recorded."""

    def __init__(self, percent: int | None = None) -> None:
        self.percent = percent
        self.history: list[int] = []

    def canary_percent(self, isvc: str) -> int | None:
        assert isvc == "llm"
        return self.percent

    def set_canary_percent(self, isvc: str, percent: int) -> None:
        assert isvc == "llm"
        self.percent = percent
        self.history.append(percent)


def test_kserve_is_steered_by_canary_percent(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context]
) -> None:
    canary = FakeCanary()
    ctx = make_ctx(kserve_isvc="llm", canary=canary)
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == ACTED
    assert canary.history == [0]
    assert patches(cluster) == 0  # the Knative Service is KServe's: never patched
    done = reroute_traffic.handle(closed(), ctx)
    assert done.status == ACTED
    assert canary.history == [0, 10, 50, 100]
    assert patches(cluster) == 0


def test_kserve_restores_a_canary_in_progress(
    cluster: FakeKubeServer, make_ctx: Callable[..., Context]
) -> None:
    canary = FakeCanary(40)
    ctx = make_ctx(kserve_isvc="llm", canary=canary)
    reroute_traffic.handle(opened(), ctx)
    reroute_traffic.handle(closed(), ctx)
    assert canary.history == [0, 4, 20, 40]


def test_kserve_against_the_api_server_maps_errors(kube: FakeKubeServer) -> None:
    from functions import KServeCanary
    from knative import NotFound

    canary = KServeCanary(kube.api_client(), "default")
    with pytest.raises(NotFound):  # the fake serves no InferenceServices: 404
        canary.canary_percent("llm")


def test_split_arithmetic_keeps_other_targets(ctx: Context) -> None:
    s = ctx.settings
    cur = [
        Target("surefoot-primary", 70, "primary"),
        Target("surefoot-fallback", 10, "fallback"),
        Target("canary-x", 20, "canary"),
    ]
    out = reroute_traffic.rerouted_split(cur, s)
    assert out == [
        Target("surefoot-primary", 0, "primary"),
        Target("surefoot-fallback", 80, "fallback"),
        Target("canary-x", 20, "canary"),
    ]
    step = reroute_traffic.restored_split(out, s, 70, 50)
    assert step[0].percent == 35
    assert step[1].percent == 45
    assert step[2].percent == 20
    assert sum(t.percent for t in step) == 100


def test_scale_failure_does_not_undo_the_reroute(
    cluster: FakeKubeServer, ctx: Context, fake_time: FakeTime
) -> None:
    cluster.fail_next(
        "/apis/serving.knative.dev/v1/namespaces/default/revisions/surefoot-fallback",
        503,
        method="PATCH",
    )
    ctx.breakers.open(revision_key("surefoot-primary"), "failing")  # what the event reports
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == ACTED
    assert "retrying" in out.reason
    assert traffic_of(cluster) == REROUTED
    assert scale_of(cluster, "surefoot-fallback") == (None, None)
    fake_time.advance(6)
    reroute_traffic.sweep(ctx)
    assert scale_of(cluster, "surefoot-fallback") == ("3", "0")
    assert deferred(ctx) == []


def test_permanent_scale_failure_is_reported_not_retried(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    cluster.fail_next(
        "/apis/serving.knative.dev/v1/namespaces/default/revisions/surefoot-fallback",
        403,
        method="GET",
    )
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == ACTED
    assert "not set" in out.reason
    assert "retrying" not in out.reason
    assert deferred(ctx) == []


def halfopened(revision: str = "surefoot-primary") -> ev.Event:
    return ev.build(
        ev.BreakerHalfOpened(scope="revision", name=revision, reason="wait over"),
        source="/test/breakers",
    )


def test_half_open_gives_the_primary_trial_traffic(
    cluster: FakeKubeServer, ctx: Context, fake_time: FakeTime
) -> None:
    """Gateways probe a half-open revision only with requests routed to it: at 0% it would get
    none and never close. The trial step gives it the first restore step."""
    reroute_traffic.handle(opened(), ctx)
    out = reroute_traffic.handle(halfopened(), ctx)
    assert out.status == ACTED
    assert traffic_of(cluster) == [
        ("surefoot-primary", 10, "primary"),
        ("surefoot-fallback", 90, "fallback"),
    ]
    p = ev.payload_of(out.reply) if out.reply else None
    assert isinstance(p, ev.TrafficRestored)
    assert (p.step, p.percent) == (1, 10)
    # the probes fail: the breaker opens again and the share goes back to the fallback
    assert reroute_traffic.handle(opened(), ctx).status == ACTED
    assert traffic_of(cluster) == REROUTED
    # they succeed next time: closed -> the restore continues from the trial step
    reroute_traffic.handle(halfopened(), ctx)
    assert reroute_traffic.handle(closed(), ctx).status == ACTED
    assert traffic_of(cluster) == NORMAL


def test_half_open_without_a_reroute_or_ready_primary_does_nothing(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    assert reroute_traffic.handle(halfopened(), ctx).status == NOOP  # never rerouted
    reroute_traffic.handle(opened(), ctx)
    for i in (1, 2, 3):
        cluster.set_pod_ready(f"primary-{i}", False)
    out = reroute_traffic.handle(halfopened(), ctx)
    assert out.status == NOOP
    assert "no trial traffic" in out.reason
    assert traffic_of(cluster) == REROUTED


def test_kserve_half_open_trial(cluster: FakeKubeServer, make_ctx: Callable[..., Context]) -> None:
    canary = FakeCanary()
    ctx = make_ctx(kserve_isvc="llm", canary=canary)
    reroute_traffic.handle(opened(), ctx)
    assert reroute_traffic.handle(halfopened(), ctx).status == ACTED
    assert canary.history == [0, 10]
    reroute_traffic.handle(closed(), ctx)
    assert canary.history[-1] == 100


def node_event(kind: type[ev.EventData], node: str) -> ev.Event:
    return ev.build(
        kind(scope="node", name=node, reason="test"),  # type: ignore[call-arg]
        source="/test/breakers",
    )


def test_node_breakers_below_the_primary_minimum_reroute(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    ctx.breakers.open(node_key("gpu-1"), "xid")
    assert reroute_traffic.handle(node_event(ev.BreakerOpened, "gpu-1"), ctx).status == NOOP
    ctx.breakers.open(node_key("gpu-2"), "xid")
    out = reroute_traffic.handle(node_event(ev.BreakerOpened, "gpu-2"), ctx)
    assert out.status == ACTED
    # one ready primary (gpu-3) and two ready fallbacks (gpu-3, gpu-4) on healthy nodes
    assert traffic_of(cluster) == SPLIT_1_2
    p = ev.payload_of(out.reply) if out.reply else None
    assert isinstance(p, ev.TrafficRerouted)
    assert "below its minimum" in p.reason
    # one node comes back: the primary is at its minimum again -> restore
    ctx.breakers.close(node_key("gpu-2"), "probes ok")
    out = reroute_traffic.handle(node_event(ev.BreakerClosed, "gpu-2"), ctx)
    assert out.status == ACTED
    assert traffic_of(cluster) == NORMAL


def test_capacity_restore_by_the_sweep(cluster: FakeKubeServer, ctx: Context) -> None:
    for n in ("gpu-1", "gpu-2"):
        ctx.breakers.open(node_key(n), "xid")
    reroute_traffic.handle(node_event(ev.BreakerOpened, "gpu-2"), ctx)
    assert reroute_traffic.sweep(ctx) == []
    assert traffic_of(cluster) == SPLIT_1_2
    ctx.breakers.close(node_key("gpu-1"), "replaced")
    assert [o.status for o in reroute_traffic.sweep(ctx)] == [ACTED]
    assert traffic_of(cluster) == NORMAL


def test_a_breaker_reroute_is_not_undone_by_node_capacity(
    cluster: FakeKubeServer, ctx: Context
) -> None:
    ctx.breakers.open(revision_key("surefoot-primary"), "failing")  # what the event reports
    reroute_traffic.handle(opened(), ctx)
    out = reroute_traffic.handle(node_event(ev.BreakerClosed, "gpu-1"), ctx)
    assert out.status == NOOP
    assert traffic_of(cluster) == REROUTED
    assert reroute_traffic.sweep(ctx) == []


# --- the fallback scales up before it takes the share ---------------------------------------


def test_reroute_raises_the_fallback_first_and_waits_for_its_replicas(
    kube: FakeKubeServer, ctx: Context, fake_time: FakeTime
) -> None:
    make_cluster(kube)  # one ready fallback replica; the boosted min-scale is 3
    order: list[str] = []

    def on_sleep(_: float) -> None:
        if not order:
            assert scale_of(kube, "surefoot-fallback") == ("3", "0")  # raised first
            assert traffic_of(kube) == NORMAL  # traffic not moved yet
        order.append("wait")
        if len(order) == 2:
            for i in (2, 3):
                kube.add_pod(f"fallback-{i}", node=f"gpu-{i}", labels=dict(FALLBACK_POD))

    fake_time.on_sleep = on_sleep
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == ACTED
    assert traffic_of(kube) == REROUTED
    assert order == ["wait", "wait"]
    assert "fallback had 3 ready replicas" in out.reason


def test_reroute_wait_is_bounded(
    kube: FakeKubeServer, make_ctx: Callable[..., Context], fake_time: FakeTime
) -> None:
    make_cluster(kube)
    ctx = make_ctx(fallback_ready_timeout_s=10.0, restore_health_poll_s=2.0)
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == ACTED
    assert traffic_of(kube) == REROUTED
    assert sum(fake_time.sleeps) == pytest.approx(10.0)
    assert "1 of 3 ready replicas after 10s, moved anyway" in out.reason


def test_reroute_moves_at_once_when_the_primary_has_no_ready_replica(
    kube: FakeKubeServer, ctx: Context, fake_time: FakeTime
) -> None:
    make_cluster(kube)
    for i in (1, 2, 3):
        kube.set_pod_ready(f"primary-{i}", False)
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == ACTED
    assert traffic_of(kube) == REROUTED
    assert fake_time.sleeps == []
    assert "moved at once" in out.reason
