"""The fake Kubernetes API server behaves like the real one where our code depends on it; the
official client is the client in every test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch

from tests.kube_fake import FakeKubeServer

KSVC = ("serving.knative.dev", "v1")


def _msg(err: Any) -> str:
    """The Status message (and causes) of an ApiException raised through pytest.raises."""
    return json.dumps(json.loads(err.value.body), ensure_ascii=False).replace('\\"', '"')


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer(history=50) as server:
        yield server


@pytest.fixture
def v1(kube: FakeKubeServer) -> client.CoreV1Api:
    return client.CoreV1Api(kube.api_client())


@pytest.fixture
def co(kube: FakeKubeServer) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def _pod(name: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


def _ksvc(name: str, traffic: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {
            "metadata": {"name": f"{name}-v1"},
            "spec": {"containers": [{"image": "example/replica:1"}]},
        }
    }
    if traffic is not None:
        spec["traffic"] = traffic
    spec.update(extra)
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": spec,
    }


# ---------------------------------------------------------------- CRUD, selectors, versions
def test_create_get_list_delete_with_versions(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    created = v1.create_namespaced_pod("default", _pod("a", app="llm"))
    assert kube.requests[-1].status == 201
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.status.phase == "Pending"
    again = v1.read_namespaced_pod("a", "default")
    assert again.metadata.uid == created.metadata.uid
    v1.create_namespaced_pod("default", _pod("b", app="other"))
    listing = v1.list_namespaced_pod("default")
    assert [p.metadata.name for p in listing.items] == ["a", "b"]
    assert int(listing.metadata.resource_version) >= int(created.metadata.resource_version)
    with pytest.raises(client.ApiException) as err:
        v1.create_namespaced_pod("default", _pod("a"))
    assert err.value.status == 409
    assert "AlreadyExists" in _msg(err)
    v1.delete_namespaced_pod("a", "default")
    with pytest.raises(client.ApiException) as err:
        v1.read_namespaced_pod("a", "default")
    assert err.value.status == 404
    assert '"a" not found' in _msg(err)


def test_create_in_missing_namespace_is_404(v1: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as err:
        v1.create_namespaced_pod("nowhere", _pod("a"))
    assert err.value.status == 404
    assert "namespaces" in _msg(err)


def test_invalid_name_is_422(v1: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as err:
        v1.create_namespaced_pod("default", _pod("Bad_Name"))
    assert err.value.status == 422


def test_label_and_field_selectors(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    kube.add_node("n1")
    kube.add_node("n2", unschedulable=True)
    kube.add_pod("a", node="n1", labels={"app": "llm", "rev": "v1"})
    kube.add_pod("b", node="n2", labels={"app": "llm", "rev": "v2"})
    kube.add_pod("c", node="n1", labels={"app": "gw"}, namespace="other")

    def names(**kw: Any) -> list[str]:
        return [p.metadata.name for p in v1.list_pod_for_all_namespaces(**kw).items]

    assert names(label_selector="app=llm") == ["a", "b"]
    assert names(label_selector="app=llm,rev!=v1") == ["b"]
    assert names(label_selector="rev in (v1, v2)") == ["a", "b"]
    assert names(label_selector="rev notin (v1)") == ["b", "c"]
    assert names(label_selector="!rev") == ["c"]
    assert names(field_selector="spec.nodeName=n1") == ["a", "c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="spec.nodeName=n1,metadata.namespace=default") == ["a"]
    assert [p.metadata.name for p in v1.list_namespaced_pod("other").items] == ["c"]
    nodes = client.CoreV1Api(kube.api_client()).list_node(field_selector="spec.unschedulable=true")
    assert [n.metadata.name for n in nodes.items] == ["n2"]
    with pytest.raises(client.ApiException) as err:
        names(field_selector="spec.hostname=x")
    assert err.value.status == 400
    assert "field label not supported" in _msg(err)


def test_stale_put_is_409_and_fresh_put_succeeds(
    v1: client.CoreV1Api, kube: FakeKubeServer
) -> None:
    kube.add_node("n1")
    node = v1.read_node("n1")
    v1.patch_node("n1", {"metadata": {"labels": {"x": "1"}}})  # someone else writes
    node.metadata.labels["y"] = "2"
    with pytest.raises(client.ApiException) as err:
        v1.replace_node("n1", node)
    assert err.value.status == 409
    assert "the object has been modified" in _msg(err)
    fresh = v1.read_node("n1")
    fresh.metadata.labels["y"] = "2"
    out = v1.replace_node("n1", fresh)
    assert out.metadata.labels["x"] == "1"
    assert out.metadata.labels["y"] == "2"
    assert int(out.metadata.resource_version) > int(fresh.metadata.resource_version)


def test_patch_carrying_stale_resource_version_is_409(
    v1: client.CoreV1Api, kube: FakeKubeServer
) -> None:
    kube.add_node("n1")
    rv = v1.read_node("n1").metadata.resource_version
    v1.patch_node("n1", {"spec": {"unschedulable": True}})
    with pytest.raises(client.ApiException) as err:
        v1.patch_node(
            "n1",
            {"metadata": {"resourceVersion": rv}, "spec": {"taints": []}},
            _content_type="application/merge-patch+json",
        )
    assert err.value.status == 409


def test_custom_resource_put_needs_resource_version(
    co: client.CustomObjectsApi, kube: FakeKubeServer
) -> None:
    co.create_namespaced_custom_object(*KSVC, "default", "services", _ksvc("llm"))
    body = kube.get("services.serving.knative.dev", "llm")
    del body["metadata"]["resourceVersion"]
    with pytest.raises(client.ApiException) as err:
        co.replace_namespaced_custom_object(*KSVC, "default", "services", "llm", body)
    assert err.value.status == 422
    assert "resourceVersion" in _msg(err)


def test_generation_bumps_on_spec_change_only(
    co: client.CustomObjectsApi, kube: FakeKubeServer
) -> None:
    co.create_namespaced_custom_object(*KSVC, "default", "services", _ksvc("llm"))
    assert kube.get("services.serving.knative.dev", "llm")["metadata"]["generation"] == 1
    co.patch_namespaced_custom_object(
        *KSVC, "default", "services", "llm", {"metadata": {"labels": {"a": "b"}}}
    )
    assert kube.get("services.serving.knative.dev", "llm")["metadata"]["generation"] == 1
    co.patch_namespaced_custom_object(
        *KSVC,
        "default",
        "services",
        "llm",
        {"spec": {"template": {"metadata": {"name": "llm-v2"}}}},
    )
    assert kube.get("services.serving.knative.dev", "llm")["metadata"]["generation"] == 2


# ---------------------------------------------------------------- patches
def test_merge_json_and_strategic_patches_on_core_kinds(
    v1: client.CoreV1Api, kube: FakeKubeServer
) -> None:
    kube.add_pod("a", labels={"keep": "1", "drop": "1"})
    v1.patch_namespaced_pod(
        "a",
        "default",
        {"metadata": {"labels": {"drop": None}}},
        _content_type="application/merge-patch+json",
    )
    assert kube.get("pods", "a")["metadata"]["labels"] == {"keep": "1"}
    v1.patch_namespaced_pod(
        "a",
        "default",
        [{"op": "add", "path": "/metadata/labels/new", "value": "2"}],
        _content_type="application/json-patch+json",
    )
    assert kube.get("pods", "a")["metadata"]["labels"] == {"keep": "1", "new": "2"}
    # strategic merge: containers merge by name instead of replacing the list
    v1.patch_namespaced_pod(
        "a",
        "default",
        {"spec": {"containers": [{"name": "side", "image": "x"}]}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert [c["name"] for c in kube.get("pods", "a")["spec"]["containers"]] == ["main", "side"]
    v1.patch_namespaced_pod(
        "a",
        "default",
        {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}},
        _content_type="application/strategic-merge-patch+json",
    )
    assert [c["name"] for c in kube.get("pods", "a")["spec"]["containers"]] == ["main"]
    with pytest.raises(client.ApiException) as err:
        v1.patch_namespaced_pod(
            "a",
            "default",
            [{"op": "test", "path": "/metadata/labels/keep", "value": "9"}],
            _content_type="application/json-patch+json",
        )
    assert err.value.status == 422


def test_merge_patch_replaces_lists_whole(
    co: client.CustomObjectsApi, kube: FakeKubeServer
) -> None:
    kube.add_revision("llm-v1", service="llm")
    kube.add_revision("llm-fb", configuration="llm-fallback")
    co.create_namespaced_custom_object(
        *KSVC,
        "default",
        "services",
        _ksvc(
            "llm",
            [
                {"revisionName": "llm-v1", "percent": 100, "tag": "primary"},
                {"revisionName": "llm-fb", "percent": 0, "tag": "fallback"},
            ],
        ),
    )
    co.patch_namespaced_custom_object(
        *KSVC,
        "default",
        "services",
        "llm",
        {"spec": {"traffic": [{"revisionName": "llm-fb", "percent": 100}]}},
    )
    assert kube.get("services.serving.knative.dev", "llm")["spec"]["traffic"] == [
        {"revisionName": "llm-fb", "percent": 100}
    ]


def test_strategic_merge_on_custom_resource_is_415(co: client.CustomObjectsApi) -> None:
    co.create_namespaced_custom_object(*KSVC, "default", "services", _ksvc("llm"))
    with pytest.raises(client.ApiException) as err:
        co.patch_namespaced_custom_object(
            *KSVC,
            "default",
            "services",
            "llm",
            {"metadata": {"labels": {"a": "b"}}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert err.value.status == 415
    assert "merge-patch+json" in _msg(err)


# ---------------------------------------------------------------- CRD schema and webhook
def test_custom_resource_failing_its_schema_is_422(co: client.CustomObjectsApi) -> None:
    bad = _ksvc("llm")
    bad["spec"]["template"]["spec"]["containers"][0]["resources"] = {
        "limits": {"nvidia.com/gpu": "one"}
    }
    with pytest.raises(client.ApiException) as err:
        co.create_namespaced_custom_object(*KSVC, "default", "services", bad)
    assert err.value.status == 422
    assert "nvidia.com/gpu" in _msg(err)
    bad = _ksvc("llm", [{"revisionName": "llm-v1", "percent": "100"}])
    with pytest.raises(client.ApiException) as err:
        co.create_namespaced_custom_object(*KSVC, "default", "services", bad)
    assert err.value.status == 422
    assert "percent" in _msg(err)


def test_unknown_fields_pruned_with_warning_or_rejected_when_strict(
    co: client.CustomObjectsApi, kube: FakeKubeServer
) -> None:
    odd = _ksvc("llm")
    odd["spec"]["template"]["spec"]["containers"][0]["lifecycle"] = {"preStop": {}}
    with pytest.raises(client.ApiException) as err:
        co.create_namespaced_custom_object(
            *KSVC, "default", "services", odd, field_validation="Strict"
        )
    assert err.value.status == 400
    assert "lifecycle" in _msg(err)
    co.create_namespaced_custom_object(*KSVC, "default", "services", odd)
    stored = kube.get("services.serving.knative.dev", "llm")
    assert "lifecycle" not in stored["spec"]["template"]["spec"]["containers"][0]


def test_knative_webhook_rejects_traffic_not_summing_to_100(co: client.CustomObjectsApi) -> None:
    with pytest.raises(client.ApiException) as err:
        co.create_namespaced_custom_object(
            *KSVC,
            "default",
            "services",
            _ksvc(
                "llm", [{"revisionName": "a", "percent": 60}, {"revisionName": "b", "percent": 30}]
            ),
        )
    assert err.value.status == 400
    assert "sum to 90" in _msg(err)


def test_service_status_traffic_follows_spec_for_existing_revisions(
    co: client.CustomObjectsApi, kube: FakeKubeServer
) -> None:
    kube.add_revision("llm-v1", service="llm")
    traffic = [
        {"revisionName": "llm-v1", "percent": 100, "tag": "primary"},
        {"revisionName": "llm-fb", "percent": 0, "tag": "fallback"},
    ]
    co.create_namespaced_custom_object(*KSVC, "default", "services", _ksvc("llm", traffic))
    status = kube.get("services.serving.knative.dev", "llm")["status"]
    assert "traffic" not in status
    routes = next(c for c in status["conditions"] if c["type"] == "RoutesReady")
    assert routes["status"] == "False"
    assert routes["reason"] == "RevisionMissing"
    kube.add_revision("llm-fb", service="llm")
    status = kube.get("services.serving.knative.dev", "llm")["status"]
    assert [(t["revisionName"], t["percent"], t["tag"]) for t in status["traffic"]] == [
        ("llm-v1", 100, "primary"),
        ("llm-fb", 0, "fallback"),
    ]
    assert status["latestReadyRevisionName"] == "llm-v1"
    # a later spec naming a missing revision leaves the old status traffic in place
    co.patch_namespaced_custom_object(
        *KSVC,
        "default",
        "services",
        "llm",
        {"spec": {"traffic": [{"revisionName": "llm-v9", "percent": 100}]}},
    )
    status = kube.get("services.serving.knative.dev", "llm")["status"]
    assert [t["revisionName"] for t in status["traffic"]] == ["llm-v1", "llm-fb"]
    # status written through the main resource is ignored (status subresource)
    co.patch_namespaced_custom_object(
        *KSVC, "default", "services", "llm", {"status": {"url": "http://elsewhere"}}
    )
    assert kube.get("services.serving.knative.dev", "llm")["status"]["url"] != "http://elsewhere"


def test_add_revision_makes_its_podautoscaler(kube: FakeKubeServer) -> None:
    kube.add_revision(
        "llm-v1", service="llm", annotations={"autoscaling.knative.dev/min-scale": "3"}
    )
    pa = kube.get("podautoscalers.autoscaling.internal.knative.dev", "llm-v1")
    assert pa["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "3"


# ---------------------------------------------------------------- server-side apply
def test_server_side_apply_creates_updates_and_drops_fields(kube: FakeKubeServer) -> None:
    core = client.CoreV1Api(kube.api_client())
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "default", "labels": {"a": "1", "b": "2"}},
        "data": {"x": "1"},
    }

    def apply(body: dict[str, Any], **kw: Any) -> None:
        core.patch_namespaced_config_map(
            "cfg", "default", body, _content_type="application/apply-patch+yaml", **kw
        )

    apply(cm, field_manager="surefoot", force=True)
    assert kube.requests[-1].status == 201
    core.patch_namespaced_config_map("cfg", "default", {"data": {"other": "kept"}})
    cm["metadata"]["labels"] = {"a": "1"}
    cm["data"] = {"x": "2"}
    apply(cm, field_manager="surefoot", force=True)
    stored = kube.get("configmaps", "cfg")
    assert stored["metadata"]["labels"] == {"a": "1"}
    assert stored["data"] == {"x": "2", "other": "kept"}
    cm["data"] = {"x": "3"}
    apply(cm, field_manager="surefoot", dry_run="All")
    assert kube.get("configmaps", "cfg")["data"]["x"] == "2"
    with pytest.raises(client.ApiException) as err:
        apply(cm)
    assert err.value.status == 400
    assert "fieldManager" in _msg(err)


# ---------------------------------------------------------------- watch
def _collect(stream: Any, out: list[tuple[str, str]], errors: list[Exception]) -> threading.Thread:
    def run() -> None:
        try:
            for e in stream:
                out.append((e["type"], e["object"].metadata.name))
        except Exception as exc:
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _wait_for(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_watch_streams_changes_with_selector(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    kube.add_pod("a", labels={"app": "llm"})
    kube.add_pod("z", labels={"app": "other"})
    events: list[tuple[str, str]] = []
    errors: list[Exception] = []
    w = watch.Watch()
    t = _collect(
        w.stream(v1.list_namespaced_pod, "default", label_selector="app=llm", timeout_seconds=30),
        events,
        errors,
    )
    _wait_for(lambda: events == [("ADDED", "a")])
    kube.set_pod_ready("a", False)
    kube.add_pod("b", labels={"app": "llm"})
    kube.set_pod_ready("z", False)  # outside the selector: not seen
    kube.delete_pod("a")
    _wait_for(lambda: len(events) == 4)
    kube.end_watches()
    t.join(5)
    assert not errors
    assert events == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_watch_resumes_from_resource_version(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    kube.add_pod("a")
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    kube.add_pod("b")
    kube.delete_pod("a")
    events: list[tuple[str, str]] = []
    errors: list[Exception] = []
    w = watch.Watch()
    t = _collect(
        w.stream(v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=30),
        events,
        errors,
    )
    _wait_for(lambda: len(events) == 2)
    kube.end_watches()
    t.join(5)
    assert events == [("ADDED", "b"), ("DELETED", "a")]
    assert not errors


def test_watch_timeout_seconds_ends_the_stream() -> None:
    with FakeKubeServer(time_scale=0.05) as kube:  # 1 s of watch time lasts 50 ms
        v1 = client.CoreV1Api(kube.api_client())
        kube.add_pod("a")
        start = time.monotonic()
        got = list(watch.Watch().stream(v1.list_namespaced_pod, "default", timeout_seconds=1))
        assert [e["object"].metadata.name for e in got] == ["a"]
        assert 0.04 <= time.monotonic() - start < 0.9


def test_watch_from_compacted_version_is_410(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    kube.add_pod("a")
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    kube.add_pod("b")
    kube.compact()
    with pytest.raises(client.ApiException) as err:
        list(
            watch.Watch().stream(
                v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5
            )
        )
    assert err.value.status == 410


def test_watch_history_is_bounded(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    kube.add_pod("a")
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    for i in range(60):  # history=50 in this fixture
        kube.set_pod_ready("a", i % 2 == 0)
    with pytest.raises(client.ApiException) as err:
        list(
            watch.Watch().stream(
                v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5
            )
        )
    assert err.value.status == 410
    # a version still in the history works
    recent = str(int(kube.resource_version) - 3)
    events: list[tuple[str, str]] = []
    errors: list[Exception] = []
    t = _collect(
        watch.Watch().stream(
            v1.list_namespaced_pod, "default", resource_version=recent, timeout_seconds=30
        ),
        events,
        errors,
    )
    _wait_for(lambda: len(events) == 3)
    kube.end_watches()
    t.join(5)
    assert not errors


def test_watch_with_raw_http_sees_error_event(kube: FakeKubeServer) -> None:
    import httpx

    kube.compact()
    kube.add_pod("a")
    r = httpx.get(
        f"{kube.url}/api/v1/namespaces/default/pods",
        params={"watch": "true", "resourceVersion": "1"},
    )
    assert r.status_code == 200
    assert '"type": "ERROR"' in r.text
    assert '"code": 410' in r.text


# ---------------------------------------------------------------- eviction
def _pdb(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": "llm"}}, **spec},
    }


def _evict(v1: client.CoreV1Api, name: str) -> None:
    v1.create_namespaced_pod_eviction(
        name, "default", {"metadata": {"name": name, "namespace": "default"}}
    )


def test_eviction_honours_disruption_budget(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    policy = client.PolicyV1Api(kube.api_client())
    for name in ("a", "b", "c"):
        kube.add_pod(name, labels={"app": "llm"})
    policy.create_namespaced_pod_disruption_budget("default", _pdb("llm", minAvailable=2))
    _evict(v1, "a")
    assert kube.requests[-1].status == 201
    assert kube.find("pods", "a") is None
    with pytest.raises(client.ApiException) as err:
        _evict(v1, "b")
    assert err.value.status == 429
    assert "disruption budget llm needs 2" in _msg(err)
    kube.add_pod("d", labels={"app": "llm"})  # replacement ready: budget allows one again
    _evict(v1, "b")


def test_eviction_of_unready_pod_allowed_while_budget_holds(
    v1: client.CoreV1Api, kube: FakeKubeServer
) -> None:
    policy = client.PolicyV1Api(kube.api_client())
    kube.add_pod("a", labels={"app": "llm"})
    kube.add_pod("b", labels={"app": "llm"})
    kube.add_pod("sick", labels={"app": "llm"}, ready=False)
    policy.create_namespaced_pod_disruption_budget("default", _pdb("llm", maxUnavailable=1))
    _evict(v1, "sick")


def test_eviction_with_two_budgets_is_500(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    policy = client.PolicyV1Api(kube.api_client())
    kube.add_pod("a", labels={"app": "llm"})
    policy.create_namespaced_pod_disruption_budget("default", _pdb("one", maxUnavailable=1))
    policy.create_namespaced_pod_disruption_budget("default", _pdb("two", maxUnavailable="50%"))
    with pytest.raises(client.ApiException) as err:
        _evict(v1, "a")
    assert err.value.status == 500
    assert "more than one PodDisruptionBudget" in _msg(err)


def test_eviction_of_missing_pod_is_404(v1: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as err:
        _evict(v1, "ghost")
    assert err.value.status == 404


# ---------------------------------------------------------------- faults
def test_fail_next_answers_injected_status_then_recovers(
    v1: client.CoreV1Api, kube: FakeKubeServer
) -> None:
    kube.add_node("n1")
    kube.fail_next("/api/v1/nodes", 429, times=2, retry_after=1)
    for _ in range(2):
        with pytest.raises(client.ApiException) as err:
            v1.read_node("n1")
        assert err.value.status == 429
        assert err.value.headers["Retry-After"] == "1"
    assert v1.read_node("n1").metadata.name == "n1"
    kube.fail_next("/api/v1/nodes", 401, method="PATCH")
    assert v1.read_node("n1")  # GET is not affected
    with pytest.raises(client.ApiException) as err:
        v1.patch_node("n1", {"spec": {"unschedulable": True}})
    assert err.value.status == 401


def test_stop_closes_open_watches(kube: FakeKubeServer) -> None:
    v1 = client.CoreV1Api(kube.api_client())
    events: list[tuple[str, str]] = []
    errors: list[Exception] = []
    t = _collect(
        watch.Watch().stream(v1.list_namespaced_pod, "default", timeout_seconds=60), events, errors
    )
    _wait_for(lambda: kube.open_connections() >= 1)
    kube.stop()
    t.join(5)
    assert not t.is_alive()


def test_status_hooks_are_seen_by_watchers(v1: client.CoreV1Api, kube: FakeKubeServer) -> None:
    kube.add_pod("a")
    rv = kube.resource_version
    kube.set_pod_status(
        "a",
        {
            "containerStatuses": [
                {
                    "name": "main",
                    "image": "example/main:1",
                    "imageID": "sha256:0",
                    "ready": False,
                    "restartCount": 2,
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ]
        },
    )
    kube.add_node("n1")
    kube.patch_object("nodes", "n1", {"metadata": {"labels": {"x": "y"}}}, None)
    pod = v1.read_namespaced_pod("a", "default")
    assert pod.status.container_statuses[0].last_state.terminated.reason == "OOMKilled"
    assert pod.status.phase == "Running"  # merged, not replaced
    assert v1.read_node("n1").metadata.labels["x"] == "y"
    events: list[tuple[str, str]] = []
    errors: list[Exception] = []
    t = _collect(
        watch.Watch().stream(
            v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=30
        ),
        events,
        errors,
    )
    _wait_for(lambda: events == [("MODIFIED", "a")])
    kube.end_watches()
    t.join(5)
    assert not errors
