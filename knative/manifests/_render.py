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

Each object family has its own builder (``_inference``, ``_apps``, ``_eventing``,
``_cluster``); this module puts them into files in apply order and writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from knative.manifests._apps import (
    checkpoint_cronjob,
    knative_functions,
    knative_gateway,
    kubernetes_gateway,
)
from knative.manifests._cluster import common, config_features, knative_rbac, kubernetes_rbac
from knative.manifests._config import RenderConfig
from knative.manifests._eventing import broker_and_triggers, sources, uses_gpus
from knative.manifests._inference import knative_inference, kubernetes_inference
from knative.manifests._objects import Files, Obj
from knative.manifests._secrets import SecretValues


def _knative_set(c: RenderConfig, values: SecretValues | None) -> Files:
    files = common(c, values)
    files.insert(1, ("config-features.yaml", [config_features(c)]))
    files += [
        ("rbac.yaml", knative_rbac(c, uses_gpus(c))),
        ("inference.yaml", knative_inference(c)),
        ("gateway.yaml", [knative_gateway(c)]),
        ("functions.yaml", [knative_functions(c)]),
        ("eventing.yaml", broker_and_triggers(c)),
        ("sources.yaml", sources(c)),
    ]
    return files


def _kubernetes_set(c: RenderConfig, values: SecretValues | None) -> Files:
    return [
        *common(c, values),
        ("rbac.yaml", kubernetes_rbac(c)),
        ("inference.yaml", kubernetes_inference(c)),
        ("gateway.yaml", kubernetes_gateway(c)),
        ("checkpoint-cronjob.yaml", [checkpoint_cronjob(c)]),
    ]


def render(config: RenderConfig, secrets: SecretValues | None = None) -> Files:
    """The manifests, as ``[(file name, [objects])]`` in apply order; the rendered Secret holds
    ``secrets`` (None: fresh random values)."""
    build = _knative_set if config.shape == "knative" else _kubernetes_set
    return build(config, secrets)


def all_objects(files: Files) -> list[Obj]:
    return [obj for _, objs in files for obj in objs]


def _dump(objects: list[Obj]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False, width=100)


def to_stream(files: Files) -> str:
    """One multi-document YAML stream, for ``kubectl apply -f -``."""
    return _dump(all_objects(files))


def kustomization(files: Files) -> dict[str, Any]:
    return {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [name for name, _ in files],
    }


def write(files: Files, out: str | Path) -> list[Path]:
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
