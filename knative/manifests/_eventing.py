"""The eventing objects: the Broker, one Trigger per function and event type it handles, and
the event sources (the lifecycle ApiServerSource or our own pod watcher, the checkpoint
PingSource, the GPU health DaemonSet).

Which function receives which type comes from the functions host's own table
(``functions.ROUTES``), so the Triggers cannot drift from what the host serves; Knative's
ApiServerSource events go to the host's dispatcher (``/``), which maps them first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType

from events import KNATIVE_APISERVER_PREFIXES, PREFIX
from functions import ROUTES
from knative.manifests._config import RenderConfig
from knative.manifests._objects import (
    EVENTING_V1,
    GPU_TOLERATION,
    PART_OF,
    SERVING_V1,
    SOURCES_V1,
    Obj,
    deployment,
    env,
    field_env,
    meta,
    resources,
)

#: the ApiServerSource event types the host's dispatcher receives.
DISPATCH_TYPES = tuple(
    f"{KNATIVE_APISERVER_PREFIXES[0]}{verb}" for verb in ("add", "update", "delete")
)

#: Trigger subscriber path -> event types (one Trigger each: exact type filters work on every
#: Knative Eventing release). Paths are the functions host's per-function routes.
FUNCTION_ROUTES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {**{f"/{name}": tuple(types) for name, types in ROUTES.items()}, "/": DISPATCH_TYPES}
)

_KNATIVE_PREFIX = "dev.knative."


def trigger_name(c: RenderConfig, path: str, event_type: str) -> str:
    fn = path.strip("/").replace("_", "-") or "dispatch"
    tail = event_type.removeprefix(PREFIX).removeprefix(_KNATIVE_PREFIX).replace(".", "-")
    return f"{c.name}-{fn}-{tail}"[:63].rstrip("-")


def _functions_ref(c: RenderConfig) -> Obj:
    return {"apiVersion": SERVING_V1, "kind": "Service", "name": f"{c.name}-functions"}


def _delivery(c: RenderConfig) -> Obj:
    return {
        "retry": c.delivery_retry,
        "backoffPolicy": "exponential",
        "backoffDelay": c.delivery_backoff_delay,
        "deadLetterSink": {"ref": _functions_ref(c), "uri": c.dead_letter_path},
    }


def _trigger(c: RenderConfig, path: str, event_type: str) -> Obj:
    subscriber: Obj = {"ref": _functions_ref(c)}
    if path != "/":
        subscriber["uri"] = path
    return {
        "apiVersion": EVENTING_V1,
        "kind": "Trigger",
        "metadata": meta(c, trigger_name(c, path, event_type), "trigger"),
        "spec": {
            "broker": c.broker,
            "filter": {"attributes": {"type": event_type}},
            "subscriber": subscriber,
            "delivery": _delivery(c),
        },
    }


def broker_and_triggers(c: RenderConfig) -> list[Obj]:
    broker = {
        "apiVersion": EVENTING_V1,
        "kind": "Broker",
        "metadata": meta(c, c.broker, "broker"),
        "spec": {"delivery": _delivery(c)},
    }
    triggers = [_trigger(c, path, t) for path, types in FUNCTION_ROUTES.items() for t in types]
    return [broker, *triggers]


def _broker_sink(c: RenderConfig) -> Obj:
    return {"ref": {"apiVersion": EVENTING_V1, "kind": "Broker", "name": c.broker}}


def _ping_source(c: RenderConfig) -> Obj:
    return {
        "apiVersion": SOURCES_V1,
        "kind": "PingSource",
        "metadata": meta(c, f"{c.name}-checkpoint-timer", "sources"),
        "spec": {
            "schedule": c.checkpoint_schedule,
            "contentType": "application/json",
            "data": json.dumps({"reason": "timer", "service": c.llm}),
            "sink": _broker_sink(c),
        },
    }


def _apiserver_source(c: RenderConfig) -> Obj:
    return {
        "apiVersion": SOURCES_V1,
        "kind": "ApiServerSource",
        "metadata": meta(c, f"{c.name}-lifecycle", "sources"),
        "spec": {
            "mode": "Resource",
            "serviceAccountName": c.sa("sources"),
            "resources": [
                {"apiVersion": "v1", "kind": "Pod",
                 "selector": {"matchLabels": {PART_OF: c.name}}},
                {"apiVersion": "v1", "kind": "Node"},
            ],
            "sink": _broker_sink(c),
        },
    }


def _pod_source(c: RenderConfig) -> Obj:
    labels = {"app.kubernetes.io/name": f"{c.name}-pod-source", PART_OF: c.name}
    container = {
        "name": "pod-source",
        "image": c.images.app,
        "imagePullPolicy": "IfNotPresent",
        "command": ["surefoot", "source", "pods"],
        "env": env(
            {
                "SUREFOOT_SINK": c.broker_url,
                "SUREFOOT_NAMESPACE": c.namespace,
                "SUREFOOT_LABEL_SELECTOR": f"{PART_OF}={c.name}",
            }
        ),
        "resources": resources("50m", "128Mi", "512Mi"),
    }
    return deployment(c, f"{c.name}-pod-source", "sources", labels, 1,
                      {"serviceAccountName": c.sa("sources"), "containers": [container]})


def _gpu_source(c: RenderConfig) -> Obj:
    labels = {"app.kubernetes.io/name": f"{c.name}-gpu-source", PART_OF: c.name}
    container = {
        "name": "gpu-source",
        "image": c.images.app,
        "imagePullPolicy": "IfNotPresent",
        "command": ["surefoot", "source", "gpu"],
        "env": [
            *env({
                "SUREFOOT_SINK": c.broker_url,
                "NVIDIA_VISIBLE_DEVICES": "all",
                "NVIDIA_DRIVER_CAPABILITIES": "utility",
            }),
            field_env("SUREFOOT_NODE", "spec.nodeName"),
        ],
        "resources": resources("50m", "64Mi", "256Mi"),
    }
    pod_spec = {
        "serviceAccountName": c.sa("gpu-source"),
        "automountServiceAccountToken": False,
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [dict(GPU_TOLERATION)],
        "containers": [container],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta(c, f"{c.name}-gpu-source", "sources"),
        "spec": {
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def uses_gpus(c: RenderConfig) -> bool:
    return bool(c.gpus or c.fallback_gpus)


def sources(c: RenderConfig) -> list[Obj]:
    """Lifecycle source first (ApiServerSource) or last (our pod watcher), the timer, and the
    GPU health DaemonSet when any revision has GPUs."""
    out = [_ping_source(c)]
    if c.pod_source == "apiserversource":
        out.insert(0, _apiserver_source(c))
    else:
        out.append(_pod_source(c))
    if uses_gpus(c):
        out.append(_gpu_source(c))
    return out
