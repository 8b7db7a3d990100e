"""The objects both shapes stand on: the namespace, Redis (unless the config names one), the
checkpoint volume claim, the ``config-features`` flags Knative's pod specs need, and the
least-privilege RBAC of every component."""

from __future__ import annotations

from knative.manifests._config import RenderConfig
from knative.manifests._objects import (
    PART_OF,
    Files,
    Obj,
    core_service,
    meta,
    resources,
    role,
    rule,
    service_account,
)


def _redis(c: RenderConfig) -> list[Obj]:
    labels = {"app.kubernetes.io/name": f"{c.name}-redis", PART_OF: c.name}
    container = {
        "name": "redis",
        "image": "redis:7-alpine",
        "args": ["--save", "", "--appendonly", "no"],
        "ports": [{"name": "redis", "containerPort": 6379}],
        "readinessProbe": {"exec": {"command": ["redis-cli", "ping"]}, "periodSeconds": 5},
        "resources": resources("100m", "128Mi", "512Mi"),
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(c, f"{c.name}-redis", "redis"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"automountServiceAccountToken": False, "containers": [container]},
            },
        },
    }
    service = core_service(c, f"{c.name}-redis", "redis", {
        "selector": labels, "ports": [{"name": "redis", "port": 6379, "targetPort": 6379}],
    })
    return [deployment, service]


def _checkpoint_claim(c: RenderConfig) -> Obj:
    pvc: Obj = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(c, f"{c.name}-checkpoints", "checkpoints"),
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": c.checkpoint_size}},
        },
    }
    if c.checkpoint_storage_class:
        pvc["spec"]["storageClassName"] = c.checkpoint_storage_class
    return pvc


def common(c: RenderConfig) -> Files:
    """Namespace, Redis and the checkpoint claim, as files in apply order."""
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": meta(c, c.namespace, "namespace", namespaced=False)}
    files: Files = [("namespace.yaml", [namespace])]
    if not c.redis_url:
        files.append(("redis.yaml", _redis(c)))
    if c.checkpoint_volume == "pvc":
        files.append(("checkpoints.yaml", [_checkpoint_claim(c)]))
    return files


def config_features(c: RenderConfig) -> Obj:
    """Knative Serving's feature flags for what our pod specs use."""
    flags = {"kubernetes.podspec-affinity": "enabled", "kubernetes.podspec-fieldref": "enabled"}
    if c.gpus or c.fallback_gpus:
        flags["kubernetes.podspec-tolerations"] = "enabled"
    if c.checkpoint_volume == "emptydir":
        # on by default upstream, not everywhere
        flags["kubernetes.podspec-volumes-emptydir"] = "enabled"
    if c.checkpoint_volume == "pvc":
        flags["kubernetes.podspec-persistent-volume-claim"] = "enabled"
        flags["kubernetes.podspec-persistent-volume-write"] = "enabled"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-features", "namespace": "knative-serving"},
        "data": flags,
    }


def knative_rbac(c: RenderConfig, gpu: bool) -> list[Obj]:
    """Least privilege per component on the Knative shape."""
    out: list[Obj] = [
        service_account(c, "replica", automount=False),
        service_account(c, "gateway", automount=True),
        service_account(c, "functions", automount=True),
        service_account(c, "sources", automount=True),
    ]
    out += role(c, "gateway", [
        rule(["serving.knative.dev"], ["services", "routes", "revisions"],
             ["get", "list", "watch"]),
        rule([""], ["pods"], ["get", "list", "watch"]),
    ])
    out += role(c, "functions", [
        rule(["serving.knative.dev"], ["services", "routes"], ["get", "patch"]),
        rule(["serving.knative.dev"], ["revisions"], ["get", "list", "patch"]),
    ])
    out += role(c, "functions", [
        rule([""], ["nodes"], ["get", "list", "patch"]),
        rule([""], ["pods"], ["get", "list"]),
        rule([""], ["pods/eviction"], ["create"]),
    ], cluster=True)
    out += role(c, "sources", [rule([""], ["pods", "nodes"], ["get", "list", "watch"])],
                cluster=True)
    if gpu:
        out.append(service_account(c, "gpu-source", automount=False))
    return out


def kubernetes_rbac(c: RenderConfig) -> list[Obj]:
    out = [service_account(c, "replica", automount=False),
           service_account(c, "gateway", automount=True)]
    return out + role(c, "gateway", [rule([""], ["pods"], ["get", "list", "watch"])])
