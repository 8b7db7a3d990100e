"""The inference objects: the replica's container and pod spec, the Knative Service with its
primary and fallback revisions and their traffic, the plain-Kubernetes Deployments that stand
in for them, and the disruption budget of the primary."""

from __future__ import annotations

from typing import Any

from knative.manifests._config import RenderConfig
from knative.manifests._objects import (
    CHECKPOINT_DIR,
    GPU_TOLERATION,
    PART_OF,
    REPLICA_PORT,
    SERVING_V1,
    Obj,
    anti_affinity,
    checkpoint_volume,
    core_service,
    deployment,
    env,
    field_env,
    meta,
    secure_context,
)
from knative.manifests._secrets import redis_env, secret_env

STANDBY_ANNOTATION = "surefoot.dev/standby"  # how many of a revision's min-scale pods are spares


class Revision:
    """One inference revision as rendered: role, name, model, GPUs, image and scale bounds.

    ``min_scale`` replicas serve and ``standby`` more are warm spares: the revision keeps
    ``pods`` (their sum) ready, so that a lost pod leaves ``min_scale`` ready ones at once.
    Knative routes to every ready pod of a revision, spares included: a spare is capacity
    kept free by the count, not a pod kept out of the route.
    """

    def __init__(self, c: RenderConfig, role: str) -> None:
        primary = role == "primary"
        self.role = role
        self.name = c.primary_revision if primary else c.fallback_revision
        self.model = c.model if primary else (c.fallback_model or c.model)
        self.gpus = c.gpus if primary else c.fallback_gpus
        self.image = c.images.replica if primary else (c.images.fallback or c.images.replica)
        self.min_scale = c.min_scale if primary else c.fallback_min_scale
        self.max_scale = c.max_scale if primary else c.fallback_max_scale
        self.standby = c.standby if primary else c.fallback_standby

    @property
    def pods(self) -> int:
        return self.min_scale + self.standby


def revisions(c: RenderConfig) -> tuple[Revision, Revision]:
    return Revision(c, "primary"), Revision(c, "fallback")


def _replica_env(c: RenderConfig, rev: Revision) -> list[Obj]:
    out = env(
        {
            "SUREFOOT_PORT": str(REPLICA_PORT),
            "SUREFOOT_MODEL": rev.model,
            "SUREFOOT_EMBEDDING_MODEL": c.embedding_model or None,
            "SUREFOOT_REVISION": rev.name,
            "SUREFOOT_CHECKPOINT_DIR": CHECKPOINT_DIR,
            "SUREFOOT_N_GPU_LAYERS": "-1" if rev.gpus else "0",
            "SUREFOOT_CUDA": "true" if rev.gpus else "false",
            "SUREFOOT_QUEUE_CAPACITY": str(c.container_concurrency),
        }
    )
    return [*redis_env(c, "replica"), secret_env(c, "SUREFOOT_ADMIN_TOKEN", "admin-token"),
            secret_env(c, "SUREFOOT_INTERNAL_TOKEN", "internal-token"), *out,
            field_env("SUREFOOT_REPLICA", "metadata.name"),
            field_env("SUREFOOT_NODE", "spec.nodeName")]


def replica_container(c: RenderConfig, rev: Revision, knative: bool) -> Obj:
    limits: dict[str, Any] = {"memory": c.replica_memory}
    if rev.gpus:
        limits["nvidia.com/gpu"] = str(rev.gpus)
    return {
        "name": "replica",
        "image": rev.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["surefoot", "serve"],
        "ports": [{"name": "http1" if knative else "http", "containerPort": REPLICA_PORT}],
        "env": _replica_env(c, rev),
        "resources": {
            "requests": {"cpu": c.replica_cpu, "memory": c.replica_memory},
            "limits": limits,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": REPLICA_PORT},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": REPLICA_PORT},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "volumeMounts": [{"name": "checkpoints", "mountPath": CHECKPOINT_DIR}],
        "securityContext": secure_context(),
    }


