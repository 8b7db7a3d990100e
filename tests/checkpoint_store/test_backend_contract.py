"""The contract every storage backend meets; runs once per backend kit (see conftest)."""

from __future__ import annotations

import pytest

from checkpoint_store import Backend, BlobNotFound, StorageError, StorageFull, StoreBusy
from tests.checkpoint_store.conftest import Kit


def test_put_get_size_list_children(backend: Backend) -> None:
    assert backend.put("a/b/one", [b"hello ", memoryview(b"world")]) == 11
    backend.put("a/two", [b""])
    assert backend.get("a/b/one") == b"hello world"
    assert backend.get("a/two") == b""
    assert backend.size("a/b/one") == 11
    assert backend.size("a/missing") is None
    assert backend.list("a/") == ["a/b/one", "a/two"]
    assert backend.list("zzz/") == []
    assert backend.children("a/") == ["b", "two"]
    assert backend.children("nothing/") == []


def test_put_replaces_and_reads_sequentially(backend: Backend) -> None:
    backend.put("k", [b"old contents"])
    backend.put("k", [b"new"])
    reader = backend.open("k")
    buf = memoryview(bytearray(2))
    got = b""
    while n := reader.readinto(buf) or 0:
        got += bytes(buf[:n])
    reader.close()
    assert got == b"new"


def test_missing_objects(backend: Backend) -> None:
    with pytest.raises(BlobNotFound):
        backend.open("nope")
    with pytest.raises(BlobNotFound):
        backend.get("nope")
    backend.delete("nope")  # absent is fine
    assert backend.delete_prefix("nope/") == 0


def test_delete_and_delete_prefix(backend: Backend) -> None:
    for key in ("p/1", "p/q/2", "pq/3"):
        backend.put(key, [b"x"])
    backend.delete("p/1")
    assert backend.size("p/1") is None
    assert backend.delete_prefix("p/") == 1
    assert backend.list("p/") == []
    assert backend.list("pq/") == ["pq/3"]


def test_commit_is_create_only(backend: Backend) -> None:
    backend.commit("c/manifest", b"first")
    with pytest.raises(StorageError):
        backend.commit("c/manifest", b"second")
    assert backend.get("c/manifest") == b"first"


def test_failed_put_stores_nothing(backend: Backend) -> None:
    backend.put("k", [b"previous"])

    def chunks():
        yield b"partial"
        raise RuntimeError("producer died")

    with pytest.raises(RuntimeError):
        backend.put("k", chunks())
    with pytest.raises(RuntimeError):
        backend.put("fresh", chunks())
    assert backend.get("k") == b"previous"
    assert backend.size("fresh") is None
    assert backend.list("") == ["k"]


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", ".hidden", "a//b", "a/.x", ""])
def test_keys_outside_the_store_are_refused(backend: Backend, key: str) -> None:
    with pytest.raises(StorageError):
        backend.put(key, [b"x"])
    with pytest.raises(StorageError):
        backend.size(key)


def test_disk_full_is_typed_and_leaves_nothing(kit: Kit, backend: Backend) -> None:
    backend.put("keep", [b"safe"])
    full = kit.make_full(backend, budget=10)
    with pytest.raises(StorageFull) as err:
        full.put("big", [b"x" * 8, b"y" * 8])
    assert err.value.temporary
    assert "full" in str(err.value)
    assert backend.size("big") is None
    assert backend.get("keep") == b"safe"
    assert backend.clean_temp() == 0  # the failed put removed its own temp file


def test_shared_locks_coexist_exclusive_waits(backend: Backend) -> None:
    with (
        backend.lock(exclusive=False, timeout=0),
        backend.lock(exclusive=False, timeout=0),
        pytest.raises(StoreBusy),
        backend.lock(exclusive=True, timeout=0),
    ):
        pass
    with (
        backend.lock(exclusive=True, timeout=0),
        pytest.raises(StoreBusy),
        backend.lock(exclusive=False, timeout=0),
    ):
        pass
    with backend.lock(exclusive=True, timeout=0):
        pass
