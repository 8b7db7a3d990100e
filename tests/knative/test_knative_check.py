"""Every shape ``surefoot render`` writes passes Knative's own admission and routing code: no
rejected object and no webhook warning (see tests/knative_check.py for where the programs
come from)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from knative.manifests import config_from_mapping, render, write
from tests import knative_check

EVERY_OPTION: dict[str, Any] = {
    "model": "/models/llama.gguf",
    "fallback_model": "/models/llama-q4.gguf",
    "embedding_model": "all-minilm-l6-v2",
    "name": "inf",
    "namespace": "serving-prod",
    "revision": "r2",
    "images": {
        "replica": "example/replica:2",
        "fallback": "example/replica:2-small",
        "app": "example/app:2",
    },
    "gpus": 2,
    "fallback_gpus": 1,
    "replica_cpu": "4",
    "replica_memory": "16Gi",
    "min_scale": 2,
    "max_scale": 0,
    "fallback_min_scale": 2,
    "fallback_max_scale": 5,
    "standby": 1,
    "fallback_standby": 1,
    "gpu_budget": 9,
    "target": 2,
    "container_concurrency": 4,
    "timeout_seconds": 600,
    "response_start_timeout_seconds": 300,
    "rollout_duration": "5m",
    "traffic": {"primary": 70, "fallback": 30},
    "gateway_min_scale": 3,
    "redis_url": "rediss://cache.example:6380/1",
    "checkpoint_volume": "pvc",
    "checkpoint_size": "50Gi",
    "checkpoint_storage_class": "nfs",
    "checkpoint_schedule": "*/10 * * * *",
    "pod_source": "surefoot",
    "dead_letter_path": "/dead",
    "delivery_retry": 3,
    "delivery_backoff_delay": "PT1S",
}

SHAPES: dict[str, dict[str, Any]] = {
    "default": {"model": "gemma-3-270m"},
    "every-option": EVERY_OPTION,
    "every-option-apiserversource-emptydir": {
        **EVERY_OPTION,
        "pod_source": "apiserversource",
        "checkpoint_volume": "emptydir",
        "redis_url": "",
        "gpus": 0,
        "fallback_gpus": 0,
    },
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_rendered_knative_shape_is_accepted_and_routed(shape: str, tmp_path: Path) -> None:
    write(render(config_from_mapping(SHAPES[shape])), tmp_path)
    reports = knative_check.assert_accepted([tmp_path])
    kinds = {f["kind"] for f in reports["serving-check"]["findings"]}
    assert {"Configuration", "Route", "Revision", "Service"} <= kinds
    routes = [f for f in reports["serving-check"]["findings"] if f["stage"] == "route"]
    assert any(f["name"].endswith("-llm") for f in routes)  # the inference traffic resolved
    assert reports["eventing-check"]["checked"] > 0


def test_plain_kubernetes_shape_has_nothing_knative(tmp_path: Path) -> None:
    write(render(config_from_mapping({"model": "m", "shape": "kubernetes"})), tmp_path)
    for name in knative_check.PROGRAMS:
        report = knative_check.run(name, [tmp_path])
        assert (report["checked"], report["rejected"]) == (0, 0), name


def test_the_checks_catch_what_serving_v121_rejects(tmp_path: Path) -> None:
    """Guards against a checker that accepts anything: the shape rendered before (a Service
    whose Route names a revision of another Configuration, automount true) is rejected."""
    objects = [o for _, objs in render(config_from_mapping({"model": "m"})) for o in objs]
    route = next(o for o in objects if o["kind"] == "Route")
    primary = next(
        o
        for o in objects
        if o["kind"] == "Configuration" and o["metadata"]["name"] == "surefoot-llm"
    )
    fallback = next(o for o in objects if o["metadata"]["name"] == "surefoot-llm-fallback")
    old = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": route["metadata"],
        "spec": {"template": primary["spec"]["template"], "traffic": route["spec"]["traffic"]},
    }
    old["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    report = knative_check.run(
        "serving-check", [knative_check.write_objects(tmp_path / "old.yaml", [old, fallback])]
    )
    found = "\n".join(knative_check.problems(report))
    assert "does not belong to Service" in found
    assert "automountServiceAccountToken" in found