def revision_template(c: RenderConfig, rev: Revision) -> Obj:
    """The Knative revision template of one inference revision (our own revision name)."""
    spec: Obj = {
        "serviceAccountName": c.sa("replica"),
        "automountServiceAccountToken": False,
        "containerConcurrency": c.container_concurrency,
        "timeoutSeconds": c.timeout_seconds,
        "responseStartTimeoutSeconds": c.response_start_timeout_seconds,
        "affinity": anti_affinity("serving.knative.dev/revision", rev.name),
        "containers": [replica_container(c, rev, knative=True)],
        "volumes": [checkpoint_volume(c)],
    }
    if rev.gpus:
        spec["tolerations"] = [dict(GPU_TOLERATION)]
    return {
        "metadata": {
            "name": rev.name,
            "labels": {PART_OF: c.name, "surefoot.dev/role": rev.role},
            "annotations": {
                "autoscaling.knative.dev/min-scale": str(rev.pods),
                "autoscaling.knative.dev/max-scale": str(rev.max_scale),
                STANDBY_ANNOTATION: str(rev.standby),
                "autoscaling.knative.dev/target": str(c.target),
                "autoscaling.knative.dev/metric": "concurrency",
            },
        },
        "spec": spec,
    }


def pdb(c: RenderConfig, label: str) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(c, c.llm, "inference"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {label: c.primary_revision}}},
    }


def traffic_block(c: RenderConfig) -> list[Obj]:
    """The rendered split: both revisions pinned by name, each with its tag."""
    return [
        {"revisionName": c.primary_revision, "percent": c.traffic.primary, "tag": "primary"},
        {"revisionName": c.fallback_revision, "percent": c.traffic.fallback, "tag": "fallback"},
    ]


def knative_inference(c: RenderConfig) -> list[Obj]:
    """Two Configurations (primary ``<name>-llm``, fallback ``<name>-llm-fallback``), one
    standalone Route ``<name>-llm`` over both, and the budget.

    A Service-owned Route may only name revisions of its own Service (Serving v1.21+), and a
    Service has one template; a standalone Route has no owner, so it may name the revisions of
    both Configurations, and both exist after one apply.
    """
    primary, fallback = revisions(c)
    configurations = [
        {
            "apiVersion": SERVING_V1,
            "kind": "Configuration",
            "metadata": meta(c, name, "inference"),
            "spec": {"template": revision_template(c, rev)},
        }
        for name, rev in ((c.llm, primary), (c.fallback_configuration, fallback))
    ]
    route = {
        "apiVersion": SERVING_V1,
        "kind": "Route",
        "metadata": meta(c, c.llm, "inference"),
        "spec": {"traffic": traffic_block(c)},
    }
    return [*configurations, route, pdb(c, "serving.knative.dev/revision")]


def _kubernetes_revision(c: RenderConfig, rev: Revision) -> list[Obj]:
    name = c.llm if rev.role == "primary" else c.fallback_configuration
    labels = {"app.kubernetes.io/name": name, PART_OF: c.name, "surefoot.dev/revision": rev.name,
              "surefoot.dev/role": rev.role}
    pod_spec: Obj = {
        "serviceAccountName": c.sa("replica"),
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 60,
        "affinity": anti_affinity("surefoot.dev/revision", rev.name),
        "containers": [replica_container(c, rev, knative=False)],
        "volumes": [checkpoint_volume(c)],
    }
    if rev.gpus:
        pod_spec["tolerations"] = [dict(GPU_TOLERATION)]
    revision = deployment(c, name, "inference", labels, rev.pods, pod_spec, rolling=True)
    revision["metadata"].setdefault("annotations", {})[STANDBY_ANNOTATION] = str(rev.standby)
    return [
        revision,
        core_service(c, name, "inference", {
            "selector": {"surefoot.dev/revision": rev.name},
            "ports": [{"name": "http", "port": 8080, "targetPort": REPLICA_PORT}],
        }),
    ]


def kubernetes_inference(c: RenderConfig) -> list[Obj]:
    """Deployments and Services of both revisions, the headless Service of the primary's pods
    (the snapshot CronJob resolves it) and the budget."""
    primary, fallback = revisions(c)
    objects = _kubernetes_revision(c, primary) + _kubernetes_revision(c, fallback)
    objects.append(core_service(c, f"{c.llm}-pods", "inference", {
        "clusterIP": "None",
        "selector": {"surefoot.dev/revision": c.primary_revision},
        "ports": [{"name": "http", "port": 8080, "targetPort": REPLICA_PORT}],
    }))
    objects.append(pdb(c, "surefoot.dev/revision"))
    return objects
