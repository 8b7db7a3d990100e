"""Readiness per model and a standby's adoption, in process: a replica serves completions as
soon as its LLM is in and embeddings when theirs is (a request to a model still loading gets a
503 with Retry-After); a standby serves nothing until ``POST /admin/adopt`` with the internal
token, whose bad inputs are named."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from checkpoint_store import CheckpointSettings, open_store
from knative.serving import (
    LlamaCppBackend,
    Runtime,
    ServeSettings,
    SettingsError,
    attach_checkpoints,
    create_app,
)
from knative.serving import load_models as load_all
from knative.serving._standby import Standby
from tests.conftest import wait_for

TOKEN = "internal-test-token"


class Gated:
    """A backend whose ``load`` waits for the test (the real one is loaded already)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.gate = threading.Event()
        self.loading = threading.Event()

    def load(self) -> None:
        self.loading.set()
        assert self.gate.wait(30)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Vectors:
    """An embedding model that loads when the test says so (torch stays out of this test)."""

    model_id = "vectors"
    dimensions = 3

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.loading = threading.Event()

    def load(self) -> None:
        self.loading.set()
        assert self.gate.wait(30)

    def embed(self, inputs: tuple[str, ...]) -> tuple[list[list[float]], int]:
        return [[1.0, 0.0, 0.0] for _ in inputs], len(inputs)


@pytest.fixture
def settings() -> ServeSettings:
    return ServeSettings(n_ctx=256, max_tokens=16, queue_capacity=2, internal_token=TOKEN)


@pytest.fixture
def loading(settings: ServeSettings, gemma: LlamaCppBackend) -> Iterator[tuple[Flask, Gated,
                                                                              Vectors]]:
    gen, emb = Gated(gemma), Vectors()
    rt = Runtime(settings, gen, emb)  # type: ignore[arg-type]
    app = create_app(settings, runtime=rt)
    loader = threading.Thread(target=load_all, args=(rt,), daemon=True)
    loader.start()
    yield app, gen, emb
    gen.gate.set()
    emb.gate.set()
    loader.join(10)


def complete(app: Flask) -> Any:
    return app.test_client().post("/v1/completions", json={
        "model": "gemma-3-270m", "prompt": "Hi", "max_tokens": 2})


def embed(app: Flask) -> Any:
    return app.test_client().post("/v1/embeddings", json={"model": "vectors", "input": "x"})


def test_each_model_serves_as_soon_as_it_is_loaded(loading: tuple[Flask, Gated, Vectors]) -> None:
    app, gen, emb = loading
    c = app.test_client()
    assert gen.loading.wait(10)
    # the LLM loads: nothing is served, each model says it is loading
    r = complete(app)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert c.get("/readyz").status_code == 503
    assert c.get("/readyz?model=gemma-3-270m").json["reason"] == "loading model"
    r = embed(app)
    assert r.status_code == 503

    # the LLM is in, the embedding model loads: completions are served, embeddings get a 503
    # that sends the router elsewhere
    gen.gate.set()
    assert emb.loading.wait(10)
    r = c.get("/readyz")
    assert r.status_code == 200
    assert r.json["models"] == {"gemma-3-270m": True, "vectors": False}
    assert c.get("/readyz?model=gemma-3-270m").status_code == 200
    assert c.get("/readyz?model=vectors").status_code == 503
    assert complete(app).status_code == 200
    r = embed(app)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.json["error"]["code"] == "model_loading"
    assert "vectors" in r.json["error"]["message"]

    emb.gate.set()
    wait_for(lambda: c.get("/readyz?model=vectors").status_code == 200, 10, "embeddings in")
    assert embed(app).status_code == 200
    assert c.get("/readyz").json["models"] == {"gemma-3-270m": True, "vectors": True}


def test_readyz_names_an_unknown_model(settings: ServeSettings,
                                       gemma: LlamaCppBackend) -> None:
    c = create_app(settings, gemma).test_client()
    r = c.get("/readyz?model=nope")
    assert r.status_code == 404
    assert "model: 'nope' is not served here" in r.json["error"]


