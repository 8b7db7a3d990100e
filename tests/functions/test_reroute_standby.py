"""reroute_traffic with warm spare pods in the fallback's min-scale (``fallback_standby``):
the spares are kept in the min-scale it sets, boosted or not, and a reroute waits for the
fallback's replicas, not for its spares (against the fake Kubernetes API and a real Redis)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from functions import ACTED, Context, FunctionSettings, SettingsError, reroute_traffic
from tests.conftest import FakeTime
from tests.functions._helpers import closed, make_cluster, opened, traffic_of
from tests.kube_fake import FakeKubeServer

FALLBACK_POD = {"serving.knative.dev/revision": "surefoot-fallback", "app": "surefoot-fallback"}
REROUTED = [("surefoot-primary", 0, "primary"), ("surefoot-fallback", 100, "fallback")]


def _min_scale(kube: FakeKubeServer) -> str | None:
    ann = kube.get("revisions.serving.knative.dev", "surefoot-fallback")["metadata"].get(
        "annotations", {})
    value: str | None = ann.get("autoscaling.knative.dev/min-scale")
    return value


def test_a_missing_spare_does_not_hold_the_reroute(
    kube: FakeKubeServer, make_ctx: Callable[..., Context], fake_time: FakeTime
) -> None:
    make_cluster(kube)
    for i in (2, 3):  # 3 ready fallback replicas: the boosted count; the spare is not there
        kube.add_pod(f"fallback-{i}", node=f"gpu-{i}", labels=dict(FALLBACK_POD))
    ctx = make_ctx(fallback_standby=1)
    out = reroute_traffic.handle(opened(), ctx)
    assert out.status == ACTED
    assert traffic_of(kube) == REROUTED
    assert fake_time.sleeps == []  # not waited for the spare
    assert _min_scale(kube) == "4"  # 1 + 1 spare + 2 boost
    assert "fallback had 3 ready replicas" in out.reason


def test_the_wait_counts_replicas_not_spares(
    kube: FakeKubeServer, make_ctx: Callable[..., Context], fake_time: FakeTime
) -> None:
    make_cluster(kube)  # one ready fallback replica
    ctx = make_ctx(fallback_standby=2, fallback_ready_timeout_s=4.0, restore_health_poll_s=2.0)
    out = reroute_traffic.handle(opened(), ctx)
    assert "1 of 3 ready replicas after 4s, moved anyway" in out.reason
    assert _min_scale(kube) == "5"


def test_the_restored_fallback_keeps_its_spare(
    kube: FakeKubeServer, make_ctx: Callable[..., Context], fake_time: FakeTime
) -> None:
    make_cluster(kube)
    ctx = make_ctx(fallback_standby=1, restore_steps=(100,), restore_step_wait_s=0.0)
    reroute_traffic.handle(opened(), ctx)
    reroute_traffic.handle(closed(), ctx)
    assert _min_scale(kube) == "2"  # 1 replica + 1 spare, unboosted


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"SUREFOOT_FALLBACK_STANDBY": "-1"}, "fallback_standby"),
        ({"SUREFOOT_FALLBACK_STANDBY": "one"}, "SUREFOOT_FALLBACK_STANDBY"),
        ({"SUREFOOT_FALLBACK_STANDBY": "1", "SUREFOOT_FALLBACK_MAX_SCALE": "3"},
         "fallback_max_scale"),
    ],
)
def test_bad_fallback_standby_names_the_setting(env: dict[str, str], field: str) -> None:
    with pytest.raises(SettingsError, match=field):
        FunctionSettings.from_env(env)
