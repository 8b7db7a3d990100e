"""``surefoot checkpoint``: list, show, snapshot, verify, restore, prune and back up checkpoints.

Thin: parse flags, build ``CheckpointSettings`` from the environment and flags, call the
``checkpoint_store`` package, print a table or ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from checkpoint_store import (
    CheckpointError,
    CheckpointNotFound,
    CheckpointSettings,
    CheckpointStore,
    CorruptCheckpoint,
    FilesystemBackend,
    InvalidManifest,
    InvalidSnapshot,
    InvalidStore,
    Manifest,
    load_legacy_pt,
)
from surefoot.cli import EXIT_FAILED, EXIT_OK, CliError


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        help="checkpoint directory (default: SUREFOOT_CHECKPOINT_DIR, else "
        "~/.cache/surefoot/checkpoints)",
    )
    common.add_argument("--json", action="store_true", help="print JSON")

    group = subparsers.add_parser(
        "checkpoint",
        help="list, verify, restore, prune and back up checkpoints",
        description="Checkpoints of replica serving state.",
    )
    sub = group.add_subparsers(dest="checkpoint_command", metavar="SUBCOMMAND")
    group.set_defaults(func=_no_subcommand(group))

    p = sub.add_parser("list", parents=[common], help="checkpoints, newest first")
    p.add_argument("--model-id")
    p.add_argument("--revision")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", parents=[common], help="one checkpoint's manifest")
    p.add_argument("id", metavar="ID", help="checkpoint id, or 'latest'")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser(
        "snapshot",
        parents=[common],
        help="ask a replica to snapshot (--replica URL), or snapshot local files",
    )
    p.add_argument("--replica", metavar="URL", help="replica base URL: POST URL/admin/snapshot")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the replica")
    p.add_argument("--model-id")
    p.add_argument("--revision")
    p.add_argument("--parent", metavar="ID")
    p.add_argument("--tensors", metavar="FILE", help=".safetensors, or legacy .pt (weights only)")
    p.add_argument("--state", metavar="FILE", help="JSON object")
    p.add_argument("--blob", action="append", default=[], metavar="NAME=FILE")
    p.add_argument("--model-file", action="append", default=[], metavar="NAME=FILE")
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser(
        "verify", parents=[common], help="check every blob (all checkpoints without ID)"
    )
    p.add_argument("id", metavar="ID", nargs="?", help="checkpoint id, or 'latest'")
    p.add_argument("--no-sha256", action="store_true", help="check xxh3 only")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "restore", parents=[common], help="verify a checkpoint and write it out (--to DIR)"
    )
    p.add_argument("id", metavar="ID", help="checkpoint id, or 'latest'")
    p.add_argument("--to", metavar="DIR", help="write the checkpoint's files here")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("prune", parents=[common], help="apply retention, remove leftovers")
    p.add_argument("--keep", type=int, help="checkpoints kept per model (default: settings)")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("backup", parents=[common], help="copy the latest valid checkpoint to DEST")
    p.add_argument("dest", metavar="DEST", help="destination checkpoint directory")
    p.add_argument("--model-id")
    p.set_defaults(func=cmd_backup)


def _no_subcommand(group: argparse.ArgumentParser) -> Any:
    def run(args: argparse.Namespace) -> int:
        group.print_help()
        raise CliError("name a subcommand: list, show, snapshot, verify, restore, prune, backup")

    return run


# -- helpers ------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> CheckpointSettings:
    try:
        return CheckpointSettings.from_env(os.environ, directory=args.dir or None)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _store(args: argparse.Namespace, *, create: bool = False) -> CheckpointStore:
    settings = _settings(args)
    try:
        backend = FilesystemBackend(settings.directory, create=create)
    except InvalidStore as exc:
        raise CliError(f"{exc} (set --dir or SUREFOOT_CHECKPOINT_DIR)") from None
    return CheckpointStore(backend, keep=settings.keep, sha256=settings.sha256)


def _resolve(store: CheckpointStore, ref: str) -> Manifest:
    if ref == "latest":
        m = store.latest(verify=False)
        if m is None:
            raise CliError(f"no checkpoints in {store.backend.describe()}")
        return m
    try:
        return store.manifest(ref)
    except CheckpointNotFound:
        raise CliError(
            f"no checkpoint {ref!r} in {store.backend.describe()} (see `surefoot checkpoint list`)"
        ) from None
    except InvalidManifest as exc:
        raise CliError(str(exc), code=EXIT_FAILED) from None


def _emit(args: argparse.Namespace, payload: Any, lines: list[str]) -> None:
    if args.json:
        json.dump(payload, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        for line in lines:
            print(line)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _pairs(values: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise CliError(f"{flag} {item!r}: expected NAME=FILE")
        out[name] = path
    return out


def _summary(m: Manifest) -> dict[str, Any]:
    return {
        "id": m.id,
        "created": m.to_dict()["created"],
        "model_id": m.model_id,
        "revision": m.revision,
        "parent": m.parent,
        "size": m.size,
        "blobs": len(m.blobs),
    }


def _failure(exc: CheckpointError) -> CliError:
    return CliError(str(exc), code=EXIT_FAILED)


# -- commands -------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    store = _store(args)
    rows: list[dict[str, Any]] = []
    for cid in store.ids():
        try:
            m = store.manifest(cid)
        except InvalidManifest as exc:
            rows.append({"id": cid, "invalid": "; ".join(exc.problems)})
            continue
        except CheckpointNotFound:
            continue
        if args.model_id and m.model_id != args.model_id:
            continue
        if args.revision and m.revision != args.revision:
            continue
        rows.append(_summary(m))
    lines = [f"{'ID':38} {'CREATED':27} {'MODEL':20} {'REVISION':16} SIZE"]
    for row in rows:
        if "invalid" in row:
            lines.append(f"{row['id']:38} INVALID MANIFEST: {row['invalid']}")
        else:
            lines.append(
                f"{row['id']:38} {row['created']:27} {row['model_id'][:20]:20} "
                f"{row['revision'][:16]:16} {_size(row['size'])}"
            )
    if not rows:
        lines = [f"no checkpoints in {store.backend.describe()}"]
    _emit(args, rows, lines)
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    store = _store(args)
    m = _resolve(store, args.id)
    body = m.to_dict()
    lines = [
        f"id:        {m.id}",
        f"created:   {body['created']}",
        f"model:     {m.model_id}",
        f"revision:  {m.revision}",
        f"parent:    {m.parent or '-'}",
        "producer:  " + ", ".join(f"{k}={v}" for k, v in sorted(m.producer.items())),
        f"size:      {_size(m.size)}",
        "blobs:",
    ]
    for e in m.blobs:
        lines.append(f"  {e.kind:10} {e.name:32} {e.size:>14} xxh3_128={e.xxh3_128}")
    _emit(args, body, lines)
    return EXIT_OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    if args.replica:
        local = [args.model_id, args.revision, args.tensors, args.state, args.blob, args.model_file]
        if any(local):
            raise CliError("--replica asks the replica; do not combine it with local inputs")
        return _snapshot_replica(args)
    return _snapshot_local(args)


def _snapshot_replica(args: argparse.Namespace) -> int:
    import httpx

    base = args.replica.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CliError(f"--replica {args.replica!r}: expected an http(s):// URL")
    if args.timeout <= 0:
        raise CliError("--timeout must be positive")
    url = f"{base}/admin/snapshot"
    try:
        response = httpx.post(url, timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {url}: {exc}", code=EXIT_FAILED) from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        detail = body.get("error", body) if isinstance(body, dict) else response.text[:200]
        raise CliError(f"{url} answered {response.status_code}: {detail}", code=EXIT_FAILED)
    if not isinstance(body, dict) or "id" not in body:
        raise CliError(
            f"{url} answered without a checkpoint id: {response.text[:200]!r}", code=EXIT_FAILED
        )
    seconds = body.get("seconds")
    line = f"checkpoint {body['id']}" + (
        f" in {seconds:.3f} s" if isinstance(seconds, int | float) else ""
    )
    _emit(args, body, [line])
    return EXIT_OK


def _tensor_file(name: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Tensors from a safetensors file or a legacy ``.pt`` file (and the latter's plain
    values, as state)."""
    path = Path(name)
    if not path.is_file():
        raise CliError(f"--tensors {path}: no such file")
    try:
        if path.suffix == ".pt":
            tensors, legacy_state = load_legacy_pt(path)
            if legacy_state:
                return tensors, {"legacy_import": str(path), "values": legacy_state}
            return tensors, None
        import safetensors.torch

        return safetensors.torch.load_file(str(path)), None
    except InvalidSnapshot as exc:
        raise CliError(f"--tensors: {'; '.join(exc.problems)}") from None
    except Exception as exc:  # the safetensors library's own error types
        raise CliError(f"--tensors {path}: not a safetensors file ({exc})") from None


