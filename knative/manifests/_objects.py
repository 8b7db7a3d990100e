"""Pieces every builder of the rendered objects shares: metadata and labels, env lists, the
Deployment, ServiceAccount and Role shells, probes and resources, so that each object family's
builder says only what is particular to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from knative.manifests._config import RenderConfig

PART_OF = "app.kubernetes.io/part-of"
REPLICA_PORT = 8080
APP_PORT = 8080
CHECKPOINT_DIR = "/var/lib/surefoot/checkpoints"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
SERVING_V1 = "serving.knative.dev/v1"
EVENTING_V1 = "eventing.knative.dev/v1"
SOURCES_V1 = "sources.knative.dev/v1"
RBAC_V1 = "rbac.authorization.k8s.io/v1"

Obj = dict[str, Any]
Files = list[tuple[str, list[Obj]]]


def secure_context() -> Obj:
    """A container ``securityContext`` without the insecure Kubernetes defaults that Knative's
    webhook warns about: non-root, no privilege escalation, no capabilities, RuntimeDefault
    seccomp."""
    return {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def meta(c: RenderConfig, name: str, component: str, namespaced: bool = True,
         **extra: Any) -> Obj:
    out: Obj = {"name": name}
    if namespaced:
        out["namespace"] = c.namespace
    out["labels"] = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        PART_OF: c.name,
        "app.kubernetes.io/managed-by": "surefoot",
    }
    out.update(extra)
    return out


def env(pairs: Mapping[str, str | None]) -> list[Obj]:
    return [{"name": k, "value": v} for k, v in pairs.items() if v is not None]


def field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def resources(cpu: str, memory: str, limit: str) -> Obj:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}


def http_probes(port: int) -> Obj:
    """The readiness and liveness probes of an app container (gateway, functions)."""
    return {
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": port}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10},
    }


def anti_affinity(label: str, value: str) -> Obj:
    return {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {label: value}},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }


def checkpoint_volume(c: RenderConfig) -> Obj:
    if c.checkpoint_volume == "pvc":
        return {
            "name": "checkpoints",
            "persistentVolumeClaim": {"claimName": f"{c.name}-checkpoints"},
        }
    return {"name": "checkpoints", "emptyDir": {}}


def deployment(
    c: RenderConfig, name: str, component: str, labels: dict[str, str], replicas: int,
    pod_spec: Obj, rolling: bool = False,
) -> Obj:
    spec: Obj = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if rolling:
        spec["strategy"] = {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(c, name, component),
            "spec": spec}


def core_service(c: RenderConfig, name: str, component: str, spec: Obj) -> Obj:
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta(c, name, component),
            "spec": spec}


def service_account(c: RenderConfig, component: str, automount: bool) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(c, c.sa(component), component),
        "automountServiceAccountToken": automount,
    }


def role(c: RenderConfig, component: str, rules: list[Obj], cluster: bool = False) -> list[Obj]:
    """A Role (or ClusterRole) with ``rules`` and its binding to the component's account."""
    kind = "ClusterRole" if cluster else "Role"
    name = f"{c.namespace}-{c.sa(component)}" if cluster else c.sa(component)
    body = {
        "apiVersion": RBAC_V1,
        "kind": kind,
        "metadata": meta(c, name, component, namespaced=not cluster),
        "rules": rules,
    }
    binding = {
        "apiVersion": RBAC_V1,
        "kind": f"{kind}Binding",
        "metadata": meta(c, name, component, namespaced=not cluster),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [
            {"kind": "ServiceAccount", "name": c.sa(component), "namespace": c.namespace}
        ],
    }
    return [body, binding]


def rule(groups: list[str], resources_: list[str], verbs: list[str]) -> Obj:
    return {"apiGroups": groups, "resources": resources_, "verbs": verbs}


def knative_service(c: RenderConfig, name: str, component: str, template: Obj) -> Obj:
    return {"apiVersion": SERVING_V1, "kind": "Service", "metadata": meta(c, name, component),
            "spec": {"template": template}}
