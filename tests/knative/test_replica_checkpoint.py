"""A replica's checkpoints: snapshot on request and on SIGTERM, restore at the next start."""

from __future__ import annotations

import signal

import httpx
import pytest

from checkpoint_store import CheckpointStore, FilesystemBackend
from knative.serving import ServeSettings, create_app, runtime_of
from knative.serving import attach_checkpoints as attach
from tests.knative.test_replica_process import _start


@pytest.fixture
def store(tmp_path) -> CheckpointStore:
    return CheckpointStore(FilesystemBackend(tmp_path / "ckpt"), keep=3)


def test_admin_snapshot_writes_a_verified_checkpoint_with_engine_state(store, gemma):
    settings = ServeSettings(n_ctx=256, max_tokens=32, revision="r1", replica="a")
    app = create_app(settings, gemma)
    attach(app, runtime_of(app), store)
    c = app.test_client()
    c.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
    r = c.post("/admin/snapshot")
    assert r.status_code == 201, r.json
    m = store.manifest(r.json["id"])
    assert (m.model_id, m.revision) == ("gemma-3-270m", "r1")
    assert store.verify(m.id).ok
    restored = store.restore(m.id)
    assert set(restored.blobs) >= {"llama_state", "input_ids", "last_logits"}
    assert "model.gguf" in restored.model_files
    assert restored.state["reason"] == "request"


def test_admin_snapshot_checks_the_bearer_token(store, gemma):
    app = create_app(ServeSettings(admin_token="s3cret"), gemma)
    attach(app, runtime_of(app), store)
    c = app.test_client()
    assert c.post("/admin/snapshot").status_code == 401
    assert c.post("/admin/snapshot", headers={"Authorization": "Bearer nope"}).status_code == 403
    ok = c.post("/admin/snapshot", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 201


def test_replica_snapshots_on_sigterm_and_restores_at_next_start(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    proc, url = _start("--checkpoint-dir", ckpt, "--revision", "r7", "--replica", "p-1")
    httpx.post(f"{url}/v1/completions", json={"prompt": "Warm up", "max_tokens": 2})
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    store = CheckpointStore(FilesystemBackend(ckpt))
    latest = store.latest("gemma-3-270m", "r7")
    assert latest is not None
    assert store.restore(latest.id).state["reason"] == "sigterm"

    proc2, url2 = _start("--checkpoint-dir", ckpt, "--revision", "r7", "--replica", "p-2")
    try:
        status = httpx.get(f"{url2}/admin/status").json()
        assert "checkpoint_restored" in status["phases"]
        assert "state_restored" in status["phases"]
        metrics = httpx.get(f"{url2}/metrics").text
        line = next(x for x in metrics.splitlines()
                    if x.startswith("surefoot_checkpoint_restore_seconds "))
        assert float(line.split()[1]) > 0
        r = httpx.post(f"{url2}/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200
    finally:
        proc2.terminate()
        out2, _ = proc2.communicate(timeout=60)
    assert b"restored checkpoint" in out2
