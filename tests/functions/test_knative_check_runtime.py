"""The objects as Surefoot leaves them after each runtime change pass Knative's own admission
and routing code: the Route's traffic after a reroute, after the half-open trial, after each
restore step, and the fallback Revision after ``set_scale`` (reroute and restore write it).

The cluster is the fake API server with the rendered manifests applied and each
Configuration's Revision made as Knative's configuration controller makes it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import events as ev
from functions import ACTED, Context, reroute_traffic
from knative.manifests import all_objects, apply_objects, config_from_mapping, render
from tests import knative_check
from tests.conftest import FakeTime
from tests.functions._helpers import closed, opened
from tests.kube_fake import FakeKubeServer
from tests.kube_fake._state import REVISION

SERVICE = "surefoot-llm"
PRIMARY = "surefoot-llm-v1"
FALLBACK = "surefoot-llm-fallback-v1"
REVISION_LABEL = "serving.knative.dev/revision"


def _revision_of(configuration: dict[str, Any]) -> dict[str, Any]:
    """The Revision Knative's configuration controller makes from a Configuration (owned by
    it, labelled with it)."""
    template = configuration["spec"]["template"]
    owner = {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Configuration",
        "name": configuration["metadata"]["name"],
        "uid": configuration["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    meta = template["metadata"]
    labels = {
        **meta.get("labels", {}),
        "serving.knative.dev/configuration": configuration["metadata"]["name"],
    }
    return {
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {
            "name": meta["name"],
            "namespace": "default",
            "labels": labels,
            "annotations": dict(meta.get("annotations", {})),
            "ownerReferences": [owner],
        },
        "spec": template["spec"],
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


@pytest.fixture
def rendered(kube: FakeKubeServer) -> list[dict[str, Any]]:
    objects = all_objects(render(config_from_mapping({"model": "m", "namespace": "default"})))
    apply_objects(kube.api_client(), objects)
    for obj in objects:
        if obj["kind"] == "Configuration":
            live = kube.get("configurations.serving.knative.dev", obj["metadata"]["name"])
            kube.state.put_direct(REVISION, _revision_of(live))
    for i in range(1, 4):
        kube.add_node(f"gpu-{i}")
        kube.add_pod(f"primary-{i}", node=f"gpu-{i}", labels={REVISION_LABEL: PRIMARY})
        kube.add_pod(f"fallback-{i}", node=f"gpu-{i}", labels={REVISION_LABEL: FALLBACK})
    return objects


@pytest.fixture
def knative_ctx(make_ctx: Callable[..., Context]) -> Context:
    # the functions' settings as the rendered functions Service sets them
    return make_ctx(
        service=SERVICE,
        namespace="default",
        primary_revision=PRIMARY,
        fallback_revision=FALLBACK,
        fallback_min_scale=1,
        fallback_max_scale=3,
    )


class Snapshots:
    """The Route and the inference Revisions as they are now, with the rendered objects they
    stand on (config-features, the Configurations), checked by Knative's programs."""

    def __init__(self, kube: FakeKubeServer, rendered: list[dict[str, Any]], tmp: Path) -> None:
        self.kube, self.tmp, self.taken = kube, tmp, 0
        self.base = [
            o
            for o in rendered
            if o["kind"] in ("ConfigMap", "Configuration") and o["metadata"]["name"] != "default"
        ]

    def objects(self) -> list[dict[str, Any]]:
        route = self.kube.get("routes.serving.knative.dev", SERVICE)
        revisions = [self.kube.get("revisions.serving.knative.dev", n) for n in (PRIMARY, FALLBACK)]
        return [*self.base, *(knative_check.as_input(o) for o in (route, *revisions))]

    def check(self, objects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        self.taken += 1
        path = knative_check.write_objects(
            self.tmp / f"state-{self.taken}.yaml", objects or self.objects()
        )
        return knative_check.assert_accepted([path])["serving-check"]


def _split(objects: list[dict[str, Any]]) -> list[int]:
    route = next(o for o in objects if o["kind"] == "Route")
    return [t["percent"] for t in route["spec"]["traffic"]]


def _fallback_scale(objects: list[dict[str, Any]]) -> tuple[str, str]:
    rev = next(o for o in objects if o["kind"] == "Revision" and o["metadata"]["name"] == FALLBACK)
    ann = rev["metadata"]["annotations"]
    return ann["autoscaling.knative.dev/min-scale"], ann["autoscaling.knative.dev/max-scale"]


def test_every_runtime_change_is_accepted(
    kube: FakeKubeServer,
    rendered: list[dict[str, Any]],
    knative_ctx: Context,
    fake_time: FakeTime,
    tmp_path: Path,
) -> None:
    knative_check.program("serving-check")  # skip early when the programs are absent
    snap = Snapshots(kube, rendered, tmp_path)
    snap.check()
    assert _split(snap.objects()) == [100, 0]

    assert reroute_traffic.handle(opened(PRIMARY), knative_ctx).status == ACTED
    after_reroute = snap.objects()
    assert _split(after_reroute) == [0, 100]
    assert _fallback_scale(after_reroute) == ("3", "3")  # the rendered max kept, Revision written
    snap.check(after_reroute)

    trial = ev.build(
        ev.BreakerHalfOpened(scope="revision", name=PRIMARY, reason="wait over"),
        source="/test/breakers",
    )
    assert reroute_traffic.handle(trial, knative_ctx).status == ACTED
    after_trial = snap.objects()
    assert _split(after_trial) == [10, 90]
    snap.check(after_trial)

    steps: list[list[dict[str, Any]]] = []
    fake_time.on_sleep = lambda _: steps.append(snap.objects())
    assert reroute_traffic.handle(closed(PRIMARY), knative_ctx).status == ACTED
    steps.append(snap.objects())
    assert [_split(s) for s in steps] == [[10, 90], [50, 50], [100, 0]]
    assert _fallback_scale(steps[-1]) == ("1", "3")
    for objects in steps:
        snap.check(objects)
