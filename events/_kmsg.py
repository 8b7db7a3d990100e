"""The kernel-log path of GPU health: ``NVRM: Xid`` lines from /dev/kmsg, the journal or a file.

NVML's event API does not deliver every XID — notably 79 (fallen off the bus), 119 and 120
(NVIDIA/DCGM#162) — yet the driver always logs them:

    NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python, GPU has fallen off the bus.

This module parses such lines (with /dev/kmsg, syslog or journal prefixes) and follows the log
sources line by line, stopping promptly when asked.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import select
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger(__name__)

_XID_LINE = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9a-fA-F]{4,8}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?)\)"
    r":\s*(?P<xid>\d+),?\s*(?P<rest>.*)$"
)
_PID = re.compile(r"pid=(?:'?<?unknown>?'?|(?P<pid>\d+))\s*,?\s*")
_NAME = re.compile(r"name=(?:<unknown>|[^,]*)\s*,?\s*")


@dataclass(frozen=True)
class KernelXid:
    pci: str
    xid: int
    pid: int | None
    message: str


def parse_xid_line(line: str) -> KernelXid | None:
    """The XID in a kernel log line, or None if the line is not an NVRM Xid report."""
    m = _XID_LINE.search(line.strip())
    if not m:
        return None
    rest = m.group("rest").strip()
    pid: int | None = None
    pm = _PID.match(rest)
    if pm:
        if pm.group("pid"):
            pid = int(pm.group("pid"))
        rest = rest[pm.end():]
    nm = _NAME.match(rest)
    if nm:
        rest = rest[nm.end():]
    return KernelXid(pci=m.group("pci"), xid=int(m.group("xid")), pid=pid, message=rest.strip())


def _kmsg_record(raw: bytes) -> str:
    """A /dev/kmsg record is ``prio,seq,usec,flags;message``."""
    text = raw.decode("utf-8", "replace")
    head, sep, message = text.partition(";")
    return message.rstrip("\n") if sep and "," in head else text.rstrip("\n")


def follow_kmsg(stop: threading.Event, path: str = "/dev/kmsg", *, from_start: bool = False,
                poll_s: float = 0.5) -> Iterator[str]:
    """Yield new kernel log messages from /dev/kmsg until ``stop`` is set. The device is
    opened at once (an OSError here means no access), reading starts at its end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not from_start:
        os.lseek(fd, 0, os.SEEK_END)
    return _kmsg_lines(fd, stop, poll_s)


def _kmsg_lines(fd: int, stop: threading.Event, poll_s: float) -> Iterator[str]:
    try:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], poll_s)
            if not ready:
                continue
            try:
                raw = os.read(fd, 8192)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records were overwritten before we read them
                    log.warning("kernel log overrun: some messages were lost")
                    continue
                raise
            if raw:
                yield _kmsg_record(raw)
    finally:
        os.close(fd)


def follow_file(stop: threading.Event, path: str, *, from_start: bool = False,
                poll_s: float = 0.5) -> Iterator[str]:
    """Yield lines appended to a file (``tail -f``) until ``stop`` is set. The file is opened
    at once and read from its current end."""
    fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by the generator
    if not from_start:
        fh.seek(0, os.SEEK_END)
    return _file_lines(fh, stop, poll_s)


def _file_lines(fh: TextIO, stop: threading.Event, poll_s: float) -> Iterator[str]:
    with fh:
        partial = ""
        while not stop.is_set():
            chunk = fh.readline()
            if not chunk:
                stop.wait(poll_s)
                continue
            partial += chunk
            if partial.endswith("\n"):
                yield partial.rstrip("\n")
                partial = ""


def follow_journal(stop: threading.Event, *, poll_s: float = 0.5) -> Iterator[str]:
    """Yield kernel messages from ``journalctl -k -f`` until ``stop`` is set."""
    proc = subprocess.Popen(
        ["journalctl", "-k", "-f", "-n", "0", "-o", "cat"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    try:
        while not stop.is_set():
            ready, _, _ = select.select([proc.stdout], [], [], poll_s)
            if not ready:
                if proc.poll() is not None:
                    raise OSError(f"journalctl exited with {proc.returncode}")
                continue
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    raise OSError(f"journalctl exited with {proc.returncode}")
                continue
            yield line.rstrip("\n")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=2)


def follow(stop: threading.Event, source: str) -> Iterator[str]:
    """Lines from ``source``: "/dev/kmsg" (or any char device), "journal", or a file path."""
    if source == "journal":
        return follow_journal(stop)
    if source.startswith("/dev/"):
        return follow_kmsg(stop, source)
    return follow_file(stop, source)


LineSource = Callable[[threading.Event], Iterator[str]]


def kernel_log_source(spec: str | None) -> LineSource | None:
    """A line source for ``spec``: "off"/None, "auto" (/dev/kmsg if readable, else the journal
    if journalctl exists, else off), "/dev/kmsg", "journal", or a file path."""
    if spec in (None, "", "off"):
        return None
    chosen = spec
    if spec == "auto":
        if os.access("/dev/kmsg", os.R_OK):
            chosen = "/dev/kmsg"
        elif shutil.which("journalctl"):
            chosen = "journal"
        else:
            return None
    assert chosen is not None

    def lines(stop: threading.Event) -> Iterator[str]:
        return follow(stop, chosen)

    return lines
