"""Settings from the environment, and edge cases of snapshot/restore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from checkpoint_store import (
    Backend,
    CheckpointSettings,
    CheckpointStore,
    FilesystemBackend,
    InvalidStore,
    default_directory,
    open_store,
)
from envreader import EnvError


def test_settings_defaults_and_env(tmp_path: Path) -> None:
    s = CheckpointSettings.from_env({"HOME": str(tmp_path)})
    assert s.directory == tmp_path / ".cache" / "surefoot" / "checkpoints"
    assert s.keep == 3
    assert s.sha256 is False
    assert default_directory({"XDG_CACHE_HOME": "/c"}) == Path("/c/surefoot/checkpoints")
    s = CheckpointSettings.from_env(
        {
            "SUREFOOT_CHECKPOINT_DIR": str(tmp_path / "x"),
            "SUREFOOT_CHECKPOINT_KEEP": "5",
            "SUREFOOT_CHECKPOINT_SHA256": "true",
        }
    )
    assert s == CheckpointSettings(tmp_path / "x", 5, True)
    store = open_store(s)
    assert store.keep == 5
    assert store.sha256
    assert (tmp_path / "x").is_dir()


def test_settings_report_every_bad_variable() -> None:
    with pytest.raises(ValueError, match="SUREFOOT_CHECKPOINT_") as err:
        CheckpointSettings.from_env(
            {"SUREFOOT_CHECKPOINT_KEEP": "0", "SUREFOOT_CHECKPOINT_SHA256": "maybe"}
        )
    assert "SUREFOOT_CHECKPOINT_KEEP" in str(err.value)
    assert "SUREFOOT_CHECKPOINT_SHA256" in str(err.value)


def test_settings_bools_mean_what_they_mean_everywhere(tmp_path: Path) -> None:
    for word in ("1", "true", "YES", "on"):
        env = {"HOME": str(tmp_path), "SUREFOOT_CHECKPOINT_SHA256": word}
        assert CheckpointSettings.from_env(env).sha256 is True
    for word in ("0", "false", "no", "Off", ""):
        env = {"HOME": str(tmp_path), "SUREFOOT_CHECKPOINT_SHA256": word}
        assert CheckpointSettings.from_env(env).sha256 is False
    with pytest.raises(EnvError) as err:
        CheckpointSettings.from_env({"SUREFOOT_CHECKPOINT_SHA256": "enabled"})
    assert set(err.value.errors) == {"SUREFOOT_CHECKPOINT_SHA256"}


def test_settings_overrides_win_over_the_environment(tmp_path: Path) -> None:
    env = {"SUREFOOT_CHECKPOINT_DIR": str(tmp_path / "env"), "SUREFOOT_CHECKPOINT_KEEP": "4"}
    s = CheckpointSettings.from_env(env, directory=str(tmp_path / "flag"), keep=None)
    assert s == CheckpointSettings(tmp_path / "flag", 4, False)
    with pytest.raises(EnvError) as err:
        CheckpointSettings.from_env({"SUREFOOT_CHECKPOINT_KEEP": "many"})
    assert set(err.value.errors) == {"SUREFOOT_CHECKPOINT_KEEP"}


def test_store_location_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidStore, match="does not exist"):
        FilesystemBackend(tmp_path / "missing", create=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidStore, match="not a directory"):
        FilesystemBackend(tmp_path / "file")
    with pytest.raises(ValueError, match="keep must be at least 1"):
        CheckpointStore(FilesystemBackend(tmp_path / "s"), keep=0)


def test_empty_values_roundtrip(backend: Backend, tmp_path: Path) -> None:
    store = CheckpointStore(backend, keep=None)
    m = store.snapshot(model_id="m", revision="r", tensors={}, state={}, blobs={"e": b""})
    r = store.restore(m.id)
    assert r.tensors == {}
    assert r.state == {}
    assert r.blobs == {"e": b""}
    bare = store.snapshot(model_id="m", revision="r")
    r = store.restore(bare.id)
    assert r.tensors == {}
    assert r.state is None
    assert r.blobs == {}
    assert r.model_files == {}


def test_big_endian_and_noncontiguous_numpy(backend: Backend) -> None:
    store = CheckpointStore(backend, keep=None)
    a = np.arange(12, dtype=">i4").reshape(3, 4)
    b = np.arange(20, dtype=np.float64).reshape(4, 5)[:, ::2]
    m = store.snapshot(model_id="m", revision="r", tensors={"a": a, "b": b})
    r = store.restore(m.id)
    np.testing.assert_array_equal(r.tensors["a"], a)
    np.testing.assert_array_equal(r.tensors["b"], b)


def test_snapshot_while_another_writer_holds_the_lock(backend: Backend) -> None:
    store = CheckpointStore(backend, keep=1)
    first = store.snapshot(model_id="m", revision="r", state={"n": 1})
    torn = "20200101T000000.000000Z-0123456789ab"
    with backend.lock(exclusive=False, timeout=0):  # another writer is mid-snapshot...
        backend.put(f"checkpoints/{torn}/tensors.safetensors", [b"half"])  # ...this one
        second = store.snapshot(model_id="m", revision="r", state={"n": 2})
        # retention ran beside the writer; cleaning (which could hit its files) waited
        assert store.ids() == [second.id]
        assert torn in backend.children("checkpoints/")
        report = store.prune(timeout=0)
        assert not report.cleaned
        assert report.torn_removed == ()
    assert first.id not in backend.children("checkpoints/")
    third = store.snapshot(model_id="m", revision="r", state={"n": 3})
    assert store.ids() == [third.id]
    assert backend.children("checkpoints/") == [third.id]


def test_restore_verifies_model_files_by_default(tmp_path: Path) -> None:
    store = CheckpointStore(FilesystemBackend(tmp_path / "s"), keep=None)
    model = tmp_path / "model.bin"
    model.write_bytes(b"abc" * 1000)
    m = store.snapshot(model_id="m", revision="r", model_files={"model": model})
    obj = store.restore(m.id).model_files["model"]
    data = bytearray(obj.read_bytes())
    data[10] ^= 0xFF
    obj.write_bytes(bytes(data))
    r = store.restore(m.id, verify_model_files=False)
    assert r.model_files["model"] == obj
    from checkpoint_store import CorruptCheckpoint

    with pytest.raises(CorruptCheckpoint, match="model_file model"):
        store.restore(m.id)
