"""Each function's func.yaml (Knative Functions) matches the routing table and the host."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from functions import ROUTES, FunctionSettings

FUNC_DIR = Path(__file__).resolve().parents[2] / "functions" / "func"
TOP_LEVEL = {"specVersion", "name", "runtime", "registry", "image", "namespace", "created",
             "invoke", "build", "run", "deploy", "domain"}


@pytest.mark.parametrize("name", list(ROUTES))
def test_func_yaml_matches_the_routes(name: str) -> None:
    doc = yaml.safe_load((FUNC_DIR / name / "func.yaml").read_text())
    assert set(doc) <= TOP_LEVEL
    assert {"specVersion", "created"} <= set(doc)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["name"])
    assert doc["invoke"] == "cloudevent"
    assert doc["runtime"] == "python"
    envs = {e["name"]: e["value"] for e in doc["run"]["envs"]}
    assert envs["SUREFOOT_ONLY_FUNCTION"] == name
    FunctionSettings(only_function=envs["SUREFOOT_ONLY_FUNCTION"])  # a valid setting
    subs = doc["deploy"]["subscriptions"]
    assert [s["filters"]["type"] for s in subs] == list(ROUTES[name])
    assert doc["deploy"]["healthEndpoints"] == {"liveness": "/healthz", "readiness": "/healthz"}


def test_every_function_has_a_func_yaml() -> None:
    assert sorted(p.parent.name for p in FUNC_DIR.glob("*/func.yaml")) == sorted(ROUTES)
