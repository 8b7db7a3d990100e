"""Test helpers for the functions: a fake clock, a sink, the cluster, event builders.

The cluster (``make_cluster``): four GPU nodes; the Knative Service ``surefoot`` with the primary
revision ``surefoot-primary`` (three ready replicas on gpu-1..3, tag primary, 100%) and the fallback
``surefoot-fallback`` (one replica on gpu-4, tag fallback, 0%), a PodDisruptionBudget of
maxUnavailable 1 over the primary's pods.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import events as ev
from tests.kube_fake import FakeKubeServer

GPU_LABEL = {"nvidia.com/gpu.present": "true"}
KSVC_PATH = "/apis/serving.knative.dev/v1/namespaces/default/services/surefoot"
REVISION_LABEL = "serving.knative.dev/revision"
SERVICE_LABEL = "serving.knative.dev/service"


@dataclass
class Sink:
    events: list[ev.Event] = field(default_factory=list)

    def __call__(self, event: ev.Event) -> None:
        self.events.append(event)

    def types(self) -> list[str]:
        return [e.type for e in self.events]


def add_primary_pod(kube: FakeKubeServer, name: str, node: str, *, ready: bool = True) -> None:
    kube.add_pod(name, node=node, ready=ready, labels={
        REVISION_LABEL: "surefoot-primary", SERVICE_LABEL: "surefoot", "app": "surefoot"})


def make_cluster(kube: FakeKubeServer, *, nodes: int = 4, primaries: int = 3) -> None:
    for i in range(1, nodes + 1):
        kube.add_node(f"gpu-{i}", labels=dict(GPU_LABEL))
    kube.add_revision("surefoot-primary", service="surefoot")
    kube.add_revision("surefoot-fallback", configuration="surefoot-fallback")
    kube.create({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": "surefoot", "namespace": "default"},
        "spec": {
            "template": {"metadata": {"name": "surefoot-primary"},
                         "spec": {"containers": [{"image": "example/replica:1"}]}},
            "traffic": [
                {"revisionName": "surefoot-primary", "percent": 100, "tag": "primary"},
                {"revisionName": "surefoot-fallback", "percent": 0, "tag": "fallback"},
            ],
        },
    })
    for i in range(1, primaries + 1):
        add_primary_pod(kube, f"primary-{i}", f"gpu-{i}")
    kube.add_pod("fallback-1", node=f"gpu-{nodes}", labels={
        REVISION_LABEL: "surefoot-fallback", "app": "surefoot-fallback"})
    kube.create({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "surefoot", "namespace": "default"},
        "spec": {"maxUnavailable": 1,
                 "selector": {"matchLabels": {REVISION_LABEL: "surefoot-primary"}}},
    })


# --- events -------------------------------------------------------------------------------


def _id() -> str:
    return str(uuid.uuid4())


def xid(node: str, number: int, *, id: str | None = None, **kw: Any) -> ev.Event:
    verdict = ev.classify(number)
    fields = {"severity": verdict.severity, "action": verdict.action, "fatal": verdict.fatal,
              "mnemonic": verdict.mnemonic, **kw}
    return ev.build(ev.GpuXid(node=node, xid=number, **fields), source="/test/gpu",
                    id=id or _id())


def lost(node: str, *, id: str | None = None) -> ev.Event:
    return ev.build(ev.GpuLost(node=node, reason="NVML_ERROR_GPU_IS_LOST"), source="/test/gpu",
                    id=id or _id())


def ecc(node: str, *, uncorrected: int = 2, id: str | None = None) -> ev.Event:
    return ev.build(ev.GpuEcc(node=node, severity="critical", action="reset_gpu",
                              fatal=uncorrected > 0, volatile_uncorrected=uncorrected),
                    source="/test/gpu", id=id or _id())


def healthy(node: str, *, id: str | None = None) -> ev.Event:
    return ev.build(ev.GpuHealthy(node=node, cleared=("xid",)), source="/test/gpu",
                    id=id or _id())


def oom(pod: str, revision: str = "surefoot-primary", *, id: str | None = None) -> ev.Event:
    return ev.build(ev.PodOomKilled(namespace="default", pod=pod, container="user-container",
                                    revision=revision, service="surefoot", restart_count=1),
                    source="/test/pods", id=id or _id())


def crashloop(pod: str, revision: str = "surefoot-primary", *, id: str | None = None) -> ev.Event:
    return ev.build(ev.PodCrashLoop(namespace="default", pod=pod, container="user-container",
                                    revision=revision, restart_count=4),
                    source="/test/pods", id=id or _id())


def opened(revision: str = "surefoot-primary", *, scope: str = "revision",
           id: str | None = None) -> ev.Event:
    return ev.build(ev.BreakerOpened(scope=scope, name=revision, reason="test"),
                    source="/test/breakers", id=id or _id())


def closed(revision: str = "surefoot-primary", *, id: str | None = None) -> ev.Event:
    return ev.build(ev.BreakerClosed(scope="revision", name=revision, reason="test"),
                    source="/test/breakers", id=id or _id())


def ping(data: dict[str, Any] | None = None, *, id: str | None = None) -> ev.Event:
    return ev.Event(type=ev.KNATIVE_PING, source="/test/ping", id=id or _id(),
                    data=data if data is not None else {"reason": "timer", "service": "surefoot"})


def requested(revision: str | None = "surefoot-primary", pod: str | None = None,
              *, id: str | None = None) -> ev.Event:
    return ev.build(ev.CheckpointRequested(revision=revision, pod=pod, reason="operator"),
                    source="/test/ops", id=id or _id())


def deleted(pod: str, *, terminating: bool = True, id: str | None = None) -> ev.Event:
    return ev.build(ev.PodDeleted(namespace="default", pod=pod, terminating=terminating,
                                  revision="surefoot-primary", service="surefoot"),
                    source="/test/pods", id=id or _id())


def traffic_of(kube: FakeKubeServer) -> list[tuple[str, int, str | None]]:
    spec = kube.get("services.serving.knative.dev", "surefoot")["spec"]["traffic"]
    return [(t["revisionName"], t["percent"], t.get("tag")) for t in spec]


def node_obj(kube: FakeKubeServer, name: str) -> dict[str, Any]:
    return kube.get("nodes", name, None)
