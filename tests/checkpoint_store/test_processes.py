"""Real processes: concurrent writers into one store, and kill -9 at random moments."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from checkpoint_store import CheckpointStore, FilesystemBackend
from tests.checkpoint_store import _workers

CTX = multiprocessing.get_context("fork")


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name != ".lock"]


@pytest.mark.parametrize("keep", [None, 2])
def test_two_processes_snapshot_at_once(tmp_path: Path, keep: int | None) -> None:
    root = tmp_path / "store"
    FilesystemBackend(root)
    count = 4
    barrier = CTX.Barrier(2)
    pipes = [CTX.Pipe(duplex=False) for _ in range(2)]
    procs = [
        CTX.Process(
            target=_workers.snapshot_n,
            args=(str(root), w, count, keep, 256 * 1024, barrier, pipes[w][1]),
        )
        for w in range(2)
    ]
    for p in procs:
        p.start()
    reported = []
    for w, p in enumerate(procs):
        assert pipes[w][0].poll(60), "writer did not finish"
        reported.append(pipes[w][0].recv())
        p.join(10)
        assert p.exitcode == 0
    all_ids = [i for ids in reported for i in ids]
    assert len(set(all_ids)) == 2 * count
    store = CheckpointStore(FilesystemBackend(root), keep=keep)
    if keep is None:
        assert sorted(store.ids()) == sorted(all_ids)
    else:  # the last writer's retention ran after the last commit
        assert len(store.ids()) == keep
        store.prune()
    for cid in store.ids():
        assert store.verify(cid).ok
        r = store.restore(cid)
        writer, seq = r.state["writer"], r.state["seq"]
        assert cid == reported[writer][seq]
        want = _workers.payload(writer, seq, 256 * 1024)
        np.testing.assert_array_equal(r.tensors["big"], want["big"])
        np.testing.assert_array_equal(r.tensors["tag"], want["tag"])
    assert _leftovers(root) == []


def run_kill_trials(root: Path, trials: int, seed: int, size: int = 2 * 1024 * 1024) -> dict:
    """Kill a snapshotting child with SIGKILL at a random moment, ``trials`` times; after each
    kill the newest valid checkpoint must be at least as new as the last one the child reported
    committed (so at most the in-flight snapshot is lost) and must restore intact."""
    rng = random.Random(seed)
    model = root.parent / "model.bin"
    model.write_bytes(os.urandom(64 * 1024))
    FilesystemBackend(root)
    last_committed = ""
    outcomes = {"trials": 0, "lost_in_flight": 0, "torn_seen": 0, "temp_seen": 0}
    for trial in range(trials):
        reader, writer = CTX.Pipe(duplex=False)
        proc = CTX.Process(
            target=_workers.snapshot_forever, args=(str(root), trial, size, str(model), writer)
        )
        proc.start()
        writer.close()
        assert reader.poll(30)
        assert reader.recv() == "ready"
        time.sleep(rng.uniform(0.0, 0.12))  # the random moment: the child is mid-snapshot
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        assert proc.exitcode == -signal.SIGKILL
        while reader.poll(0):
            try:
                last_committed = max(last_committed, reader.recv())
            except EOFError:
                break
        reader.close()
        outcomes["temp_seen"] += len(_leftovers(root))
        store = CheckpointStore(FilesystemBackend(root), keep=3)
        outcomes["torn_seen"] += len(
            [n for n in store.backend.children("checkpoints/") if n not in store.ids()]
        )
        restored = store.restore_latest("m")
        if last_committed:
            assert restored is not None, f"trial {trial}: no valid checkpoint"
            assert restored.id >= last_committed, f"trial {trial}: lost a committed snapshot"
            outcomes["lost_in_flight"] += restored.id == last_committed
            w, s = restored.state["writer"], restored.state["seq"]
            np.testing.assert_array_equal(
                restored.tensors["big"], _workers.payload(w, s, size)["big"]
            )
            assert restored.model_files["model"].read_bytes() == model.read_bytes()
        outcomes["trials"] += 1
    store = CheckpointStore(FilesystemBackend(root), keep=3)
    store.prune()
    assert _leftovers(root) == []
    assert all(r.ok for r in store.verify_all())
    assert len(store.ids()) <= 3
    return outcomes


def test_kill9_during_snapshots_few(tmp_path: Path) -> None:
    out = run_kill_trials(tmp_path / "store", trials=4, seed=1)
    assert out["trials"] == 4


@pytest.mark.slow
def test_kill9_during_snapshots_many(tmp_path: Path) -> None:
    out = run_kill_trials(tmp_path / "store", trials=60, seed=20240601)
    print("kill -9 trials:", out)
    assert out["trials"] == 60
