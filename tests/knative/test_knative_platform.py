"""KnativePlatform against the fake Kubernetes API server: every call, and API errors mapped
to the platform's error types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from knative import (
    Conflict,
    NotFound,
    PermanentPlatformError,
    Platform,
    PlatformError,
    Target,
    TemporaryPlatformError,
    TooManyRequests,
    Unauthorized,
)
from knative.platforms.kube import (
    LATEST,
    KnativePlatform,
    KubeSettings,
    KubeSettingsError,
    map_api_error,
)
from tests.conftest import FakeTime
from tests.kube_fake import FakeKubeServer
from tests.kube_fake._state import PODAUTOSCALER, resource_named

KSVC_PATH = "/apis/serving.knative.dev/v1/namespaces/default/services/llm"


def _ksvc(traffic: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"name": "llm-v1"},
            "spec": {"containers": [{"image": "example/replica:1"}]},
        }
    }
    if traffic is not None:
        spec["traffic"] = traffic
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "llm", "namespace": "default"},
        "spec": spec,
    }


@pytest.fixture
def llm(kube: FakeKubeServer) -> dict[str, Any]:
    """The inference service: primary revision llm-v1 and fallback llm-fallback-v1, both its
    own (a Service-owned Route may name no other), primary 100%."""
    kube.add_revision("llm-v1", service="llm")
    kube.add_revision("llm-fallback-v1", service="llm")
    return kube.create(
        _ksvc(
            [
                {"revisionName": "llm-v1", "percent": 100, "tag": "primary"},
                {"revisionName": "llm-fallback-v1", "percent": 0, "tag": "fallback"},
            ]
        )
    )


def test_is_a_platform(platform: KnativePlatform) -> None:
    assert isinstance(platform, Platform)


# ---------------------------------------------------------------- traffic
def test_traffic_reads_spec(platform: KnativePlatform, llm: dict[str, Any]) -> None:
    assert platform.traffic("llm") == [
        Target("llm-v1", 100, "primary"),
        Target("llm-fallback-v1", 0, "fallback"),
    ]
    assert platform.traffic_status("llm") == platform.traffic("llm")


def test_traffic_without_spec_traffic_is_latest(
    platform: KnativePlatform, kube: FakeKubeServer
) -> None:
    kube.add_revision("llm-v1", service="llm")
    kube.create(_ksvc())
    assert platform.traffic("llm") == [Target("llm-v1", 100, None)]


def test_set_traffic_replaces_the_whole_list(
    platform: KnativePlatform, kube: FakeKubeServer, llm: dict[str, Any]
) -> None:
    platform.set_traffic(
        "llm", [Target("llm-v1", 0, "primary"), Target("llm-fallback-v1", 100, "fallback")]
    )
    patch = kube.requests_to(KSVC_PATH, "PATCH")[-1]
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body == {
        "spec": {
            "traffic": [
                {"revisionName": "llm-v1", "percent": 0, "tag": "primary"},
                {"revisionName": "llm-fallback-v1", "percent": 100, "tag": "fallback"},
            ]
        }
    }
    status = kube.get("services.serving.knative.dev", "llm")["status"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in status] == [
        ("llm-v1", 0),
        ("llm-fallback-v1", 100),
    ]
    platform.set_traffic("llm", [Target(LATEST, 100)])
    assert kube.get("services.serving.knative.dev", "llm")["spec"]["traffic"] == [
        {"latestRevision": True, "percent": 100}
    ]


@pytest.mark.parametrize(
    ("targets", "fragment"),
    [
        ([Target("llm-v1", 60), Target("llm-fallback-v1", 30)], "sum to 90"),
        ([Target("llm-v1", 120), Target("llm-fallback-v1", -20)], "not within 0..100"),
        ([Target("llm-v1", 50, "x"), Target("llm-fallback-v1", 50, "x")], "tags must be unique"),
        ([Target("", 100)], "needs a revision"),
    ],
)
def test_set_traffic_rejects_bad_splits_before_sending(
    platform: KnativePlatform,
    kube: FakeKubeServer,
    llm: dict[str, Any],
    targets: list[Target],
    fragment: str,
) -> None:
    with pytest.raises(PermanentPlatformError, match=fragment):
        platform.set_traffic("llm", targets)
    assert kube.requests_to(KSVC_PATH, "PATCH") == []


def test_set_traffic_refuses_a_kserve_managed_service(
    platform: KnativePlatform, kube: FakeKubeServer
) -> None:
    kube.add_revision("llm-v1", service="llm")
    svc = _ksvc()
    svc["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "name": "llm",
            "uid": "u-1",
            "controller": True,
        }
    ]
    kube.create(svc)
    with pytest.raises(PermanentPlatformError, match="canaryTrafficPercent"):
        platform.set_traffic("llm", [Target("llm-v1", 100)])
    assert kube.requests_to(KSVC_PATH, "PATCH") == []


def test_set_traffic_to_missing_service_is_not_found(platform: KnativePlatform) -> None:
    with pytest.raises(NotFound, match="llm"):
        platform.set_traffic("llm", [Target("llm-v1", 100)])


# ---------------------------------------------------------------- scale
def test_set_scale_writes_revision_and_podautoscaler(
    platform: KnativePlatform, kube: FakeKubeServer, llm: dict[str, Any]
) -> None:
    platform.set_scale("llm", "llm-fallback-v1", 3, 6)
    for res in ("revisions.serving.knative.dev", "podautoscalers.autoscaling.internal.knative.dev"):
        ann = kube.get(res, "llm-fallback-v1")["metadata"]["annotations"]
        assert ann["autoscaling.knative.dev/min-scale"] == "3"
        assert ann["autoscaling.knative.dev/max-scale"] == "6"


def test_set_scale_without_podautoscaler_still_annotates(
    platform: KnativePlatform, kube: FakeKubeServer, llm: dict[str, Any]
) -> None:
    kube.state.delete(PODAUTOSCALER, "default", "llm-v1")
    platform.set_scale("llm", "llm-v1", 1, 0)
    ann = kube.get("revisions.serving.knative.dev", "llm-v1")["metadata"]["annotations"]
    assert ann["autoscaling.knative.dev/min-scale"] == "1"


@pytest.mark.parametrize(
    ("minimum", "maximum", "fragment"),
    [(-1, 3, "min_scale"), (2, -1, "max_scale"), (5, 3, "below min_scale")],
)
def test_set_scale_rejects_bad_bounds(
    platform: KnativePlatform, llm: dict[str, Any], minimum: int, maximum: int, fragment: str
) -> None:
    with pytest.raises(PermanentPlatformError, match=fragment):
        platform.set_scale("llm", "llm-v1", minimum, maximum)


def test_set_scale_of_unrelated_or_missing_revision(
    platform: KnativePlatform, kube: FakeKubeServer, llm: dict[str, Any]
) -> None:
    kube.add_revision("other-v1", service="other")
    with pytest.raises(NotFound, match="neither owned by nor routed"):
        platform.set_scale("llm", "other-v1", 1, 2)
    with pytest.raises(NotFound, match="llm-v7"):
        platform.set_scale("llm", "llm-v7", 1, 2)


# ---------------------------------------------------------------- replicas
def test_replicas_cover_own_and_fallback_revisions(
    platform: KnativePlatform, kube: FakeKubeServer, llm: dict[str, Any]
) -> None:
    own = {"serving.knative.dev/service": "llm", "serving.knative.dev/revision": "llm-v1"}
    kube.add_pod("llm-v1-a", node="n1", labels=own, ip="10.1.0.1")
    kube.add_pod("llm-v1-b", node="n2", labels=own, ready=False, ip="10.1.0.2")
    kube.add_pod("llm-v1-c", labels=own, phase="Pending", ready=False)
    kube.add_pod(
        "llm-fallback-v1-a",
        node="n3",
        ip="10.1.0.3",
        labels={"serving.knative.dev/revision": "llm-fallback-v1"},
    )
    kube.add_pod("unrelated", node="n1", labels={"serving.knative.dev/revision": "zzz"})
    reps = {r.name: r for r in platform.replicas("llm")}
    assert sorted(reps) == ["llm-fallback-v1-a", "llm-v1-a", "llm-v1-b", "llm-v1-c"]
    a = reps["llm-v1-a"]
    assert (a.node, a.revision, a.url, a.ready, a.phase) == (
        "n1",
        "llm-v1",
        "http://10.1.0.1:8012",
        True,
        "Running",
    )
    assert not reps["llm-v1-b"].ready
    assert reps["llm-v1-c"].phase == "Pending"
    assert reps["llm-v1-c"].url is None
    assert reps["llm-fallback-v1-a"].revision == "llm-fallback-v1"


def test_replicas_of_terminating_pod(
    platform: KnativePlatform, kube: FakeKubeServer, llm: dict[str, Any]
) -> None:
    pod = kube.add_pod(
        "llm-v1-a",
        node="n1",
        labels={"serving.knative.dev/service": "llm", "serving.knative.dev/revision": "llm-v1"},
    )
    pod["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    kube.state.put_direct(resource_named("pods"), pod)
    (rep,) = platform.replicas("llm")
    assert rep.phase == "Terminating"
    assert not rep.ready


def test_replicas_of_missing_service(platform: KnativePlatform) -> None:
    with pytest.raises(NotFound):
        platform.replicas("llm")


def test_delete_replica(platform: KnativePlatform, kube: FakeKubeServer) -> None:
    kube.add_pod("llm-v1-a")
    platform.delete_replica("llm-v1-a")
    assert kube.find("pods", "llm-v1-a") is None
    with pytest.raises(NotFound, match="llm-v1-a"):
        platform.delete_replica("llm-v1-a")


# ---------------------------------------------------------------- nodes
def test_nodes_cordon_uncordon_label(platform: KnativePlatform, kube: FakeKubeServer) -> None:
    kube.add_node("gpu-1", labels={"nvidia.com/gpu.present": "true"})
    kube.add_node("gpu-2", ready=False)
    nodes = {n.name: n for n in platform.nodes()}
    assert nodes["gpu-1"].ready
    assert not nodes["gpu-2"].ready
    assert nodes["gpu-1"].labels["nvidia.com/gpu.present"] == "true"
    platform.cordon("gpu-1")
    assert kube.get("nodes", "gpu-1", None)["spec"]["unschedulable"] is True
    assert {n.name: n for n in platform.nodes()}["gpu-1"].unschedulable
    platform.uncordon("gpu-1")
    assert "unschedulable" not in kube.get("nodes", "gpu-1", None)["spec"]
    platform.label("gpu-1", "surefoot.dev/gpu-error", "true")
    assert (
        kube.get("nodes", "gpu-1", None)["metadata"]["labels"]["surefoot.dev/gpu-error"] == "true"
    )
    platform.label("gpu-1", "surefoot.dev/gpu-error", None)
    assert "surefoot.dev/gpu-error" not in kube.get("nodes", "gpu-1", None)["metadata"]["labels"]
    assert all(
        r.content_type == "application/merge-patch+json"
        for r in kube.requests_to("/api/v1/nodes/", "PATCH")
    )
    with pytest.raises(NotFound, match="gpu-9"):
        platform.cordon("gpu-9")
    with pytest.raises(PermanentPlatformError, match="key"):
        platform.label("gpu-1", "", "x")


def test_taint_is_read_modify_write_retrying_conflicts(
    platform: KnativePlatform, kube: FakeKubeServer
) -> None:
    kube.add_node("gpu-1", taints=[{"key": "other", "effect": "NoSchedule"}])
    kube.fail_next("/api/v1/nodes/gpu-1", 409, method="PATCH")
    platform.taint("gpu-1", "surefoot.dev/gpu-error", "true")
    taints = kube.get("nodes", "gpu-1", None)["spec"]["taints"]
    assert {t["key"] for t in taints} == {"other", "surefoot.dev/gpu-error"}
    assert len(kube.requests_to("/api/v1/nodes/gpu-1", "PATCH")) == 2
    platform.untaint("gpu-1", "surefoot.dev/gpu-error")
    assert [t["key"] for t in kube.get("nodes", "gpu-1", None)["spec"]["taints"]] == ["other"]
    kube.fail_next("/api/v1/nodes/gpu-1", 409, times=10, method="PATCH")
    with pytest.raises(Conflict):
        platform.taint("gpu-1", "x")


def test_stale_taint_write_is_refused_by_the_server(
    platform: KnativePlatform, kube: FakeKubeServer
) -> None:
    """The resourceVersion in the taint patch is a real precondition: a concurrent writer in
    between makes the server answer 409 and the platform re-reads."""
    kube.add_node("gpu-1")
    calls = {"n": 0}
    original = platform._core.read_node

    def read_then_race(*args: Any, **kwargs: Any) -> Any:
        obj = original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            kube.add_node("gpu-1", taints=[{"key": "racer", "effect": "NoSchedule"}])
        return obj

    platform._core.read_node = read_then_race  # type: ignore[method-assign]
    platform.taint("gpu-1", "mine")
    assert {t["key"] for t in kube.get("nodes", "gpu-1", None)["spec"]["taints"]} == {
        "racer",
        "mine",
    }
    assert [r.status for r in kube.requests_to("/api/v1/nodes/gpu-1", "PATCH")] == [409, 200]


# ---------------------------------------------------------------- eviction
def _pdb(kube: FakeKubeServer, name: str, **spec: Any) -> None:
    kube.create(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "llm"}}, **spec},
        }
    )


def test_evict_skips_daemonset_and_mirror_pods(
    platform: KnativePlatform, kube: FakeKubeServer
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1", labels={"app": "llm"})
    kube.add_pod("job-x", node="gpu-1", namespace="batch")
    kube.add_pod("nvidia-dcgm", node="gpu-1", owner=("DaemonSet", "dcgm"), namespace="kube-system")
    kube.add_pod("kube-proxy-gpu-1", node="gpu-1", mirror=True, namespace="kube-system")
    kube.add_pod("elsewhere", node="gpu-2")
    report = platform.evict("gpu-1")
    assert sorted(report.evicted) == ["batch/job-x", "llm-a"]
    assert sorted(report.skipped) == ["kube-system/kube-proxy-gpu-1", "kube-system/nvidia-dcgm"]
    assert report.refused == ()
    assert report.complete
    assert kube.find("pods", "llm-a") is None
    assert kube.find("pods", "elsewhere") is not None
    assert (
        kube.requests_to("/api/v1/namespaces/default/pods/llm-a/eviction", "POST")[0].status == 201
    )


def test_evict_retries_429_with_backoff_until_budget_allows(
    platform: KnativePlatform, kube: FakeKubeServer, fake_time: FakeTime
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1", labels={"app": "llm"})
    kube.add_pod("llm-b", node="gpu-2", labels={"app": "llm"})
    _pdb(kube, "llm", minAvailable=2)

    def replacement_ready(_: float) -> None:
        if len(fake_time.sleeps) == 3:  # the replacement becomes ready after the third wait
            kube.add_pod("llm-c", node="gpu-3", labels={"app": "llm"})

    fake_time.on_sleep = replacement_ready
    report = platform.evict("gpu-1", timeout=60)
    assert report.evicted == ("llm-a",)
    assert report.complete
    assert fake_time.sleeps == [0.5, 1.0, 2.0]
    assert report.seconds == pytest.approx(3.5)
    statuses = [
        r.status for r in kube.requests_to("/api/v1/namespaces/default/pods/llm-a/eviction")
    ]
    assert statuses == [429, 429, 429, 201]


def test_evict_honours_retry_after(
    platform: KnativePlatform, kube: FakeKubeServer, fake_time: FakeTime
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1")
    kube.fail_next("/api/v1/namespaces/default/pods/llm-a/eviction", 429, retry_after=4)
    report = platform.evict("gpu-1")
    assert report.complete
    assert fake_time.sleeps == [4.0]


def test_evict_gives_up_at_the_drain_timeout(
    platform: KnativePlatform, kube: FakeKubeServer, fake_time: FakeTime
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1", labels={"app": "llm"})
    kube.add_pod("free", node="gpu-1")
    _pdb(kube, "llm", maxUnavailable=0)
    report = platform.evict("gpu-1", timeout=10)
    assert report.evicted == ("free",)
    assert report.refused == ("llm-a",)
    assert not report.complete
    assert sum(fake_time.sleeps) == pytest.approx(10.0)
    assert max(fake_time.sleeps) <= 8.0
    assert report.seconds == pytest.approx(10.0)
    assert kube.find("pods", "llm-a") is not None


def test_evict_pod_under_two_budgets_is_permanent_error(
    platform: KnativePlatform, kube: FakeKubeServer
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1", labels={"app": "llm"})
    _pdb(kube, "one", maxUnavailable=1)
    _pdb(kube, "two", minAvailable=0)
    with pytest.raises(PermanentPlatformError, match="more than one PodDisruptionBudget"):
        platform.evict("gpu-1")


def test_evict_pod_gone_meanwhile_counts_as_evicted(
    platform: KnativePlatform, kube: FakeKubeServer
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1")
    kube.fail_next("/api/v1/namespaces/default/pods/llm-a/eviction", 404)
    assert platform.evict("gpu-1").evicted == ("llm-a",)


def test_evict_server_error_is_temporary(platform: KnativePlatform, kube: FakeKubeServer) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1")
    kube.fail_next("/api/v1/namespaces/default/pods/llm-a/eviction", 503)
    with pytest.raises(TemporaryPlatformError, match="evict pod default/llm-a"):
        platform.evict("gpu-1")


def test_evict_unknown_node(platform: KnativePlatform) -> None:
    with pytest.raises(NotFound, match="gpu-9"):
        platform.evict("gpu-9")


# ---------------------------------------------------------------- error mapping
@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (401, Unauthorized, "credentials were rejected"),
        (403, Unauthorized, "RBAC"),
        (404, NotFound, "HTTP 404"),
        (409, Conflict, "HTTP 409"),
        (429, TooManyRequests, "HTTP 429"),
        (500, TemporaryPlatformError, "HTTP 500"),
        (503, TemporaryPlatformError, "HTTP 503"),
        (400, PermanentPlatformError, "HTTP 400"),
        (422, PermanentPlatformError, "HTTP 422"),
    ],
)
def test_api_errors_map_to_platform_errors(
    platform: KnativePlatform,
    kube: FakeKubeServer,
    llm: dict[str, Any],
    status: int,
    kind: type,
    words: str,
) -> None:
    kube.fail_next(KSVC_PATH, status, message="the server said no")
    with pytest.raises(kind) as err:
        platform.traffic("llm")
    text = str(err.value)
    assert "read Knative Service default/llm" in text
    assert words in text
    assert "the server said no" in text
    assert err.value.temporary == (status in (409, 429, 500, 503))
    assert type(err.value) is kind or (kind is TemporaryPlatformError and status >= 500)


def test_unreachable_api_is_temporary(kube: FakeKubeServer) -> None:
    api = kube.api_client()
    kube.stop()
    platform = KnativePlatform(api, "default", request_timeout=2)
    with pytest.raises(TemporaryPlatformError, match="cannot reach the Kubernetes API"):
        platform.nodes()


def test_map_api_error_passes_platform_errors_through() -> None:
    err = NotFound("x")
    assert map_api_error(err, "y") is err
    assert isinstance(map_api_error(OSError("boom"), "list nodes"), TemporaryPlatformError)


# ---------------------------------------------------------------- settings
def test_from_settings_with_kubeconfig(
    kube: FakeKubeServer, tmp_path: Path, llm: dict[str, Any]
) -> None:
    path = kube.write_kubeconfig(tmp_path / "config", namespace="default")
    settings = KubeSettings.from_env({"SUREFOOT_KUBECONFIG": path, "SUREFOOT_SERVICE": "llm"})
    platform = KnativePlatform.from_settings(settings)
    assert platform.namespace == "default"
    assert platform.traffic("llm")[0].tag == "primary"
    assert kube.requests[-1].method == "GET"


def test_settings_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(KubeSettingsError, match="SUREFOOT_REQUEST_TIMEOUT"):
        KubeSettings.from_env({"SUREFOOT_REQUEST_TIMEOUT": "soon"})
    with pytest.raises(KubeSettingsError, match="replica_port"):
        KubeSettings.from_env({}, replica_port=0)
    assert KubeSettings.from_env({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}).in_cluster
    with pytest.raises(PlatformError, match="cannot load Kubernetes credentials"):
        KnativePlatform.from_settings(KubeSettings(kubeconfig=str(tmp_path / "missing")))


def test_settings_reject_a_bool_that_is_not_one() -> None:
    with pytest.raises(KubeSettingsError, match="SUREFOOT_IN_CLUSTER"):
        KubeSettings.from_env({"SUREFOOT_IN_CLUSTER": "ture"})
    assert KubeSettings.from_env({"SUREFOOT_IN_CLUSTER": "off"}).in_cluster is False
    assert KubeSettings.from_env({"SUREFOOT_IN_CLUSTER": "Yes"}).in_cluster is True


def test_evict_waits_until_the_pod_is_gone(
    platform: KnativePlatform, kube: FakeKubeServer, fake_time: FakeTime
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1")
    kube.state.graceful_eviction = True
    fake_time.on_sleep = lambda _: kube.delete_pod("llm-a") if len(fake_time.sleeps) == 3 else None
    report = platform.evict("gpu-1", timeout=60)
    assert report.evicted == ("llm-a",)
    assert len(fake_time.sleeps) == 3  # polled while it was terminating


def test_evict_of_a_pod_that_never_goes_is_refused_in_time(
    platform: KnativePlatform, kube: FakeKubeServer, fake_time: FakeTime
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1")
    kube.state.graceful_eviction = True
    report = platform.evict("gpu-1", timeout=10)
    assert report.evicted == ()
    assert report.refused == ("llm-a",)
    assert "still terminating" in report.messages[0]
    assert sum(fake_time.sleeps) == pytest.approx(10)


def test_evict_403_is_a_refusal_with_the_servers_message(
    platform: KnativePlatform, kube: FakeKubeServer, fake_time: FakeTime
) -> None:
    kube.add_node("gpu-1")
    kube.add_pod("llm-a", node="gpu-1")
    kube.fail_next(
        "/api/v1/namespaces/default/pods/llm-a/eviction", 403,
        message="pdb disruptions allowed is negative",
    )
    report = platform.evict("gpu-1")
    assert report.refused == ("llm-a",)
    assert "pdb disruptions allowed is negative" in report.messages[0]
    assert fake_time.sleeps == []  # not retried
