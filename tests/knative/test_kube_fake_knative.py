"""The fake API server follows the Knative Serving rules Surefoot depends on (v1.21+): Route
ownership, the pod-spec field mask, BYO revision-name prefixes, and PodAutoscaler annotations
that follow the Revision's."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.kube_fake import FakeKubeServer

SERVING = ("serving.knative.dev", "v1")
PA = "podautoscalers.autoscaling.internal.knative.dev"


@pytest.fixture
def co(kube: FakeKubeServer) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client())


def _template(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"containers": [{"image": "example/replica:1"}], **spec},
    }


def _traffic() -> list[dict[str, Any]]:
    return [
        {"revisionName": "llm-v1", "percent": 100, "tag": "primary"},
        {"revisionName": "llm-fallback-v1", "percent": 0, "tag": "fallback"},
    ]


def _routes_ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == "RoutesReady")


def test_a_service_route_may_not_name_another_configurations_revision(
    co: client.CustomObjectsApi, kube: FakeKubeServer
) -> None:
    kube.add_revision("llm-v1", service="llm")
    kube.add_revision("llm-fallback-v1", configuration="llm-fallback")
    svc = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "llm"},
        "spec": {"template": _template("llm-v1"), "traffic": _traffic()},
    }
    co.create_namespaced_custom_object(*SERVING, "default", "services", svc)
    status = kube.get("services.serving.knative.dev", "llm")
    assert "traffic" not in status["status"]
    ready = _routes_ready(status)
    assert (ready["status"], ready["reason"]) == ("False", "RevisionNotOwned")
    assert 'does not belong to Service "llm"' in ready["message"]


def test_a_standalone_route_may_name_revisions_of_two_configurations(
    co: client.CustomObjectsApi, kube: FakeKubeServer
) -> None:
    kube.add_revision("llm-v1", configuration="llm")
    kube.add_revision("llm-fallback-v1", configuration="llm-fallback")
    route = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Route",
        "metadata": {"name": "llm"},
        "spec": {"traffic": _traffic()},
    }
    co.create_namespaced_custom_object(*SERVING, "default", "routes", route)
    status = kube.get("routes.serving.knative.dev", "llm")["status"]
    assert [(t["revisionName"], t["percent"]) for t in status["traffic"]] == [
        ("llm-v1", 100),
        ("llm-fallback-v1", 0),
    ]
    assert _routes_ready(kube.get("routes.serving.knative.dev", "llm"))["status"] == "True"


@pytest.mark.parametrize("kind", ["services", "configurations"])
def test_the_field_mask_allows_automount_only_as_false(
    co: client.CustomObjectsApi, kind: str
) -> None:
    obj = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": kind[:-1].capitalize(),
        "metadata": {"name": "app"},
        "spec": {"template": _template("app-v1", automountServiceAccountToken=True)},
    }
    with pytest.raises(ApiException) as err:
        co.create_namespaced_custom_object(*SERVING, "default", kind, obj)
    assert err.value.status == 400
    assert "automountServiceAccountToken" in str(err.value.body)
    obj["spec"]["template"]["spec"]["automountServiceAccountToken"] = False
    co.create_namespaced_custom_object(*SERVING, "default", kind, obj)


def test_a_byo_revision_name_needs_the_owner_prefix(co: client.CustomObjectsApi) -> None:
    obj = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Configuration",
        "metadata": {"name": "llm-fallback"},
        "spec": {"template": _template("llm-v1")},
    }
    with pytest.raises(ApiException) as err:
        co.create_namespaced_custom_object(*SERVING, "default", "configurations", obj)
    assert 'must have prefix "llm-fallback-"' in json.loads(err.value.body)["message"]


def test_podautoscaler_annotations_revert_to_the_revisions(
    co: client.CustomObjectsApi, kube: FakeKubeServer
) -> None:
    kube.add_revision(
        "llm-v1", service="llm", annotations={"autoscaling.knative.dev/min-scale": "3"}
    )
    co.patch_namespaced_custom_object(
        "autoscaling.internal.knative.dev",
        "v1alpha1",
        "default",
        "podautoscalers",
        "llm-v1",
        {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "9"}}},
    )
    ann = kube.get(PA, "llm-v1")["metadata"]["annotations"]
    assert ann["autoscaling.knative.dev/min-scale"] == "3"
    co.patch_namespaced_custom_object(
        *SERVING,
        "default",
        "revisions",
        "llm-v1",
        {"metadata": {"annotations": {"autoscaling.knative.dev/min-scale": "5"}}},
    )
    ann = kube.get(PA, "llm-v1")["metadata"]["annotations"]
    assert ann["autoscaling.knative.dev/min-scale"] == "5"