def _state_file(name: str) -> dict[str, Any]:
    try:
        loaded = json.loads(Path(name).read_text())
    except OSError as exc:
        raise CliError(f"--state {name}: {exc.strerror}") from None
    except ValueError as exc:
        raise CliError(f"--state {name}: not JSON ({exc})") from None
    if not isinstance(loaded, dict):
        raise CliError(f"--state {name}: must hold a JSON object")
    return loaded


def _blob_files(pairs: list[str]) -> dict[str, bytes]:
    blobs: dict[str, bytes] = {}
    for name, path_str in _pairs(pairs, "--blob").items():
        try:
            blobs[name] = Path(path_str).read_bytes()
        except OSError as exc:
            raise CliError(f"--blob {name}={path_str}: {exc.strerror}") from None
    return blobs


def _snapshot_local(args: argparse.Namespace) -> int:
    if not args.model_id or not args.revision:
        raise CliError("give --replica URL, or --model-id and --revision with local inputs")
    tensors: dict[str, Any] | None = None
    state: dict[str, Any] | None = None
    if args.tensors:
        tensors, state = _tensor_file(args.tensors)
    if args.state:
        state = {**(state or {}), **_state_file(args.state)}
    blobs = _blob_files(args.blob)
    model_files = _pairs(args.model_file, "--model-file")
    store = _store(args, create=True)
    try:
        m = store.snapshot(
            model_id=args.model_id,
            revision=args.revision,
            tensors=tensors,
            state=state,
            blobs=blobs or None,
            model_files=model_files or None,
            parent=args.parent,
        )
    except InvalidSnapshot as exc:
        raise CliError("; ".join(exc.problems)) from None
    except CheckpointError as exc:
        raise _failure(exc) from None
    _emit(args, _summary(m), [f"checkpoint {m.id} ({_size(m.size)}) in {store.backend.describe()}"])
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    store = _store(args)
    sha = not args.no_sha256
    try:
        if args.id:
            reports = [store.verify(_resolve(store, args.id), sha256=sha)]
        else:
            reports = store.verify_all(sha256=sha)
    except CheckpointError as exc:
        raise _failure(exc) from None
    lines: list[str] = []
    for r in reports:
        if r.ok:
            lines.append(f"{r.checkpoint_id}: ok ({_size(r.bytes_checked)} in {r.seconds:.3f} s)")
        else:
            lines.append(f"{r.checkpoint_id}: BAD")
            lines.extend(f"  {problem}" for problem in r.describe())
    if not reports:
        lines.append(f"no checkpoints in {store.backend.describe()}")
    _emit(args, [r.to_dict() for r in reports], lines)
    return EXIT_OK if all(r.ok for r in reports) else EXIT_FAILED


