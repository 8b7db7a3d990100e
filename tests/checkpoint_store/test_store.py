"""Snapshot, restore, verify, retention, backup and bad input, once per backend kit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

from checkpoint_store import (
    Backend,
    CheckpointNotFound,
    CheckpointStore,
    CorruptCheckpoint,
    FilesystemBackend,
    InvalidManifest,
    InvalidSnapshot,
    Manifest,
    StorageFull,
    manifest_from_json,
    manifest_to_json,
)
from tests.checkpoint_store.conftest import Kit


def tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((64, 32), dtype=np.float32),
        "b": rng.integers(0, 100, size=7).astype(np.int64),
        "h": rng.standard_normal(5).astype(np.float16),
        "flag": np.array(True),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def snap(store: CheckpointStore, seed: int, **kw) -> Manifest:
    return store.snapshot(
        model_id=kw.pop("model_id", "m"),
        revision=kw.pop("revision", "r1"),
        tensors=kw.pop("tensors", tensors(seed)),
        state=kw.pop("state", {"step": seed}),
        blobs=kw.pop("blobs", {"llama_state": bytes([seed % 256]) * 100}),
        **kw,
    )


def key(m: Manifest, kind: str) -> str:
    return m.key_of(m.entries(kind)[0])


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name, arr in want.items():
        np.testing.assert_array_equal(np.asarray(got[name]), arr)
        assert np.asarray(got[name]).dtype == arr.dtype


def test_roundtrip_numpy(store: CheckpointStore, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(range(256)) * 10)
    m = snap(store, 1, model_files={"model.gguf": model}, producer={"llama_cpp": "0.3"})
    assert m.model_id == "m"
    assert m.revision == "r1"
    assert m.parent is None
    assert m.producer["llama_cpp"] == "0.3"
    assert "python" in m.producer
    kinds = sorted(e.kind for e in m.blobs)
    assert kinds == ["blob", "model_file", "state", "tensors"]
    r = store.restore(m.id, model_dir=tmp_path / "models")
    assert_same(r.tensors, tensors(1))
    assert r.state == {"step": 1}
    assert r.blobs == {"llama_state": b"\x01" * 100}
    assert r.model_files["model.gguf"].read_bytes() == model.read_bytes()
    assert r.seconds >= 0
    assert r.bytes_verified == m.size
    # restored arrays are writable, and writing them does not touch the stored checkpoint
    r.tensors["w"][0, 0] = 123.0
    assert store.verify(m.id).ok
    assert_same(store.restore(m, model_dir=tmp_path / "models").tensors, tensors(1))


def test_roundtrip_torch_including_bfloat16(store: CheckpointStore) -> None:
    t = {
        "bf": torch.arange(12, dtype=torch.bfloat16).reshape(3, 4),
        "f": torch.randn(4, 5),
        "nc": torch.randn(6, 4).t(),  # non-contiguous
        "i8": torch.tensor([-1, 2, 3], dtype=torch.int8),
        "scalar": torch.tensor(3.5),
    }
    m = store.snapshot(model_id="m", revision="r", tensors=t)
    r = store.restore(m.id)
    assert set(r.tensors) == set(t)
    for name, want in t.items():
        assert isinstance(r.tensors[name], torch.Tensor)
        assert r.tensors[name].dtype == want.dtype
        assert torch.equal(r.tensors[name], want)
    with pytest.raises(CorruptCheckpoint, match="numpy"):
        store.restore(m.id, framework="numpy")
    numpy_only = store.snapshot(model_id="m", revision="r", tensors={"x": np.ones(3)})
    as_torch = store.restore(numpy_only.id, framework="torch").tensors["x"]
    assert isinstance(as_torch, torch.Tensor)
    assert as_torch.tolist() == [1.0, 1.0, 1.0]


def test_tensor_file_is_standard_safetensors(
    kit: Kit, store: CheckpointStore, tmp_path: Path
) -> None:
    m = snap(store, 2)
    data = kit.read(store.backend, key(m, "tensors"))
    assert_same(safetensors.numpy.load(data), tensors(2))
    # and files written by the safetensors library restore through our reader
    lib = safetensors.numpy.save(tensors(3), metadata={"format": "np"})
    kit.write(store.backend, key(m, "tensors"), lib)
    with pytest.raises(CorruptCheckpoint):
        store.restore(m.id)  # checksum no longer matches: refused before parsing


def test_model_files_are_stored_once(kit: Kit, store: CheckpointStore, tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights" * 1000)
    m1 = snap(store, 1, model_files={"model.bin": model})
    before = store.backend.list("objects/")
    puts: list[str] = []
    original_put = store.backend.put

    def counting_put(k, chunks):
        puts.append(k)
        return original_put(k, chunks)

    store.backend.put = counting_put  # type: ignore[method-assign]
    m2 = snap(store, 2, model_files={"model.bin": model, "same.bin": model})
    assert not any(k.startswith("objects/") for k in puts)
    assert store.backend.list("objects/") == before
    assert len(before) == 1
    assert key(m1, "model_file") == key(m2, "model_file")


def test_latest_is_newest_valid(store: CheckpointStore) -> None:
    assert store.latest() is None
    assert store.restore_latest() is None
    a = snap(store, 1, model_id="a")
    b = snap(store, 2, model_id="b", revision="r2")
    assert store.latest().id == b.id
    assert store.latest("a").id == a.id
    assert store.latest("b", "r1") is None
    assert store.latest("b", "r2").id == b.id
    assert [m.id for m in store.list()] == [b.id, a.id]
    assert store.restore_latest("a").id == a.id


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("kind", ["tensors", "state", "blob", "model_file"])
def test_damaged_blob_detected_and_previous_restored(
    kit: Kit, store: CheckpointStore, tmp_path: Path, damage: str, kind: str, caplog
) -> None:
    model1 = tmp_path / "m1.bin"
    model1.write_bytes(b"one" * 100)
    model2 = tmp_path / "m2.bin"
    model2.write_bytes(b"two" * 100)
    good = snap(store, 1, model_files={"model": model1})
    bad = snap(store, 2, model_files={"model": model2})
    k = key(bad, kind)
    if damage == "flip":
        kit.flip(store.backend, k, offset=len(kit.read(store.backend, k)) // 2)
    elif damage == "truncate":
        kit.truncate(store.backend, k)
    else:
        store.backend.delete(k)
    report = store.verify(bad.id)
    assert not report.ok
    assert [(p.kind, p.problem) for p in report.problems] == [
        (kind, {"flip": "checksum", "truncate": "size", "delete": "missing"}[damage])
    ]
    assert store.verify(good.id).ok
    with pytest.raises(CorruptCheckpoint) as err:
        store.restore(bad.id, model_dir=tmp_path / "models")
    assert bad.id in str(err.value)
    assert kind in str(err.value)
    caplog.set_level(logging.WARNING)
    assert store.latest().id == good.id
    assert any("skipping checkpoint " + bad.id in r.message for r in caplog.records)
    r = store.restore_latest(model_dir=tmp_path / "models")
    assert r is not None
    assert r.id == good.id
    assert_same(r.tensors, tensors(1))
    assert r.model_files["model"].read_bytes() == b"one" * 100


def test_verify_reports_every_bad_blob(kit: Kit, store: CheckpointStore) -> None:
    m = snap(store, 1, blobs={"x": b"x" * 10, "y": b"y" * 10})
    kit.flip(store.backend, key(m, "tensors"))
    kit.truncate(store.backend, m.key_of(m.entries("blob")[1]))
    report = store.verify(m.id)
    assert sorted((p.kind, p.name, p.problem) for p in report.problems) == [
        ("blob", "y", "size"),
        ("tensors", "tensors.safetensors", "checksum"),
    ]
    assert report.to_dict()["ok"] is False
    assert [r.checkpoint_id for r in store.verify_all()] == [m.id]


def test_sha256_recorded_and_checked(kit: Kit, backend: Backend) -> None:
    store = CheckpointStore(backend, keep=None, sha256=True)
    m = snap(store, 1)
    assert all(e.sha256 and len(e.sha256) == 64 for e in m.blobs)
    assert store.verify(m.id, sha256=True).ok
    r = store.restore(m.id, sha256=True)
    assert r.state == {"step": 1}


def test_disk_full_clear_error_previous_intact(kit: Kit, backend: Backend) -> None:
    store = CheckpointStore(backend, keep=3)
    good = snap(store, 1)
    full_store = CheckpointStore(kit.make_full(backend, budget=3000), keep=3)
    with pytest.raises(StorageFull) as err:
        snap(full_store, 2)
    assert err.value.temporary
    assert "full" in str(err.value)
    assert [m.id for m in store.list()] == [good.id]
    assert store.backend.children("checkpoints/") == [good.id]  # the partial one was removed
    r = store.restore_latest()
    assert r is not None
    assert r.id == good.id
    assert r.state == {"step": 1}
    assert store.prune().temp_removed == 0


def manifest_dict(kit: Kit, store: CheckpointStore, m: Manifest) -> dict:
    return json.loads(kit.read(store.backend, f"checkpoints/{m.id}/manifest.json"))


def rewrite_manifest(kit: Kit, store: CheckpointStore, m: Manifest, body: dict) -> None:
    """Store an edited manifest with a correct self-checksum (as an attacker could)."""
    import xxhash

    from checkpoint_store._manifest import _canonical  # the checksum's input

    body.pop("checksum", None)
    body["checksum"] = xxhash.xxh3_128_hexdigest(_canonical(body))
    kit.write(store.backend, f"checkpoints/{m.id}/manifest.json", json.dumps(body).encode())


def test_manifest_not_json_rejected(kit: Kit, store: CheckpointStore, caplog) -> None:
    good = snap(store, 1)
    bad = snap(store, 2)
    kit.write(store.backend, f"checkpoints/{bad.id}/manifest.json", b"{not json")
    with pytest.raises(InvalidManifest, match="not JSON"):
        store.manifest(bad.id)
    report = store.verify(bad.id)
    assert not report.ok
    assert "not JSON" in report.manifest_problems[0]
    caplog.set_level(logging.WARNING)
    assert store.latest().id == good.id
    assert store.restore_latest().id == good.id
    assert [m.id for m in store.list()] == [good.id]
    assert store.ids() == [bad.id, good.id]


def test_manifest_edited_without_checksum_rejected(kit: Kit, store: CheckpointStore) -> None:
    m = snap(store, 1)
    body = manifest_dict(kit, store, m)
    body["model_id"] = "other"
    kit.write(store.backend, f"checkpoints/{m.id}/manifest.json", json.dumps(body).encode())
    with pytest.raises(InvalidManifest, match="checksum"):
        store.manifest(m.id)


def test_manifest_naming_missing_blob_rejected(kit: Kit, store: CheckpointStore) -> None:
    good = snap(store, 1)
    bad = snap(store, 2)
    body = manifest_dict(kit, store, bad)
    body["blobs"].append({"kind": "blob", "name": "ghost", "size": 5, "xxh3_128": "0" * 32})
    rewrite_manifest(kit, store, bad, body)
    report = store.verify(bad.id)
    assert [(p.name, p.problem) for p in report.problems] == [("ghost", "missing")]
    with pytest.raises(CorruptCheckpoint, match="ghost"):
        store.restore(bad.id)
    assert store.latest().id == good.id
    assert store.restore_latest().id == good.id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "../../../etc/passwd"),
        ("name", "/etc/passwd"),
        ("name", "sub/dir"),
        ("name", ".."),
        ("xxh3_128", "../../x"),
    ],
)
def test_manifest_pointing_outside_store_rejected(
    kit: Kit, store: CheckpointStore, field: str, value: str
) -> None:
    good = snap(store, 1)
    bad = snap(store, 2)
    body = manifest_dict(kit, store, bad)
    blob = next(b for b in body["blobs"] if b["kind"] == "blob")
    blob[field] = value
    rewrite_manifest(kit, store, bad, body)
    with pytest.raises(InvalidManifest) as err:
        store.manifest(bad.id)
    assert "blobs[" in str(err.value)
    assert field in str(err.value)
    with pytest.raises(InvalidManifest):
        store.restore(bad.id)
    assert store.restore_latest().id == good.id


def test_symlink_out_of_store_refused(tmp_path: Path, fs_store: CheckpointStore) -> None:
    good = snap(fs_store, 1)
    bad = snap(fs_store, 2)
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    assert isinstance(fs_store.backend, FilesystemBackend)
    target = fs_store.backend.root / bad.key_of(bad.entries("blob")[0])
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(CorruptCheckpoint):
        fs_store.restore(bad.id)
    assert not fs_store.verify(bad.id).ok
    assert fs_store.restore_latest().id == good.id


def test_manifest_reports_every_bad_field() -> None:
    body = {
        "format": "x",
        "id": "nope",
        "created": "yesterday",
        "model_id": "",
        "revision": 3,
        "parent": "bad",
        "blobs": [{"kind": "weird", "name": "../x", "size": -1, "xxh3_128": "zz"}],
        "checksum": "0",
    }
    with pytest.raises(InvalidManifest) as err:
        manifest_from_json(json.dumps(body).encode())
    text = str(err.value)
    for field in (
        "format",
        "checksum",
        "id",
        "created",
        "model_id",
        "revision",
        "parent",
        "blobs[0].kind",
        "blobs[0].name",
        "blobs[0].size",
        "blobs[0].xxh3_128",
    ):
        assert field in text, field


def test_manifest_json_roundtrip(store: CheckpointStore) -> None:
    m = snap(store, 1, parent=None)
    again = manifest_from_json(manifest_to_json(m), expect_id=m.id)
    assert again == m
    child = snap(store, 2, parent=m.id)
    assert store.manifest(child.id).parent == m.id


def test_bad_snapshot_arguments_listed_together(store: CheckpointStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidSnapshot) as err:
        store.snapshot(
            model_id="",
            revision="r\n",
            tensors={"x": [1, 2, 3], "o": np.array([object()])},
            state={"x": float("nan")},
            blobs={"../b": b"x", "ok": "not bytes"},  # type: ignore[dict-item]
            model_files={"m": tmp_path / "missing.gguf", "a/b": tmp_path},
            parent="not-an-id",
        )
    problems = "\n".join(err.value.problems)
    for needle in (
        "model_id",
        "revision",
        "parent",
        "tensors['x']",
        "tensors['o']",
        "state",
        "'../b'",
        "blobs['ok']",
        "missing.gguf",
        "'a/b'",
    ):
        assert needle in problems, needle
    assert not err.value.temporary
    assert store.ids() == []


def test_unknown_id(store: CheckpointStore) -> None:
    with pytest.raises(CheckpointNotFound):
        store.restore("20990101T000000.000000Z-000000000000")
    with pytest.raises(CheckpointNotFound):
        store.verify("../../etc")
    with pytest.raises(CheckpointNotFound):
        store.manifest("x")


def test_retention_keeps_n_per_model_and_collects_model_files(
    kit: Kit, backend: Backend, tmp_path: Path
) -> None:
    clock = iter(range(1_800_000_000, 1_800_000_100))
    store = CheckpointStore(backend, keep=2, clock=lambda: float(next(clock)))
    files = []
    for i in range(4):
        f = tmp_path / f"model{i}.bin"
        f.write_bytes(bytes([i]) * 50)
        files.append(f)
    made = [snap(store, i, model_files={"model": files[i]}) for i in range(4)]
    other = snap(store, 9, model_id="fallback")
    assert [m.id for m in store.list("m")] == [made[3].id, made[2].id]
    assert store.latest("fallback").id == other.id
    assert len(store.backend.list("objects/")) == 2  # the pruned checkpoints' model files went
    assert store.prune(keep=1).removed == (made[2].id,)


def test_retention_never_drops_the_newest_valid(kit: Kit, backend: Backend) -> None:
    clock = iter(range(1_800_000_000, 1_800_000_100))
    store = CheckpointStore(backend, keep=2, clock=lambda: float(next(clock)))
    good = snap(store, 0)
    writer = CheckpointStore(backend, keep=None, clock=lambda: float(next(clock)))
    bad = [snap(writer, i) for i in (1, 2, 3)]
    for m in bad:
        kit.flip(writer.backend, key(m, "tensors"))
    report = store.prune()
    assert good.id in report.kept
    assert report.removed == (bad[0].id,)
    assert store.restore_latest().id == good.id


def test_stale_temp_files_and_torn_checkpoints_cleaned(fs_store: CheckpointStore) -> None:
    good = snap(fs_store, 1)
    assert isinstance(fs_store.backend, FilesystemBackend)
    root = fs_store.backend.root
    torn = root / "checkpoints" / "20200101T000000.000000Z-0123456789ab"
    torn.mkdir(parents=True)
    (torn / "tensors.safetensors").write_bytes(b"half")
    (torn / ".state.json.tmp.999.abcd").write_bytes(b"x")
    (root / "checkpoints" / good.id / ".manifest.json.tmp.999.ffff").write_bytes(b"{")
    (root / "objects").mkdir(exist_ok=True)
    (root / "objects" / ".deadbeef.tmp.1.2").write_bytes(b"x" * 10)
    assert fs_store.ids() == [good.id]
    report = fs_store.prune()
    assert report.temp_removed == 3
    assert report.torn_removed == (torn.name,)
    assert not torn.exists()
    leftovers = [p for p in root.rglob(".*") if p.name != ".lock"]
    assert leftovers == []
    assert fs_store.restore_latest().id == good.id


def test_backup_copies_latest_valid(kit: Kit, tmp_path: Path) -> None:
    src = CheckpointStore(kit.make("src"), keep=None)
    dst = CheckpointStore(kit.make("dst"), keep=2)
    model = tmp_path / "model.bin"
    model.write_bytes(b"M" * 5000)
    old = snap(src, 1, model_files={"model": model})
    new = snap(src, 2, model_files={"model": model})
    kit.flip(src.backend, key(new, "state"))
    copied = src.backend and src.backup(dst)
    assert copied.id == old.id  # the newest is corrupt: the previous one is backed up
    assert dst.verify(old.id).ok
    r = dst.restore_latest(model_dir=tmp_path / "models")
    assert r is not None
    assert r.id == old.id
    assert r.state == {"step": 1}
    assert src.backup(dst).id == old.id  # already there: nothing copied twice
    newest = snap(src, 3, model_files={"model": model})
    assert src.backup(dst).id == newest.id
    assert [m.id for m in dst.list()] == [newest.id, old.id]
    with pytest.raises(CheckpointNotFound):
        CheckpointStore(kit.make("empty")).backup(dst)


def test_restore_to_directory(store: CheckpointStore, tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"M" * 100)
    m = snap(store, 4, model_files={"model.bin": model})
    out = tmp_path / "out"
    written = store.restore_to(m.id, out)
    names = sorted(str(p.relative_to(out)) for p in written)
    assert names == [
        "blobs/llama_state",
        "manifest.json",
        "model_files/model.bin",
        "state.json",
        "tensors.safetensors",
    ]
    assert_same(safetensors.numpy.load_file(str(out / "tensors.safetensors")), tensors(4))
    assert json.loads((out / "state.json").read_text()) == {"step": 4}


def test_restore_to_refuses_corrupt_blob(kit: Kit, store: CheckpointStore, tmp_path: Path) -> None:
    m = snap(store, 4)
    kit.flip(store.backend, key(m, "tensors"), offset=100)
    with pytest.raises(CorruptCheckpoint):
        store.restore_to(m.id, tmp_path / "out")
    assert not (tmp_path / "out" / "tensors.safetensors").exists()


def test_legacy_pt_import_weights_only(store: CheckpointStore, tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    sd = {"layer.weight": torch.randn(3, 4), "layer.bias": torch.zeros(4), "meta": {"epoch": 7}}
    torch.save(sd, path)
    m = store.import_legacy_pt(path, model_id="m", revision="r")
    r = store.restore(m.id)
    assert torch.equal(r.tensors["layer.weight"], sd["layer.weight"])
    assert r.state["values"] == {"meta.epoch": 7}


class _Evil:
    def __reduce__(self):
        return (Path.write_text, (Path("/tmp/surefoot-pwned-by-pickle"), "pwned"))


def test_legacy_pt_with_code_is_refused(store: CheckpointStore, tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, path)
    marker = Path("/tmp/surefoot-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    with pytest.raises(InvalidSnapshot, match="weights_only"):
        store.import_legacy_pt(path, model_id="m", revision="r")
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(InvalidSnapshot, match="not a readable"):
        store.import_legacy_pt(tmp_path / "junk.pt", model_id="m", revision="r")
    assert store.ids() == []