def standby_app(settings: ServeSettings, gemma: LlamaCppBackend,
                store: Path | None = None) -> tuple[Flask, Standby, list[str]]:
    from dataclasses import replace

    s = replace(settings, standby=True, replica="a-standby")
    app = create_app(s, gemma)
    rt = app.extensions["surefoot"]
    if store is not None:
        cps = attach_checkpoints(app, rt, open_store(CheckpointSettings(directory=store)))
        rt.drain_hooks.append(lambda: calls.append(f"drained, {len(cps.store.list())} saved"))
    sb = Standby(rt)
    calls: list[str] = []
    sb.hooks.append(lambda: calls.append(rt.settings.node) or {"checkpoint": "c1"})
    app.register_blueprint(sb.blueprint())
    return app, sb, calls


def test_a_standby_serves_only_after_it_adopts_an_identity(
        settings: ServeSettings, gemma: LlamaCppBackend, tmp_path: Path) -> None:
    app, sb, calls = standby_app(settings, gemma, tmp_path)
    c = app.test_client()
    r = c.get("/readyz")
    assert (r.status_code, r.json["reason"], r.json["standby"]) == (503, "standby", True)
    assert complete(app).status_code == 503
    assert c.post("/admin/snapshot").status_code == 409
    sb.rt.drain(0)  # a standby stopped: its empty state is no checkpoint of the revision
    assert calls == ["drained, 0 saved"]
    sb.rt.draining = False
    calls.clear()
    r = c.post("/admin/adopt", json={"replica": "a-1", "node": "node-2"},
               headers={"X-Surefoot-Internal": TOKEN})
    assert r.status_code == 200, r.json
    assert (r.json["replica"], r.json["node"], r.json["checkpoint"]) == ("a-1", "node-2", "c1")
    assert calls == ["node-2"]
    st = c.get("/admin/status").json
    assert (st["replica"], st["node"], st["ready"], st["standby"]) == ("a-1", "node-2", True,
                                                                       False)
    assert complete(app).status_code == 200
    r = c.post("/admin/adopt", json={"replica": "a-2", "node": "node-3"},
               headers={"X-Surefoot-Internal": TOKEN})
    assert r.status_code == 409  # once only
    assert "not a standby" in r.json["error"]


@pytest.mark.parametrize(("headers", "body", "status", "names"), [
    ({}, {"replica": "a-1", "node": "n"}, 401, "X-Surefoot-Internal"),
    ({"X-Surefoot-Internal": "wrong-token"}, {"replica": "a-1", "node": "n"}, 403,
     "X-Surefoot-Internal"),
    ({"X-Surefoot-Internal": TOKEN}, ["a-1"], 400, "body"),
    ({"X-Surefoot-Internal": TOKEN}, {"replica": "", "node": "n"}, 400, "replica"),
    ({"X-Surefoot-Internal": TOKEN}, {"replica": "a-1", "node": 3}, 400, "node"),
])
def test_adopt_refuses_bad_inputs(settings: ServeSettings, gemma: LlamaCppBackend,
                                  headers: dict[str, str], body: Any, status: int,
                                  names: str) -> None:
    app, _, calls = standby_app(settings, gemma)
    r = app.test_client().post("/admin/adopt", json=body, headers=headers)
    assert r.status_code == status
    assert names in r.json["error"]
    assert calls == []
    assert app.test_client().get("/readyz").json["reason"] == "standby"


def test_standby_needs_an_internal_token() -> None:
    with pytest.raises(SettingsError, match="standby: needs SUREFOOT_INTERNAL_TOKEN"):
        ServeSettings.from_env({"SUREFOOT_STANDBY": "1"})
    with pytest.raises(SettingsError, match="SUREFOOT_STANDBY"):
        ServeSettings.from_env({"SUREFOOT_STANDBY": "maybe"})
    s = ServeSettings.from_env({"SUREFOOT_STANDBY": "yes", "SUREFOOT_INTERNAL_TOKEN": TOKEN})
    assert s.standby


def test_serve_standby_without_a_token_is_one_line_and_exit_2() -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SUREFOOT_INTERNAL_TOKEN"}
    proc = subprocess.run([sys.executable, "-m", "surefoot", "serve", "--standby"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "standby: needs SUREFOOT_INTERNAL_TOKEN" in proc.stderr
    assert "Traceback" not in proc.stderr
