"""Durable, verified, fast checkpoints of a replica's serving state.

    store = CheckpointStore(FilesystemBackend(path), keep=3)
    manifest = store.snapshot(model_id="m", revision="r1", tensors={...}, state={...},
                              blobs={"llama_state": b"..."}, model_files={"model.gguf": path})
    restored = store.restore_latest("m")        # newest checkpoint that verifies, or None
    restored.tensors, restored.state, restored.blobs, restored.model_files, restored.seconds

See ``_store`` for the guarantees and ``_backend`` for what a storage backend must provide.
"""

from checkpoint_store._backend import Backend, BlobReader, check_key
from checkpoint_store._errors import (
    BlobNotFound,
    CheckpointError,
    CheckpointNotFound,
    CorruptCheckpoint,
    InvalidManifest,
    InvalidSnapshot,
    InvalidStore,
    PermanentCheckpointError,
    StorageError,
    StorageFull,
    StoreBusy,
    TemporaryCheckpointError,
)
from checkpoint_store._filesystem import FileOps, FilesystemBackend
from checkpoint_store._legacy import load_legacy_pt
from checkpoint_store._manifest import BlobEntry, Manifest
from checkpoint_store._manifest import from_json as manifest_from_json
from checkpoint_store._manifest import to_json as manifest_to_json
from checkpoint_store._settings import CheckpointSettings, default_directory, open_store
from checkpoint_store._store import (
    BlobProblem,
    CheckpointStore,
    PruneReport,
    Restored,
    VerifyReport,
)

__all__ = [
    "Backend",
    "BlobEntry",
    "BlobNotFound",
    "BlobProblem",
    "BlobReader",
    "CheckpointError",
    "CheckpointNotFound",
    "CheckpointSettings",
    "CheckpointStore",
    "CorruptCheckpoint",
    "FileOps",
    "FilesystemBackend",
    "InvalidManifest",
    "InvalidSnapshot",
    "InvalidStore",
    "Manifest",
    "PermanentCheckpointError",
    "PruneReport",
    "Restored",
    "StorageError",
    "StorageFull",
    "StoreBusy",
    "TemporaryCheckpointError",
    "VerifyReport",
    "check_key",
    "default_directory",
    "load_legacy_pt",
    "manifest_from_json",
    "manifest_to_json",
    "open_store",
]
