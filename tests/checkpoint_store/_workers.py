"""Child-process bodies for the multi-process tests (run under the ``fork`` start method)."""

from __future__ import annotations

import os
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier

import numpy as np

from checkpoint_store import CheckpointStore, FilesystemBackend


def payload(writer: int, seq: int, size: int) -> dict[str, np.ndarray]:
    """Deterministic tensors for (writer, seq), so a reader can check who wrote what."""
    rng = np.random.default_rng(writer * 1_000_003 + seq)
    return {
        "big": rng.integers(0, 2**31, size=max(1, size // 4), dtype=np.int32),
        "tag": np.array([writer, seq], dtype=np.int64),
    }


def snapshot_n(
    root: str,
    writer: int,
    count: int,
    keep: int | None,
    size: int,
    barrier: Barrier,
    conn: Connection,
) -> None:
    """Take ``count`` snapshots as fast as possible after all writers reach the barrier."""
    store = CheckpointStore(FilesystemBackend(root), keep=keep)
    barrier.wait(timeout=30)
    ids = []
    for seq in range(count):
        m = store.snapshot(
            model_id="m",
            revision="r",
            tensors=payload(writer, seq, size),
            state={"writer": writer, "seq": seq},
            blobs={"pid": str(os.getpid()).encode()},
        )
        ids.append(m.id)
    conn.send(ids)
    conn.close()


def snapshot_forever(root: str, writer: int, size: int, model: str, conn: Connection) -> None:
    """Snapshot in a loop (with retention) until killed; report each committed id."""
    store = CheckpointStore(FilesystemBackend(root), keep=3)
    conn.send("ready")
    seq = 0
    while True:
        m = store.snapshot(
            model_id="m",
            revision="r",
            tensors=payload(writer, seq, size),
            state={"writer": writer, "seq": seq},
            model_files={"model": model},
        )
        conn.send(m.id)
        seq += 1