def cmd_restore(args: argparse.Namespace) -> int:
    store = _store(args)
    m = _resolve(store, args.id)
    try:
        if args.to:
            target = Path(args.to)
            if target.exists() and not target.is_dir():
                raise CliError(f"--to {target}: not a directory")
            files = store.restore_to(m, target)
            payload: dict[str, Any] = {
                "id": m.id,
                "to": str(target),
                "files": [str(f) for f in files],
            }
            lines = [f"restored {m.id} into {target}: {len(files)} files, every byte verified"]
        else:
            r = store.restore(m)
            payload = {
                "id": m.id,
                "seconds": r.seconds,
                "bytes_verified": r.bytes_verified,
                "tensors": {
                    name: {"dtype": str(t.dtype), "shape": list(t.shape)}
                    for name, t in r.tensors.items()
                },
                "state_keys": sorted(r.state) if isinstance(r.state, dict) else None,
                "blobs": {name: len(data) for name, data in r.blobs.items()},
                "model_files": {name: str(p) for name, p in r.model_files.items()},
            }
            lines = [
                f"checkpoint {m.id} verified ({_size(r.bytes_verified)} in {r.seconds:.3f} s); "
                "would restore:",
                f"  tensors:     {len(r.tensors)}",
                f"  state keys:  {', '.join(payload['state_keys'] or []) or '-'}",
                f"  blobs:       {', '.join(r.blobs) or '-'}",
                f"  model files: {', '.join(f'{k}={v}' for k, v in r.model_files.items()) or '-'}",
                "  (add --to DIR to write the files out)",
            ]
    except CorruptCheckpoint as exc:
        raise _failure(exc) from None
    except CheckpointError as exc:
        raise _failure(exc) from None
    _emit(args, payload, lines)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace) -> int:
    if args.keep is not None and args.keep < 1:
        raise CliError("--keep must be at least 1")
    store = _store(args)
    try:
        report = store.prune(keep=args.keep)
    except CheckpointError as exc:
        raise _failure(exc) from None
    lines = [
        f"removed {len(report.removed)} checkpoints, kept {len(report.kept)}; "
        f"{len(report.torn_removed)} torn, {report.temp_removed} temp files, "
        f"{report.objects_removed} unreferenced model files cleaned"
    ]
    lines += [f"  removed {cid}" for cid in report.removed]
    if not report.cleaned:
        lines.append("cleanup of temp files and torn checkpoints deferred: a writer is busy")
    _emit(args, report.to_dict(), lines)
    return EXIT_OK


def cmd_backup(args: argparse.Namespace) -> int:
    store = _store(args)
    settings = _settings(args)
    dest_path = Path(args.dest).expanduser()
    try:
        dest = CheckpointStore(FilesystemBackend(dest_path), keep=settings.keep)
    except InvalidStore as exc:
        raise CliError(str(exc)) from None
    if dest.backend.describe() == store.backend.describe():
        raise CliError("DEST is the checkpoint directory itself; name another directory")
    try:
        m = store.backup(dest, model_id=args.model_id)
    except CheckpointNotFound:
        raise CliError(
            f"no valid checkpoint to back up in {store.backend.describe()}", code=EXIT_FAILED
        ) from None
    except CheckpointError as exc:
        raise _failure(exc) from None
    _emit(
        args,
        {"id": m.id, "dest": dest.backend.describe()},
        [f"backed up {m.id} to {dest.backend.describe()}"],
    )
    return EXIT_OK
