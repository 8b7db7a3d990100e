"""Manifests for running Surefoot on a cluster, rendered from one small config file.

``surefoot render`` writes plain YAML (one file per component and a ``kustomization.yaml``), or
one multi-document stream for ``kubectl apply -f -``. Two shapes:

- ``knative`` (default): the inference Knative Service with its primary revision (our own
  revision name) and a traffic block that also names the warm fallback revision. A Knative
  Service has one template, so the fallback revision comes from a companion Knative
  Configuration (``<name>-llm-fallback``); the Service's route may name any revision in its
  namespace. Both revisions therefore exist after one ``kubectl apply``, with no ordering
  between two templates of the same Service. Around it: a PodDisruptionBudget (Knative makes
  none), the gateway and the functions as Knative Services, a Broker with Triggers, an
  ApiServerSource for pods and nodes, a PingSource for the checkpoint timer, the GPU health
  source as a DaemonSet, Redis, least-privilege RBAC per component, and the ``config-features``
  flags the pod specs need (affinity, fieldRef, and tolerations / PVCs when used).
- ``kubernetes``: for clusters without Knative: Deployments (3 replicas, required
  anti-affinity, RollingUpdate maxSurge 1 / maxUnavailable 0), Services, the same budget and a
  CronJob that snapshots every replica's checkpoint.

The config is a frozen dataclass; :func:`load_config` reports every bad field at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SHAPES = ("knative", "kubernetes")
POD_SOURCES = ("apiserversource", "surefoot")
CHECKPOINT_VOLUMES = ("emptydir", "pvc")
REPLICA_PORT = 8080
CHECKPOINT_DIR = "/var/lib/surefoot/checkpoints"
PART_OF = "app.kubernetes.io/part-of"


class RenderConfigError(ValueError):
    """A config file that cannot render; ``errors`` names every bad field."""

    def __init__(self, errors: list[str], source: str = "") -> None:
        self.errors = errors
        prefix = f"{source}: " if source else ""
        super().__init__(prefix + "; ".join(errors))


@dataclass(frozen=True)
class Images:
    replica: str = "ghcr.io/surefoot/replica:0.1.0-cuda"
    fallback: str = ""  # "" = the replica image
    app: str = "ghcr.io/surefoot/app:0.1.0"


@dataclass(frozen=True)
class Traffic:
    primary: int = 100
    fallback: int = 0


@dataclass(frozen=True)
class RenderConfig:
    """What ``surefoot.yaml`` may say. Every field has a working default except ``model``."""

    model: str = ""  # SUREFOOT_MODEL of the primary revision: a GGUF path or a known alias
    fallback_model: str = ""  # "" = the primary's model
    embedding_model: str = ""  # "" = the replica's default
    name: str = "surefoot"  # prefix of every object name
    namespace: str = "surefoot"
    revision: str = "v1"  # our revision suffix: <name>-llm-<revision>, <name>-llm-fallback-<revision>
    shape: str = "knative"
    images: Images = field(default_factory=Images)
    gpus: int = 1  # nvidia.com/gpu per primary replica (0 = CPU)
    fallback_gpus: int = 0
    replica_cpu: str = "2"
    replica_memory: str = "8Gi"
    min_scale: int = 3
    max_scale: int = 6  # 0 = unbounded
    fallback_min_scale: int = 1
    fallback_max_scale: int = 3
    target: int = 4  # autoscaling target: concurrent requests per replica
    container_concurrency: int = 8
    timeout_seconds: int = 300
    response_start_timeout_seconds: int = 120
    rollout_duration: str = "120s"
    traffic: Traffic = field(default_factory=Traffic)
    gateway_min_scale: int = 2
    redis_url: str = ""  # "" = run Redis in the namespace
    checkpoint_volume: str = "emptydir"
    checkpoint_size: str = "20Gi"
    checkpoint_storage_class: str = ""
    checkpoint_schedule: str = "*/5 * * * *"
    pod_source: str = "apiserversource"
    dead_letter_path: str = "/dead-letter"
    delivery_retry: int = 5
    delivery_backoff_delay: str = "PT0.5S"

    # ------------------------------------------------------------------ names
    @property
    def llm(self) -> str:
        return f"{self.name}-llm"

    @property
    def primary_revision(self) -> str:
        return f"{self.llm}-{self.revision}"

    @property
    def fallback_configuration(self) -> str:
        return f"{self.llm}-fallback"

    @property
    def fallback_revision(self) -> str:
        return f"{self.fallback_configuration}-{self.revision}"

    @property
    def broker(self) -> str:
        return self.name

    @property
    def redis(self) -> str:
        return self.redis_url or f"redis://{self.name}-redis.{self.namespace}.svc.cluster.local:6379/0"

    @property
    def broker_url(self) -> str:
        return f"http://broker-ingress.knative-eventing.svc.cluster.local/{self.namespace}/{self.broker}"

    def sa(self, component: str) -> str:
        return f"{self.name}-{component}"


# ---------------------------------------------------------------------- config loading
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_DURATION = re.compile(r"^[0-9]+(s|m|h)$")
_ISO_DURATION = re.compile(r"^PT([0-9]+(\.[0-9]+)?[HMS])+$")
_CRON = re.compile(r"^(\S+\s+){4}\S+$")


def _field_types(cls: type) -> dict[str, Any]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_section(
    raw: Any, cls: type, path: str, errors: list[str]
) -> dict[str, Any]:
    """Type-check one mapping against a dataclass; returns the good values."""
    if not isinstance(raw, Mapping):
        errors.append(f"{path or 'config'}: must be a mapping, got {type(raw).__name__}")
        return {}
    fields_ = _field_types(cls)
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{path}.{key}" if path else str(key)
        f = fields_.get(str(key))
        if f is None:
            close = difflib.get_close_matches(str(key), list(fields_), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            errors.append(f"{name}: unknown field{hint}")
            continue
        kind = str(f.type)
        if kind == "Images":
            out[f.name] = Images(**_check_section(value, Images, name, errors))
        elif kind == "Traffic":
            out[f.name] = Traffic(**_check_section(value, Traffic, name, errors))
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(f"{name}: must be an integer, got {value!r}")
            else:
                out[f.name] = value
        elif kind == "str":
            if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
                errors.append(f"{name}: must be a string, got {value!r}")
            else:
                out[f.name] = str(value)
    return out


def _validate(c: RenderConfig) -> list[str]:
    errors: list[str] = []
    if not c.model.strip():
        errors.append("model: is required (a GGUF path or model alias for the primary revision)")
    for fname in ("name", "namespace", "revision"):
        value = getattr(c, fname)
        if not _DNS_LABEL.match(value) or len(value) > 40:
            errors.append(
                f"{fname}: {value!r} must be a lowercase DNS label (a-z, 0-9, '-') of at most 40 characters"
            )
    if c.shape not in SHAPES:
        errors.append(f"shape: {c.shape!r} is not one of {', '.join(SHAPES)}")
    if c.pod_source not in POD_SOURCES:
        errors.append(f"pod_source: {c.pod_source!r} is not one of {', '.join(POD_SOURCES)}")
    if c.checkpoint_volume not in CHECKPOINT_VOLUMES:
        errors.append(
            f"checkpoint_volume: {c.checkpoint_volume!r} is not one of {', '.join(CHECKPOINT_VOLUMES)}"
        )
    for fname in ("replica", "app"):
        if not getattr(c.images, fname).strip():
            errors.append(f"images.{fname}: must not be empty")
    for fname in ("gpus", "fallback_gpus", "min_scale", "max_scale", "fallback_min_scale",
                  "fallback_max_scale", "gateway_min_scale", "delivery_retry"):
        if getattr(c, fname) < 0:
            errors.append(f"{fname}: must not be negative, got {getattr(c, fname)}")
    for fname in ("target", "container_concurrency", "timeout_seconds", "response_start_timeout_seconds"):
        if getattr(c, fname) <= 0:
            errors.append(f"{fname}: must be positive, got {getattr(c, fname)}")
    if c.max_scale and c.min_scale > c.max_scale:
        errors.append(f"max_scale: {c.max_scale} is below min_scale {c.min_scale} (0 means unbounded)")
    if c.fallback_max_scale and c.fallback_min_scale > c.fallback_max_scale:
        errors.append(
            f"fallback_max_scale: {c.fallback_max_scale} is below fallback_min_scale {c.fallback_min_scale}"
        )
    if c.response_start_timeout_seconds > c.timeout_seconds:
        errors.append(
            f"response_start_timeout_seconds: {c.response_start_timeout_seconds} exceeds "
            f"timeout_seconds {c.timeout_seconds}"
        )
    for fname in ("replica_cpu", "replica_memory", "checkpoint_size"):
        if not _QUANTITY.match(getattr(c, fname)):
            errors.append(f"{fname}: {getattr(c, fname)!r} is not a Kubernetes quantity (e.g. 2, 500m, 8Gi)")
    if not _DURATION.match(c.rollout_duration):
        errors.append(f"rollout_duration: {c.rollout_duration!r} must look like 120s, 5m or 1h")
    if not _ISO_DURATION.match(c.delivery_backoff_delay):
        errors.append(f"delivery_backoff_delay: {c.delivery_backoff_delay!r} must be an ISO 8601 duration like PT0.5S")
    if not _CRON.match(c.checkpoint_schedule.strip()):
        errors.append(f"checkpoint_schedule: {c.checkpoint_schedule!r} is not a five-field cron schedule")
    if not c.dead_letter_path.startswith("/"):
        errors.append(f"dead_letter_path: {c.dead_letter_path!r} must start with '/'")
    for fname in ("primary", "fallback"):
        pct = getattr(c.traffic, fname)
        if not 0 <= pct <= 100:
            errors.append(f"traffic.{fname}: {pct} is not within 0..100")
    total = c.traffic.primary + c.traffic.fallback
    if total != 100:
        errors.append(
            f"traffic: primary ({c.traffic.primary}) + fallback ({c.traffic.fallback}) = {total}, must be 100"
        )
    if len(c.fallback_revision) > 63:
        errors.append(
            f"revision: {c.fallback_revision!r} (name + '-llm-fallback-' + revision) is longer than "
            "63 characters; shorten name or revision"
        )
    if c.redis_url and not re.match(r"^rediss?://", c.redis_url):
        errors.append(f"redis_url: {c.redis_url!r} must start with redis:// or rediss://")
    return errors


def config_from_mapping(raw: Any, source: str = "") -> RenderConfig:
    """Build and check a config from parsed YAML; raises :class:`RenderConfigError` naming
    every bad field."""
    errors: list[str] = []
    if raw is not None and not isinstance(raw, Mapping):
        raise RenderConfigError([f"config: must be a mapping of fields, got {type(raw).__name__}"], source)
    values = _check_section(raw if raw is not None else {}, RenderConfig, "", errors)
    config = RenderConfig(**values)
    errors += [e for e in _validate(config) if e.split(":")[0] not in {x.split(":")[0] for x in errors}]
    if errors:
        raise RenderConfigError(errors, source)
    return config


def load_config(path: str | Path | None, **overrides: Any) -> RenderConfig:
    """Read ``surefoot.yaml`` (``None``: defaults, which need ``model`` from ``overrides``);
    ``overrides`` (not None) replace top-level fields before checking."""
    raw: Any = {}
    source = str(path) if path else ""
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RenderConfigError([f"cannot read config file: {exc.strerror or exc}"], source) from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise RenderConfigError([f"not valid YAML{where}"], source) from None
        if raw is None:
            raw = {}
    if isinstance(raw, Mapping):
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    return config_from_mapping(raw, source)


# ---------------------------------------------------------------------- helpers
def _meta(c: RenderConfig, name: str, component: str, namespaced: bool = True, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespaced:
        meta["namespace"] = c.namespace
    meta["labels"] = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": component,
        PART_OF: c.name,
        "app.kubernetes.io/managed-by": "surefoot",
    }
    meta.update(extra)
    return meta


def _env(pairs: Mapping[str, str | None]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in pairs.items() if v is not None]


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _anti_affinity(label: str, value: str) -> dict[str, Any]:
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


_GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _replica_container(
    c: RenderConfig, revision: str, model: str, gpus: int, image: str, knative: bool
) -> dict[str, Any]:
    env = _env(
        {
            "SUREFOOT_PORT": str(REPLICA_PORT),
            "SUREFOOT_MODEL": model,
            "SUREFOOT_EMBEDDING_MODEL": c.embedding_model or None,
            "SUREFOOT_REVISION": revision,
            "SUREFOOT_REDIS_URL": c.redis,
            "SUREFOOT_CHECKPOINT_DIR": CHECKPOINT_DIR,
            "SUREFOOT_N_GPU_LAYERS": "-1" if gpus else "0",
            "SUREFOOT_CUDA": "true" if gpus else "false",
            "SUREFOOT_QUEUE_CAPACITY": str(c.container_concurrency),
        }
    )
    env += [_field_env("SUREFOOT_REPLICA", "metadata.name"), _field_env("SUREFOOT_NODE", "spec.nodeName")]
    limits: dict[str, Any] = {"memory": c.replica_memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": "replica",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["surefoot", "serve"],
        "ports": [{"name": "http1" if knative else "http", "containerPort": REPLICA_PORT}],
        "env": env,
        "resources": {"requests": {"cpu": c.replica_cpu, "memory": c.replica_memory}, "limits": limits},
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
    }
    return container


def _checkpoint_volume(c: RenderConfig) -> dict[str, Any]:
    if c.checkpoint_volume == "pvc":
        return {"name": "checkpoints", "persistentVolumeClaim": {"claimName": f"{c.name}-checkpoints"}}
    return {"name": "checkpoints", "emptyDir": {}}


def _ksvc_template(
    c: RenderConfig, revision: str, role: str, model: str, gpus: int, image: str,
    min_scale: int, max_scale: int,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": c.sa("replica"),
        "automountServiceAccountToken": False,
        "containerConcurrency": c.container_concurrency,
        "timeoutSeconds": c.timeout_seconds,
        "responseStartTimeoutSeconds": c.response_start_timeout_seconds,
        "affinity": _anti_affinity("serving.knative.dev/revision", revision),
        "containers": [_replica_container(c, revision, model, gpus, image, knative=True)],
        "volumes": [_checkpoint_volume(c)],
    }
    if gpus:
        spec["tolerations"] = [dict(_GPU_TOLERATION)]
    return {
        "metadata": {
            "name": revision,
            "labels": {PART_OF: c.name, "surefoot.dev/role": role},
            "annotations": {
                "autoscaling.knative.dev/min-scale": str(min_scale),
                "autoscaling.knative.dev/max-scale": str(max_scale),
                "autoscaling.knative.dev/target": str(c.target),
                "autoscaling.knative.dev/metric": "concurrency",
            },
        },
        "spec": spec,
    }


def _knative_service(
    c: RenderConfig, name: str, component: str, template: dict[str, Any], annotations: dict[str, str] | None = None,
    traffic: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    meta = _meta(c, name, component)
    if annotations:
        meta["annotations"] = annotations
    spec: dict[str, Any] = {"template": template}
    if traffic is not None:
        spec["traffic"] = traffic
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": meta, "spec": spec}


def _app_template(
    c: RenderConfig, component: str, command: list[str], env: dict[str, str | None], min_scale: int,
    service_account: str, automount: bool,
) -> dict[str, Any]:
    return {
        "metadata": {
            "labels": {PART_OF: c.name, "surefoot.dev/role": component},
            "annotations": {"autoscaling.knative.dev/min-scale": str(min_scale)},
        },
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": automount,
            "containers": [
                {
                    "name": component,
                    "image": c.images.app,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "ports": [{"name": "http1", "containerPort": 8080}],
                    "env": _env({"SUREFOOT_PORT": "8080", **env}),
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 2},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                }
            ],
        },
    }


def _sa(c: RenderConfig, component: str, automount: bool) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(c, c.sa(component), component),
        "automountServiceAccountToken": automount,
    }


def _role(c: RenderConfig, component: str, rules: list[dict[str, Any]], cluster: bool = False) -> list[dict[str, Any]]:
    kind = "ClusterRole" if cluster else "Role"
    name = f"{c.namespace}-{c.sa(component)}" if cluster else c.sa(component)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(c, name, component, namespaced=not cluster),
        "rules": rules,
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": f"{kind}Binding",
        "metadata": _meta(c, name, component, namespaced=not cluster),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": c.sa(component), "namespace": c.namespace}],
    }
    return [role, binding]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


# Which functions receive which event types (one Trigger each: exact type filters work on
# every Knative Eventing release). Paths are the functions host's per-function routes.
FUNCTION_ROUTES: dict[str, tuple[str, ...]] = {
    # Must cover functions.ROUTES (a test checks it): one Trigger per function and type.
    "/trip_breaker": (
        "dev.surefoot.gpu.xid", "dev.surefoot.gpu.ecc", "dev.surefoot.gpu.lost",
        "dev.surefoot.gpu.healthy", "dev.surefoot.pod.oomkilled", "dev.surefoot.pod.crashloop",
        "dev.knative.sources.ping",
    ),
    "/reroute_traffic": (
        "dev.surefoot.breaker.opened", "dev.surefoot.breaker.halfopened",
        "dev.surefoot.breaker.closed", "dev.knative.sources.ping",
    ),
    "/snapshot_checkpoint": (
        "dev.knative.sources.ping", "dev.surefoot.checkpoint.requested",
        "dev.surefoot.pod.deleted",
    ),
    "/quarantine_node": (
        "dev.surefoot.gpu.xid", "dev.surefoot.gpu.ecc", "dev.surefoot.gpu.lost",
        "dev.surefoot.gpu.healthy", "dev.knative.sources.ping",
    ),
    # Knative's ApiServerSource events go to the host's dispatcher, which maps them.
    "/": (
        "dev.knative.apiserver.resource.add", "dev.knative.apiserver.resource.update",
        "dev.knative.apiserver.resource.delete",
    ),
}


def _trigger_name(c: RenderConfig, path: str, event_type: str) -> str:
    fn = path.strip("/").replace("_", "-") or "dispatch"
    tail = event_type.removeprefix("dev.surefoot.").removeprefix("dev.knative.").replace(".", "-")
    return f"{c.name}-{fn}-{tail}"[:63].rstrip("-")


# ---------------------------------------------------------------------- the sets
def _common(c: RenderConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    files: list[tuple[str, list[dict[str, Any]]]] = [
        ("namespace.yaml", [{"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(c, c.namespace, "namespace", namespaced=False)}]),
    ]
    if not c.redis_url:
        labels = {"app.kubernetes.io/name": f"{c.name}-redis", PART_OF: c.name}
        files.append(
            (
                "redis.yaml",
                [
                    {
                        "apiVersion": "apps/v1",
                        "kind": "Deployment",
                        "metadata": _meta(c, f"{c.name}-redis", "redis"),
                        "spec": {
                            "replicas": 1,
                            "selector": {"matchLabels": labels},
                            "template": {
                                "metadata": {"labels": labels},
                                "spec": {
                                    "automountServiceAccountToken": False,
                                    "containers": [
                                        {
                                            "name": "redis",
                                            "image": "redis:7-alpine",
                                            "args": ["--save", "", "--appendonly", "no"],
                                            "ports": [{"name": "redis", "containerPort": 6379}],
                                            "readinessProbe": {
                                                "exec": {"command": ["redis-cli", "ping"]},
                                                "periodSeconds": 5,
                                            },
                                            "resources": {
                                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                                "limits": {"memory": "512Mi"},
                                            },
                                        }
                                    ],
                                },
                            },
                        },
                    },
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "metadata": _meta(c, f"{c.name}-redis", "redis"),
                        "spec": {"selector": labels, "ports": [{"name": "redis", "port": 6379, "targetPort": 6379}]},
                    },
                ],
            )
        )
    if c.checkpoint_volume == "pvc":
        pvc: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": _meta(c, f"{c.name}-checkpoints", "checkpoints"),
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": {"requests": {"storage": c.checkpoint_size}},
            },
        }
        if c.checkpoint_storage_class:
            pvc["spec"]["storageClassName"] = c.checkpoint_storage_class
        files.append(("checkpoints.yaml", [pvc]))
    return files


def _pdb(c: RenderConfig, label: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(c, c.llm, "inference"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {label: c.primary_revision}}},
    }


def _knative_set(c: RenderConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    files = _common(c)
    flags = {"kubernetes.podspec-affinity": "enabled", "kubernetes.podspec-fieldref": "enabled"}
    if c.gpus or c.fallback_gpus:
        flags["kubernetes.podspec-tolerations"] = "enabled"
    if c.checkpoint_volume == "emptydir":
        flags["kubernetes.podspec-volumes-emptydir"] = "enabled"  # on by default upstream, not everywhere
    if c.checkpoint_volume == "pvc":
        flags["kubernetes.podspec-persistent-volume-claim"] = "enabled"
        flags["kubernetes.podspec-persistent-volume-write"] = "enabled"
    files.insert(
        1,
        (
            "config-features.yaml",
            [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "config-features", "namespace": "knative-serving"},
                    "data": flags,
                }
            ],
        ),
    )

    # RBAC, least privilege per component
    rbac: list[dict[str, Any]] = [
        _sa(c, "replica", automount=False),
        _sa(c, "gateway", automount=True),
        _sa(c, "functions", automount=True),
        _sa(c, "sources", automount=True),
    ]
    rbac += _role(c, "gateway", [
        _rule(["serving.knative.dev"], ["services", "revisions"], ["get", "list", "watch"]),
        _rule([""], ["pods"], ["get", "list", "watch"]),
    ])
    rbac += _role(c, "functions", [
        _rule(["serving.knative.dev"], ["services"], ["get", "patch"]),
        _rule(["serving.knative.dev"], ["revisions"], ["get", "list", "patch"]),
        _rule(["autoscaling.internal.knative.dev"], ["podautoscalers"], ["get", "patch"]),
    ])
    rbac += _role(c, "functions", [
        _rule([""], ["nodes"], ["get", "list", "patch"]),
        _rule([""], ["pods"], ["get", "list"]),
        _rule([""], ["pods/eviction"], ["create"]),
    ], cluster=True)
    rbac += _role(c, "sources", [_rule([""], ["pods", "nodes"], ["get", "list", "watch"])], cluster=True)
    gpu = bool(c.gpus or c.fallback_gpus)
    if gpu:
        rbac.append(_sa(c, "gpu-source", automount=False))
    files.append(("rbac.yaml", rbac))

    # inference: the Service (primary template + traffic) and the fallback Configuration
    primary = _ksvc_template(
        c, c.primary_revision, "primary", c.model, c.gpus, c.images.replica, c.min_scale, c.max_scale
    )
    fallback = _ksvc_template(
        c, c.fallback_revision, "fallback", c.fallback_model or c.model, c.fallback_gpus,
        c.images.fallback or c.images.replica, c.fallback_min_scale, c.fallback_max_scale,
    )
    traffic = [
        {"revisionName": c.primary_revision, "percent": c.traffic.primary, "tag": "primary"},
        {"revisionName": c.fallback_revision, "percent": c.traffic.fallback, "tag": "fallback"},
    ]
    inference = [
        {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Configuration",
            "metadata": _meta(c, c.fallback_configuration, "inference"),
            "spec": {"template": fallback},
        },
        _knative_service(
            c, c.llm, "inference", primary,
            annotations={"serving.knative.dev/rollout-duration": c.rollout_duration},
            traffic=traffic,
        ),
        _pdb(c, "serving.knative.dev/revision"),
    ]
    files.append(("inference.yaml", inference))

    local = f"{c.llm}.{c.namespace}.svc.cluster.local"
    gateway = _knative_service(
        c, f"{c.name}-gateway", "gateway",
        _app_template(
            c, "gateway", ["surefoot", "gateway"],
            {
                "SUREFOOT_REDIS_URL": c.redis,
                "SUREFOOT_PLATFORM": "knative",
                "SUREFOOT_NAMESPACE": c.namespace,
                "SUREFOOT_SERVICE": c.llm,
                "SUREFOOT_PRIMARY_URL": f"http://primary-{local}",
                "SUREFOOT_FALLBACK_URL": f"http://fallback-{local}",
            },
            c.gateway_min_scale, c.sa("gateway"), automount=True,
        ),
    )
    gateway["spec"]["template"]["spec"]["timeoutSeconds"] = c.timeout_seconds
    gateway["spec"]["template"]["spec"]["responseStartTimeoutSeconds"] = c.response_start_timeout_seconds
    files.append(("gateway.yaml", [gateway]))

    functions_ksvc = _knative_service(
        c, f"{c.name}-functions", "functions",
        _app_template(
            c, "functions", ["surefoot", "functions"],
            {
                "SUREFOOT_REDIS_URL": c.redis,
                "SUREFOOT_PLATFORM": "knative",
                "SUREFOOT_NAMESPACE": c.namespace,
                "SUREFOOT_SERVICE": c.llm,
                "SUREFOOT_PRIMARY_REVISION": c.primary_revision,
                "SUREFOOT_FALLBACK_REVISION": c.fallback_revision,
                "SUREFOOT_SINK": c.broker_url,
            },
            1, c.sa("functions"), automount=True,
        ),
    )
    files.append(("functions.yaml", [functions_ksvc]))

    functions_ref = {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": f"{c.name}-functions"}
    delivery = {
        "retry": c.delivery_retry,
        "backoffPolicy": "exponential",
        "backoffDelay": c.delivery_backoff_delay,
        "deadLetterSink": {"ref": dict(functions_ref), "uri": c.dead_letter_path},
    }
    eventing: list[dict[str, Any]] = [
        {
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": _meta(c, c.broker, "broker"),
            "spec": {"delivery": delivery},
        }
    ]
    for path, types in FUNCTION_ROUTES.items():
        for event_type in types:
            subscriber: dict[str, Any] = {"ref": dict(functions_ref)}
            if path != "/":
                subscriber["uri"] = path
            eventing.append(
                {
                    "apiVersion": "eventing.knative.dev/v1",
                    "kind": "Trigger",
                    "metadata": _meta(c, _trigger_name(c, path, event_type), "trigger"),
                    "spec": {
                        "broker": c.broker,
                        "filter": {"attributes": {"type": event_type}},
                        "subscriber": subscriber,
                        "delivery": delivery,
                    },
                }
            )
    files.append(("eventing.yaml", eventing))

    broker_ref = {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": c.broker}}
    sources: list[dict[str, Any]] = [
        {
            "apiVersion": "sources.knative.dev/v1",
            "kind": "PingSource",
            "metadata": _meta(c, f"{c.name}-checkpoint-timer", "sources"),
            "spec": {
                "schedule": c.checkpoint_schedule,
                "contentType": "application/json",
                "data": json.dumps({"reason": "timer", "service": c.llm}),
                "sink": broker_ref,
            },
        }
    ]
    if c.pod_source == "apiserversource":
        sources.insert(
            0,
            {
                "apiVersion": "sources.knative.dev/v1",
                "kind": "ApiServerSource",
                "metadata": _meta(c, f"{c.name}-lifecycle", "sources"),
                "spec": {
                    "mode": "Resource",
                    "serviceAccountName": c.sa("sources"),
                    "resources": [
                        {"apiVersion": "v1", "kind": "Pod", "selector": {"matchLabels": {PART_OF: c.name}}},
                        {"apiVersion": "v1", "kind": "Node"},
                    ],
                    "sink": broker_ref,
                },
            },
        )
    else:
        labels = {"app.kubernetes.io/name": f"{c.name}-pod-source", PART_OF: c.name}
        sources.append(
            _deployment(
                c, f"{c.name}-pod-source", "sources", labels, 1,
                {
                    "serviceAccountName": c.sa("sources"),
                    "containers": [
                        {
                            "name": "pod-source",
                            "image": c.images.app,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["surefoot", "source", "pods"],
                            "env": _env(
                                {
                                    "SUREFOOT_SINK": c.broker_url,
                                    "SUREFOOT_NAMESPACE": c.namespace,
                                    "SUREFOOT_LABEL_SELECTOR": f"{PART_OF}={c.name}",
                                }
                            ),
                            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                        }
                    ],
                },
            )
        )
    if gpu:
        labels = {"app.kubernetes.io/name": f"{c.name}-gpu-source", PART_OF: c.name}
        sources.append(
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": _meta(c, f"{c.name}-gpu-source", "sources"),
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": c.sa("gpu-source"),
                            "automountServiceAccountToken": False,
                            "nodeSelector": {"nvidia.com/gpu.present": "true"},
                            "tolerations": [dict(_GPU_TOLERATION)],
                            "containers": [
                                {
                                    "name": "gpu-source",
                                    "image": c.images.app,
                                    "imagePullPolicy": "IfNotPresent",
                                    "command": ["surefoot", "source", "gpu"],
                                    "env": _env(
                                        {
                                            "SUREFOOT_SINK": c.broker_url,
                                            "NVIDIA_VISIBLE_DEVICES": "all",
                                            "NVIDIA_DRIVER_CAPABILITIES": "utility",
                                        }
                                    )
                                    + [_field_env("SUREFOOT_NODE", "spec.nodeName")],
                                    "resources": {
                                        "requests": {"cpu": "50m", "memory": "64Mi"},
                                        "limits": {"memory": "256Mi"},
                                    },
                                }
                            ],
                        },
                    },
                },
            }
        )
    files.append(("sources.yaml", sources))
    return files


def _deployment(
    c: RenderConfig, name: str, component: str, labels: dict[str, str], replicas: int, pod_spec: dict[str, Any],
    rolling: bool = False, annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if annotations:
        spec["template"]["metadata"]["annotations"] = annotations
    if rolling:
        spec["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(c, name, component), "spec": spec}


_SNAPSHOT_SCRIPT = """\
import socket, sys, httpx
host, port = sys.argv[1], int(sys.argv[2])
ips = sorted({a[4][0] for a in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
failed = 0
for ip in ips:
    try:
        httpx.post(f"http://{ip}:{port}/admin/snapshot", timeout=600).raise_for_status()
        print("snapshot ok", ip)
    except httpx.HTTPError as exc:
        failed += 1
        print("snapshot failed", ip, exc, file=sys.stderr)
sys.exit(1 if failed or not ips else 0)
"""


def _kubernetes_set(c: RenderConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    files = _common(c)
    rbac = [_sa(c, "replica", automount=False), _sa(c, "gateway", automount=True)]
    rbac += _role(c, "gateway", [_rule([""], ["pods"], ["get", "list", "watch"])])
    files.append(("rbac.yaml", rbac))
    objects: list[dict[str, Any]] = []
    for role, revision, model, gpus, image, replicas in (
        ("primary", c.primary_revision, c.model, c.gpus, c.images.replica, c.min_scale),
        ("fallback", c.fallback_revision, c.fallback_model or c.model, c.fallback_gpus,
         c.images.fallback or c.images.replica, c.fallback_min_scale),
    ):
        name = c.llm if role == "primary" else c.fallback_configuration
        labels = {"app.kubernetes.io/name": name, PART_OF: c.name, "surefoot.dev/revision": revision,
                  "surefoot.dev/role": role}
        pod_spec: dict[str, Any] = {
            "serviceAccountName": c.sa("replica"),
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 60,
            "affinity": _anti_affinity("surefoot.dev/revision", revision),
            "containers": [_replica_container(c, revision, model, gpus, image, knative=False)],
            "volumes": [_checkpoint_volume(c)],
        }
        if gpus:
            pod_spec["tolerations"] = [dict(_GPU_TOLERATION)]
        objects.append(_deployment(c, name, "inference", labels, replicas, pod_spec, rolling=True))
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta(c, name, "inference"),
                "spec": {
                    "selector": {"surefoot.dev/revision": revision},
                    "ports": [{"name": "http", "port": 8080, "targetPort": REPLICA_PORT}],
                },
            }
        )
    objects.append(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(c, f"{c.llm}-pods", "inference"),
            "spec": {
                "clusterIP": "None",
                "selector": {"surefoot.dev/revision": c.primary_revision},
                "ports": [{"name": "http", "port": 8080, "targetPort": REPLICA_PORT}],
            },
        }
    )
    objects.append(_pdb(c, "surefoot.dev/revision"))
    files.append(("inference.yaml", objects))

    labels = {"app.kubernetes.io/name": f"{c.name}-gateway", PART_OF: c.name}
    gateway = _deployment(
        c, f"{c.name}-gateway", "gateway", labels, max(1, c.gateway_min_scale),
        {
            "serviceAccountName": c.sa("gateway"),
            "containers": [
                {
                    "name": "gateway",
                    "image": c.images.app,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["surefoot", "gateway"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": _env(
                        {
                            "SUREFOOT_PORT": "8080",
                            "SUREFOOT_REDIS_URL": c.redis,
                            "SUREFOOT_PLATFORM": "kubernetes",
                            "SUREFOOT_NAMESPACE": c.namespace,
                            "SUREFOOT_PRIMARY_URL": f"http://{c.llm}.{c.namespace}.svc.cluster.local:8080",
                            "SUREFOOT_FALLBACK_URL": (
                                f"http://{c.fallback_configuration}.{c.namespace}.svc.cluster.local:8080"
                            ),
                        }
                    ),
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 2},
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10},
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
                }
            ],
        },
        rolling=True,
    )
    gateway_svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(c, f"{c.name}-gateway", "gateway"),
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }
    files.append(("gateway.yaml", [gateway, gateway_svc]))

    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": _meta(c, f"{c.name}-checkpoint", "checkpoints"),
        "spec": {
            "schedule": c.checkpoint_schedule,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "spec": {
                    "backoffLimit": 1,
                    "activeDeadlineSeconds": 900,
                    "template": {
                        "metadata": {"labels": {PART_OF: c.name, "surefoot.dev/role": "checkpoint"}},
                        "spec": {
                            "restartPolicy": "Never",
                            "automountServiceAccountToken": False,
                            "containers": [
                                {
                                    "name": "snapshot",
                                    "image": c.images.app,
                                    "imagePullPolicy": "IfNotPresent",
                                    "command": ["python", "-c", _SNAPSHOT_SCRIPT,
                                                f"{c.llm}-pods.{c.namespace}.svc.cluster.local", "8080"],
                                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"},
                                                  "limits": {"memory": "256Mi"}},
                                }
                            ],
                        },
                    },
                }
            },
        },
    }
    files.append(("checkpoint-cronjob.yaml", [cron]))
    return files


def render(config: RenderConfig) -> list[tuple[str, list[dict[str, Any]]]]:
    """The manifests, as ``[(file name, [objects])]`` in apply order."""
    return _knative_set(config) if config.shape == "knative" else _kubernetes_set(config)


def all_objects(files: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    return [obj for _, objs in files for obj in objs]


def _dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=100)


def to_stream(files: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """One multi-document YAML stream, for ``kubectl apply -f -``."""
    return _dump(all_objects(files))


def kustomization(files: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [name for name, _ in files],
    }


def write(files: list[tuple[str, list[dict[str, Any]]]], out: str | Path) -> list[Path]:
    """Write each file and a ``kustomization.yaml`` into ``out`` (created if missing); every
    file is written whole to a temporary name and renamed, so none is ever half written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    contents = [(name, _dump(objs)) for name, objs in files]
    contents.append(("kustomization.yaml", yaml.safe_dump(kustomization(files), sort_keys=False)))
    for name, text in contents:
        path = out / name
        tmp = out / f".{name}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        tmp.replace(path)
        written.append(path)
    return written
