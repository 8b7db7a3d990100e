"""Retention and cleaning: which checkpoints stay, and removal of what nothing needs.

Retention keeps the newest N checkpoints per model id plus the newest valid one (so a run of
corrupt snapshots never leaves a model with nothing to restore), and drops a manifest that does
not parse once a sound checkpoint is newer. Cleaning removes stale temp files, torn checkpoints
(blobs without a manifest) and model files no checkpoint names; the store runs it only under
its exclusive lock, when no writer is in flight. A checkpoint is removed manifest first, so a
half-removed one is torn, never half-valid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from checkpoint_store._backend import Backend
from checkpoint_store._errors import CheckpointError, CheckpointNotFound, InvalidManifest
from checkpoint_store._manifest import (
    CHECKPOINTS_PREFIX,
    KIND_MODEL_FILE,
    OBJECTS_PREFIX,
    Manifest,
    checkpoint_prefix,
    manifest_key,
    valid_id,
)
from checkpoint_store._reading import committed_ids, read_manifest, structure_problems

logger = logging.getLogger(__name__)


def retain(
    backend: Backend, keep: int, is_valid: Callable[[Manifest], bool]
) -> tuple[list[str], list[str]]:
    """Remove all but the newest ``keep`` checkpoints of each model (and its newest valid
    one); (removed ids, kept ids)."""
    removed: list[str] = []
    kept: list[str] = []
    groups, invalid = _by_model(backend)
    for ms in groups.values():
        protect = _newest_valid(ms, is_valid) if len(ms) > keep else None
        for i, m in enumerate(ms):
            if i < keep or m.id == protect:
                kept.append(m.id)
            else:
                delete_checkpoint(backend, m.id)
                removed.append(m.id)
    # A manifest that does not parse is useless; drop it once a sound checkpoint is newer.
    sound = sorted(kept, reverse=True)
    for cid in invalid:
        newer = [s for s in sound if s > cid]
        if any(_is_sound(backend, s) for s in newer[:3]):
            delete_checkpoint(backend, cid)
            removed.append(cid)
        else:
            kept.append(cid)
    return removed, kept


def _by_model(backend: Backend) -> tuple[dict[str, list[Manifest]], list[str]]:
    """Committed checkpoints by model id, newest first, and the ids whose manifests are bad."""
    invalid: list[str] = []
    groups: dict[str, list[Manifest]] = {}
    for cid in committed_ids(backend):
        try:
            m = read_manifest(backend, cid)
        except InvalidManifest:
            invalid.append(cid)
            continue
        except CheckpointNotFound:
            continue  # removed meanwhile by another pruner
        groups.setdefault(m.model_id, []).append(m)
    return groups, invalid


def _newest_valid(group: list[Manifest], is_valid: Callable[[Manifest], bool]) -> str | None:
    for m in group:
        if is_valid(m):
            return m.id
    return None


def _is_sound(backend: Backend, cid: str) -> bool:
    try:
        return not structure_problems(backend, read_manifest(backend, cid))
    except (CheckpointNotFound, InvalidManifest):
        return False


def clean(backend: Backend) -> tuple[list[str], int, list[str]]:
    """Under the exclusive lock: remove temp files, torn checkpoints and unreferenced model
    files; (torn ids, temp files removed, model file keys removed)."""
    temp_removed = backend.clean_temp()
    torn: list[str] = []
    for name in backend.children(CHECKPOINTS_PREFIX):
        if valid_id(name) and backend.size(manifest_key(name)) is None:
            backend.delete_prefix(checkpoint_prefix(name))
            torn.append(name)
    referenced: set[str] = set()
    for cid in committed_ids(backend):
        try:
            m = read_manifest(backend, cid)
        except InvalidManifest:
            continue
        referenced.update(m.key_of(e) for e in m.entries(KIND_MODEL_FILE))
    objects_removed: list[str] = []
    for key in backend.list(OBJECTS_PREFIX):
        if key not in referenced:
            backend.delete(key)
            objects_removed.append(key)
    return torn, temp_removed, objects_removed


def delete_checkpoint(backend: Backend, cid: str) -> None:
    """Remove a committed checkpoint, manifest first (a half-deleted checkpoint is torn)."""
    backend.delete(manifest_key(cid))
    backend.delete_prefix(checkpoint_prefix(cid))


def discard(backend: Backend, cid: str) -> None:
    """Remove what a failed write left of ``cid``; a failure to do so is only logged."""
    try:
        delete_checkpoint(backend, cid)
    except CheckpointError as exc:
        logger.warning("could not remove the partial checkpoint %s: %s", cid, exc)
