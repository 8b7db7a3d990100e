"""snapshot_checkpoint: which replicas are asked, what each answer means, and one run against a
real replica app (llama.cpp model, checkpoint store) through the HTTP client seam."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import events as ev
from functions import (
    ACTED,
    DUPLICATE,
    NOOP,
    Context,
    PermanentFunctionError,
    TemporaryFunctionError,
    snapshot_checkpoint,
)
from tests.functions._helpers import deleted, ping, requested
from tests.kube_fake import FakeKubeServer


class Replicas:
    """Answers POST /admin/snapshot per replica IP, and records who was asked."""

    def __init__(self, kube: FakeKubeServer) -> None:
        self.by_ip = {p["status"]["podIP"]: p["metadata"]["name"]
                      for p in kube.list("pods") if p["status"].get("podIP")}
        self.asked: list[str] = []
        self.answers: dict[str, httpx.Response] = {}
        self.headers: list[httpx.Headers] = []
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST"
        assert request.url.path == "/admin/snapshot"
        assert request.url.port == 8012
        pod = self.by_ip[request.url.host]
        with self._lock:
            self.asked.append(pod)
            self.headers.append(request.headers)
        if pod in self.answers:
            return self.answers[pod]
        rev = "surefoot-fallback" if pod.startswith("fallback") else "surefoot-primary"
        return httpx.Response(201, json={"id": f"ck-{pod}", "seconds": 0.25,
                                         "model_id": "gemma-3-270m", "revision": rev})


@pytest.fixture
def replicas(cluster: FakeKubeServer) -> Replicas:
    return Replicas(cluster)


@pytest.fixture
def sctx(make_ctx: Callable[..., Context], replicas: Replicas) -> Context:
    return make_ctx(transport=httpx.MockTransport(replicas))


def saved(out_events: tuple[ev.Event, ...]) -> list[tuple[str | None, str]]:
    out = []
    for e in out_events:
        p = ev.payload_of(e)
        assert isinstance(p, ev.CheckpointSaved)
        out.append((p.pod, p.checkpoint_id))
    return out


def test_timer_snapshots_one_replica_per_revision(sctx: Context, replicas: Replicas) -> None:
    out = snapshot_checkpoint.handle(ping(), sctx)
    assert out.status == ACTED
    assert sorted(replicas.asked) == ["fallback-1", "primary-1"]
    assert sorted(saved(out.events)) == [("fallback-1", "ck-fallback-1"),
                                        ("primary-1", "ck-primary-1")]
    first = ev.payload_of(out.events[0])
    assert isinstance(first, ev.CheckpointSaved)
    assert first.seconds == 0.25
    assert first.reason == "timer"


def test_all_scope_asks_every_ready_replica(make_ctx: Callable[..., Context],
                                            replicas: Replicas, cluster: FakeKubeServer) -> None:
    cluster.set_pod_ready("primary-3", False)
    ctx = make_ctx(transport=httpx.MockTransport(replicas), snapshot_replicas="all")
    out = snapshot_checkpoint.handle(requested("surefoot-primary"), ctx)
    assert sorted(replicas.asked) == ["primary-1", "primary-2"]
    assert len(out.events) == 2
    assert len(out.extra) == 1


def test_requested_pod_and_terminating_pod(sctx: Context, replicas: Replicas,
                                           cluster: FakeKubeServer) -> None:
    cluster.set_pod_ready("primary-2", False)  # terminating pods stop being ready
    out = snapshot_checkpoint.handle(deleted("primary-2"), sctx)
    assert out.status == ACTED
    assert replicas.asked == ["primary-2"]
    p = ev.payload_of(out.reply) if out.reply else None
    assert isinstance(p, ev.CheckpointSaved)
    assert p.reason == "terminating"
    out2 = snapshot_checkpoint.handle(requested(None, pod="primary-3"), sctx)
    assert out2.status == ACTED
    assert replicas.asked[-1] == "primary-3"


def test_a_pod_already_gone_is_a_noop(sctx: Context, replicas: Replicas) -> None:
    assert snapshot_checkpoint.handle(deleted("primary-1", terminating=False), sctx).status == NOOP
    assert snapshot_checkpoint.handle(requested(None, pod="nope"), sctx).status == NOOP
    assert replicas.asked == []


def test_ping_for_another_service_is_ignored(sctx: Context, replicas: Replicas) -> None:
    out = snapshot_checkpoint.handle(ping({"service": "other"}), sctx)
    assert out.status == NOOP
    assert replicas.asked == []


def test_bearer_token_is_sent(make_ctx: Callable[..., Context], replicas: Replicas) -> None:
    ctx = make_ctx(transport=httpx.MockTransport(replicas), admin_token="s3cret")
    snapshot_checkpoint.handle(requested("surefoot-primary"), ctx)
    assert replicas.headers[0]["authorization"] == "Bearer s3cret"


def test_loading_replica_is_skipped(sctx: Context, replicas: Replicas) -> None:
    replicas.answers["primary-1"] = httpx.Response(409, json={"error": "model not loaded yet"})
    out = snapshot_checkpoint.handle(requested("surefoot-primary"), sctx)
    assert out.status == NOOP
    assert "loading" in out.reason


def test_partial_failure_still_reports_what_was_saved(sctx: Context, replicas: Replicas) -> None:
    replicas.answers["fallback-1"] = httpx.Response(500, json={"error": "disk"})
    out = snapshot_checkpoint.handle(ping(), sctx)
    assert out.status == ACTED
    assert saved(out.events) == [("primary-1", "ck-primary-1")]
    assert "1 temporary" in out.reason


def test_all_failing_temporarily_asks_for_redelivery(sctx: Context, replicas: Replicas) -> None:
    replicas.answers["primary-1"] = httpx.Response(503)
    event = requested("surefoot-primary")
    with pytest.raises(TemporaryFunctionError):
        snapshot_checkpoint.handle(event, sctx)
    del replicas.answers["primary-1"]
    assert snapshot_checkpoint.handle(event, sctx).status == ACTED  # the redelivery acts
    assert snapshot_checkpoint.handle(event, sctx).status == DUPLICATE
    assert replicas.asked == ["primary-1", "primary-1"]


def test_wrong_token_is_permanent(sctx: Context, replicas: Replicas) -> None:
    replicas.answers["primary-1"] = httpx.Response(403, json={"error": "wrong token"})
    with pytest.raises(PermanentFunctionError, match="403"):
        snapshot_checkpoint.handle(requested("surefoot-primary"), sctx)


def test_connection_refused_is_temporary(make_ctx: Callable[..., Context],
                                        cluster: FakeKubeServer) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    ctx = make_ctx(transport=httpx.MockTransport(refuse))
    with pytest.raises(TemporaryFunctionError, match="ConnectError"):
        snapshot_checkpoint.handle(requested("surefoot-primary"), ctx)


def test_api_error_listing_replicas_is_temporary(sctx: Context, cluster: FakeKubeServer) -> None:
    cluster.fail_next("/api/v1/namespaces/default/pods", 500)
    with pytest.raises(TemporaryFunctionError):
        snapshot_checkpoint.handle(requested("surefoot-primary"), sctx)


def test_malformed_201_is_temporary(sctx: Context, replicas: Replicas) -> None:
    replicas.answers["primary-1"] = httpx.Response(201, text="ok")
    with pytest.raises(TemporaryFunctionError, match="JSON"):
        snapshot_checkpoint.handle(requested("surefoot-primary"), sctx)


# --- against a real replica ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma() -> object:
    from knative.serving import LlamaCppBackend

    backend = LlamaCppBackend(n_ctx=256, n_threads=2, queue_timeout=30)
    backend.load()
    return backend


def test_snapshot_through_a_real_replica_app(make_ctx: Callable[..., Context], gemma: object,
                                             tmp_path: Path, cluster: FakeKubeServer) -> None:
    from checkpoint_store import CheckpointStore, FilesystemBackend
    from knative.serving import ServeSettings, create_app, runtime_of
    from knative.serving import attach_checkpoints as attach

    store = CheckpointStore(FilesystemBackend(tmp_path / "ckpt"), keep=3)
    app = create_app(ServeSettings(n_ctx=256, max_tokens=8, revision="surefoot-primary",
                                   replica="primary-1", admin_token="tok"), gemma)  # type: ignore[arg-type]
    attach(app, runtime_of(app), store)
    ctx = make_ctx(transport=httpx.WSGITransport(app=app), admin_token="tok")
    out = snapshot_checkpoint.handle(requested("surefoot-primary"), ctx)
    assert out.status == ACTED
    assert out.reply is not None
    p = ev.payload_of(out.reply)
    assert isinstance(p, ev.CheckpointSaved)
    assert store.verify(p.checkpoint_id).ok
    assert p.revision == "surefoot-primary"
    assert p.seconds is not None
    assert p.seconds > 0
