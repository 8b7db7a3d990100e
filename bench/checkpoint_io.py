"""Checkpoint I/O: the store against raw disk speed and against torch.save / torch.load.

Measured in interleaved rounds (each round runs every contender once, in rotating order), medians
printed with ratios against baselines measured in the same run:

- restore, including verification of every byte, vs a raw sequential read of the same file,
  both with a cold page cache (target >= 0.9x);
- restore vs ``torch.load`` (defaults) of the same tensors, warm cache (target >= 3x);
- durable snapshot vs a raw write + fsync of the same bytes (target >= 0.9x); torch.save for
  reference (no fsync, as the seed did, and with fsync).

Also, warm, the ways to load verified tensors: the store's default (private memory map, hashed as
it is first touched, zero-copy views), reading into a preallocated buffer (what a backend without
memory maps gets), and reading + hashing then ``safetensors.torch.load(bytes)``.

The page cache is dropped per file with posix_fadvise(DONTNEED); residency is checked with
mincore and, if pages stay resident, /proc/sys/vm/drop_caches is tried. The report says which
worked. Run: ``.venv/bin/python bench/checkpoint_io.py [--size-mib 1024] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import mmap
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import xxhash

from checkpoint_store import CheckpointStore, FilesystemBackend

CHUNK = 16 * 1024 * 1024


# -- page cache control -------------------------------------------------------------------------


def resident_fraction(path: Path) -> float:
    """Fraction of the file's pages in the page cache (mincore); -1 if it cannot tell."""
    size = path.stat().st_size
    if size == 0:
        return 0.0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        with open(path, "rb") as f:
            mm = mmap.mmap(
                f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
        anchor = ctypes.c_char.from_buffer(mm)
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            rc = libc.mincore(ctypes.c_void_p(ctypes.addressof(anchor)), ctypes.c_size_t(size), vec)
            if rc != 0:
                return -1.0
            return sum(v & 1 for v in vec) / pages
        finally:
            del anchor
            mm.close()
    except (OSError, AttributeError, ValueError):
        return -1.0


class Dropper:
    """Evicts files from the page cache; remembers which method worked."""

    def __init__(self) -> None:
        self.methods_used: set[str] = set()
        self.failures: list[str] = []

    def drop(self, *paths: Path) -> None:
        for p in paths:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        worst = max(resident_fraction(p) for p in paths)
        if 0 <= worst <= 0.02:
            self.methods_used.add("posix_fadvise(DONTNEED)")
            return
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        except OSError as exc:
            self.failures.append(f"drop_caches: {exc.strerror}")
            return
        worst = max(resident_fraction(p) for p in paths)
        if 0 <= worst <= 0.02:
            self.methods_used.add("/proc/sys/vm/drop_caches")
        else:
            self.failures.append(f"{worst:.0%} of the pages stayed resident")


# -- contenders ---------------------------------------------------------------------------------


def raw_write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in tensors.values():
            view = t.reshape(-1).view(torch.uint8).numpy().data
            off = 0
            while off < len(view):
                off += os.write(fd, view[off:])
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


def raw_read(path: Path) -> int:
    buf = memoryview(bytearray(CHUNK))
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def torch_save(path: Path, tensors: dict[str, torch.Tensor], fsync: bool) -> None:
    torch.save(tensors, path)
    if fsync:
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


class _NoMapBackend(FilesystemBackend):
    """The filesystem backend without memory maps: restore reads into a preallocated buffer."""

    def map(self, key: str) -> mmap.mmap | None:
        return None


def read_hash_then_safetensors_load(path: Path, expected: str) -> dict[str, torch.Tensor]:
    import safetensors.torch

    size = path.stat().st_size
    buf = bytearray(size)
    view = memoryview(buf)
    h = xxhash.xxh3_128()
    got = 0
    with open(path, "rb", buffering=0) as f:
        while got < size:
            n = f.readinto(view[got : got + CHUNK])
            if not n:
                break
            h.update(view[got : got + n])
            got += n
    assert h.hexdigest() == expected
    return safetensors.torch.load(bytes(buf))


# -- driver -------------------------------------------------------------------------------------


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def one_round(
    rnd: int,
    work: Path,
    store: CheckpointStore,
    nomap: CheckpointStore,
    tensors: dict[str, torch.Tensor],
    pt: Path,
    dropper: Dropper,
    record: Callable[[str, float], None],
    previous: list,
    args: argparse.Namespace,
) -> None:
    snapshots: list = []
    # writes, in rotating order
    writers: list[tuple[str, Callable[[], object]]] = [
        ("raw write+fsync", lambda: raw_write(work / "raw.bin", tensors)),
        (
            "snapshot (durable)",
            lambda: snapshots.append(
                store.snapshot(model_id="bench", revision="r", tensors=tensors)
            ),
        ),
        ("torch.save (no fsync)", lambda: torch_save(pt, tensors, fsync=False)),
        ("torch.save+fsync", lambda: torch_save(work / "sd_fsync.pt", tensors, fsync=True)),
    ]
    k = rnd % len(writers)
    for name, fn in writers[k:] + writers[:k]:
        os.sync()  # every writer starts with no dirty pages of the others
        record(name, timed(fn))
    new = snapshots[0]
    if previous:
        store.prune(keep=1)  # only the new snapshot stays
    previous[:] = [new]
    tfile = work / "store" / new.key_of(new.entries("tensors")[0])

    # cold reads of the same file, alternating order
    readers: list[tuple[str, Callable[[], object]]] = [
        ("raw read (cold)", lambda: raw_read(tfile)),
        ("restore (cold)", lambda: store.restore(new.id)),
    ]
    for name, fn in readers if rnd % 2 == 0 else readers[::-1]:
        dropper.drop(tfile, work / "store" / f"checkpoints/{new.id}/manifest.json")
        record(name, timed(fn))

    # warm
    raw_read(tfile)
    raw_read(pt)
    warm: list[tuple[str, Callable[[], object]]] = [
        ("restore (warm)", lambda: store.restore(new.id)),
        ("torch.load (warm)", lambda: torch.load(pt)),
        ("raw read (warm)", lambda: raw_read(tfile)),
    ]
    if not args.skip_variants:
        digest = new.entries("tensors")[0].xxh3_128
        warm += [
            ("restore, read into buffer (warm)", lambda: nomap.restore(new.id)),
            (
                "read+hash, safetensors.load(bytes) (warm)",
                lambda: read_hash_then_safetensors_load(tfile, digest),
            ),
        ]
    for name, fn in warm if rnd % 2 == 0 else warm[::-1]:
        record(name, timed(fn))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="tensor bytes (default 1024)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", help="scratch directory (default: a temp dir under $TMPDIR)")
    ap.add_argument("--skip-variants", action="store_true", help="skip the load-method comparison")
    args = ap.parse_args(argv)
    if args.size_mib < 16 or args.rounds < 1:
        print("checkpoint_io: --size-mib must be >= 16 and --rounds >= 1", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="surefoot-ckpt-bench-", dir=args.dir))
    try:
        return run(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    per = 16 * 1024 * 1024  # 16 MiB tensors, like a mid-size layer
    count = args.size_mib * 1024 * 1024 // per
    tensors = {f"layers.{i}.weight": torch.randn(per // 4 // 1024, 1024) for i in range(count)}
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(
        f"checkpoint_io: {count} float32 tensors, {nbytes / 2**20:.0f} MiB, "
        f"{args.rounds} rounds, in {work}"
    )

    store = CheckpointStore(FilesystemBackend(work / "store"), keep=None)
    nomap = CheckpointStore(_NoMapBackend(work / "store"), keep=None)
    dropper = Dropper()
    times: dict[str, list[float]] = {}

    def record(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds)

    pt = work / "sd.pt"
    previous: list = []
    for rnd in range(args.rounds):
        one_round(rnd, work, store, nomap, tensors, pt, dropper, record, previous, args)
        print(f"  round {rnd + 1}/{args.rounds} done")

    med = {name: statistics.median(v) for name, v in times.items()}
    gib = nbytes / 2**30
    print(f"\n{'contender':44} {'median s':>9} {'GiB/s':>7}   (all rounds)")
    for name, v in times.items():
        print(
            f"{name:44} {med[name]:9.3f} {gib / med[name]:7.2f}   {' '.join(f'{x:.3f}' for x in v)}"
        )

    def ratio(base: str, contender: str) -> float:
        return med[base] / med[contender]

    print("\nratios (higher is better for the store; >1 means faster than the baseline):")
    checks = [
        ("restore (cold) vs raw read (cold)", ratio("raw read (cold)", "restore (cold)"), 0.9),
        ("restore (warm) vs torch.load (warm)", ratio("torch.load (warm)", "restore (warm)"), 3.0),
        ("snapshot vs raw write+fsync", ratio("raw write+fsync", "snapshot (durable)"), 0.9),
        (
            "torch.save (no fsync) vs raw write+fsync",
            ratio("raw write+fsync", "torch.save (no fsync)"),
            None,
        ),
        ("torch.save+fsync vs raw write+fsync", ratio("raw write+fsync", "torch.save+fsync"), None),
    ]
    for label, value, target in checks:
        verdict = (
            ""
            if target is None
            else (f"target >= {target}x: " + ("MET" if value >= target else "NOT MET"))
        )
        print(f"  {label:44} {value:6.2f}x   {verdict}")
    if dropper.methods_used:
        print(f"\ncold cache via: {', '.join(sorted(dropper.methods_used))} (checked with mincore)")
    if dropper.failures:
        print(f"cold cache problems: {'; '.join(sorted(set(dropper.failures)))}")
    with contextlib.suppress(OSError):
        print(f"scratch filesystem: {os.statvfs(work).f_bsize}-byte blocks at {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
