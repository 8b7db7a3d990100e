"""The gateway's admin API cannot be misused: a key naming no known revision, node or replica is
a 404 listing the known ones (unless created on purpose), and no admin endpoint answers without
the token."""

from __future__ import annotations

import pytest

from knative.breakers import BreakerRegistry
from knative.gateway import Endpoint, Route, RoutingTable
from tests.knative.stub_upstream import StubUpstream
from tests.knative.test_gateway import TOKEN, make, registry, stubs

__all__ = ["registry", "stubs"]  # fixtures shared with test_gateway

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def placed(stubs: dict[str, StubUpstream]) -> RoutingTable:
    return RoutingTable(
        (Route("sf-primary", 100, (Endpoint(stubs["a"].url, "sf-primary-a1", "node-1"),
                                    Endpoint(stubs["b"].url, "sf-primary-b2", "node-2"))),),
        Route("sf-fallback", 0, (Endpoint(stubs["fb"].url, "sf-fallback-c3", "node-3"),)),
    )


@pytest.mark.parametrize("key", ["sf-primary", "revision:sf-primray", "node:node-9",
                                 "replica:sf-primary-zz"])
def test_unknown_key_is_404_with_the_known_names(
        stubs: dict[str, StubUpstream], registry: BreakerRegistry, key: str) -> None:
    _, client, _ = make(placed(stubs), registry)
    r = client.post(f"/admin/breakers/{key}", json={"action": "force_open"}, headers=AUTH)
    assert r.status_code == 404, r.json
    err = r.json["error"]
    assert err["known"] == {"revision": ["sf-fallback", "sf-primary"],
                            "node": ["node-1", "node-2", "node-3"],
                            "replica": ["sf-fallback-c3", "sf-primary-a1", "sf-primary-b2"]}
    assert "names no known revision, node or replica" in err["message"]
    assert "sf-primary, " in err["message"] or "sf-fallback, sf-primary" in err["message"]
    assert registry.statuses()[0] == []  # nothing was created
    if ":" not in key:
        assert f"revision:{key}" in err["message"]


@pytest.mark.parametrize("key", ["revision:sf-primary", "node:node-2", "replica:sf-fallback-c3"])
def test_known_keys_are_acted_on(stubs: dict[str, StubUpstream], registry: BreakerRegistry,
                                 key: str) -> None:
    _, client, _ = make(placed(stubs), registry)
    r = client.post(f"/admin/breakers/{key}", json={"action": "force_open"}, headers=AUTH)
    assert r.status_code == 200, r.json
    assert r.json["status"]["state"] == "forced_open"


def test_create_on_purpose_and_then_known(stubs: dict[str, StubUpstream],
                                          registry: BreakerRegistry) -> None:
    _, client, _ = make(placed(stubs), registry)
    r = client.post("/admin/breakers/node:node-9", json={"action": "force_open",
                                                         "create": True}, headers=AUTH)
    assert r.status_code == 200, r.json
    assert r.json["changed"]
    # a breaker in the store is known from then on (e.g. to reset it)
    r = client.post("/admin/breakers/node:node-9", json={"action": "reset"}, headers=AUTH)
    assert r.status_code == 200
    listed = client.get("/admin/breakers", headers=AUTH).json
    assert "node-9" in listed["known"]["node"]
    assert "sf-primary" in listed["known"]["revision"]
    r = client.post("/admin/breakers/node:node-8", json={"action": "reset", "create": "yes"},
                    headers=AUTH)
    assert r.status_code == 400
    assert "create: must be true or false" in r.json["error"]["message"]


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/admin/breakers"),
    ("POST", "/admin/breakers/revision:sf-primary"),
    ("POST", "/admin/breakers/node:unknown"),
])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic x"}])
def test_every_admin_endpoint_wants_the_token(
        stubs: dict[str, StubUpstream], registry: BreakerRegistry, method: str, path: str,
        headers: dict[str, str]) -> None:
    _, client, _ = make(placed(stubs), registry)
    r = client.open(path, method=method, json={"action": "force_open"}, headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert registry.statuses()[0] == []
