"""A warm standby per revision on a cluster: ``standby`` (and ``fallback_standby``) spare pods
in the revision's min-scale, checked against max-scale and the GPU budget, a bad value exiting
2 with one line naming the setting, and the shapes still accepted by Knative's own code."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from functions import FunctionSettings
from knative.manifests import (
    RenderConfigError,
    all_objects,
    config_from_mapping,
    render,
    write,
)
from surefoot.cli import main
from tests import knative_check

MIN_SCALE = "autoscaling.knative.dev/min-scale"
MAX_SCALE = "autoscaling.knative.dev/max-scale"


def _objects(**kw: Any) -> list[dict[str, Any]]:
    return all_objects(render(config_from_mapping({"model": "gemma-3-270m", **kw})))


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (hit,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return hit


def _template_annotations(objects: list[dict[str, Any]], name: str) -> dict[str, str]:
    ann: dict[str, str] = _find(objects, "Configuration", name)["spec"]["template"]["metadata"][
        "annotations"
    ]
    return ann


def test_min_scale_is_replicas_plus_standby() -> None:
    objects = _objects(min_scale=2, max_scale=5, standby=2, fallback_standby=1,
                       fallback_max_scale=4)
    primary = _template_annotations(objects, "surefoot-llm")
    assert (primary[MIN_SCALE], primary[MAX_SCALE], primary["surefoot.dev/standby"]) == (
        "4", "5", "2")
    fallback = _template_annotations(objects, "surefoot-llm-fallback")
    assert (fallback[MIN_SCALE], fallback["surefoot.dev/standby"]) == ("2", "1")


def test_no_standby_keeps_the_replica_count() -> None:
    objects = _objects(standby=0)
    assert _template_annotations(objects, "surefoot-llm")[MIN_SCALE] == "3"
    assert _template_annotations(objects, "surefoot-llm-fallback")[MIN_SCALE] == "1"


def test_kubernetes_deployments_run_the_spares_too() -> None:
    objects = _objects(shape="kubernetes", standby=2, fallback_standby=1, fallback_max_scale=4)
    primary = _find(objects, "Deployment", "surefoot-llm")
    assert primary["spec"]["replicas"] == 5
    assert primary["metadata"]["annotations"]["surefoot.dev/standby"] == "2"
    assert _find(objects, "Deployment", "surefoot-llm-fallback")["spec"]["replicas"] == 2


def test_functions_know_the_fallbacks_spares() -> None:
    ksvc = _find(_objects(fallback_standby=1, fallback_max_scale=4), "Service",
                 "surefoot-functions")
    env = {e["name"]: e["value"] for e in ksvc["spec"]["template"]["spec"]["containers"][0]["env"]
           if "value" in e}
    assert env["SUREFOOT_FALLBACK_STANDBY"] == "1"
    s = FunctionSettings.from_env(env)
    assert (s.fallback_min_scale, s.fallback_standby, s.fallback_max_scale) == (1, 1, 4)


@pytest.mark.parametrize(
    ("values", "fields"),
    [
        ({"standby": -1}, ["standby"]),
        ({"standby": "one"}, ["standby"]),
        ({"fallback_standby": -1}, ["fallback_standby"]),
        ({"gpu_budget": -4}, ["gpu_budget"]),
        ({"standby": 4}, ["standby", "max_scale"]),  # 3 + 4 > 6
        ({"fallback_standby": 3}, ["fallback_standby", "fallback_max_scale"]),
        ({"fallback_standby": 1}, ["fallback_max_scale", "fallback_boost"]),  # 1+1+2 > 3
        ({"gpu_budget": 3}, ["gpu_budget", "standby"]),  # (3 + 1) x 1 GPU
        ({"gpu_budget": 4, "fallback_gpus": 1}, ["gpu_budget", "fallback_standby"]),  # 4 + 1
    ],
)
def test_standby_that_does_not_fit_names_the_setting(
    values: dict[str, Any], fields: list[str]
) -> None:
    with pytest.raises(RenderConfigError) as e:
        config_from_mapping({"model": "m", **values})
    for f in fields:
        assert f in str(e.value)


def test_standby_within_the_gpu_budget_renders() -> None:
    c = config_from_mapping({"model": "m", "gpu_budget": 4})
    assert (c.standby, c.gpu_budget) == (1, 4)
    c = config_from_mapping({"model": "m", "gpu_budget": 2, "gpus": 0, "standby": 3})
    assert c.standby == 3  # CPU replicas hold no GPU


def test_bad_standby_exits_2_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "surefoot.yaml"
    cfg.write_text("model: m\ngpus: 2\ngpu_budget: 6\n")  # (3 + 1) x 2 = 8 GPUs
    code = main(["render", "-f", str(cfg), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "gpu_budget" in err
    assert "standby" in err
    assert not (tmp_path / "out").exists()
    cfg.write_text("model: m\ngpus: 2\ngpu_budget: 6\nstandby: 0\n")  # 3 x 2 = 6: fits
    assert main(["render", "-f", str(cfg), "--out", str(tmp_path / "out")]) == 0


def test_standby_shapes_are_accepted_by_knative(tmp_path: Path) -> None:
    """Rendered with spares, and the fallback's Configuration as the reroute leaves it (its
    min-scale boosted, the spare kept): Knative admits and routes both."""
    config = config_from_mapping({"model": "m", "standby": 2, "fallback_standby": 1,
                                  "fallback_max_scale": 0, "gpu_budget": 5})
    write(render(config), tmp_path / "rendered")
    knative_check.assert_accepted([tmp_path / "rendered"])
    objects = all_objects(render(config))
    boosted = copy.deepcopy(_find(objects, "Configuration", "surefoot-llm-fallback"))
    low = 1 + 1 + FunctionSettings().fallback_boost
    boosted["spec"]["template"]["metadata"]["annotations"][MIN_SCALE] = str(low)
    others = [o for o in objects if o["metadata"]["name"] != "surefoot-llm-fallback"
              or o["kind"] != "Configuration"]
    (tmp_path / "boosted").mkdir()
    knative_check.write_objects(tmp_path / "boosted" / "all.yaml", [*others, boosted])
    reports = knative_check.assert_accepted([tmp_path / "boosted"])
    routes = [f for f in reports["serving-check"]["findings"] if f["stage"] == "route"]
    assert any(f["name"] == "surefoot-llm" for f in routes)
