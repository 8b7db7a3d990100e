"""A durable home for the operator's hand on the breakers under ``surefoot up``.

A forced-open revision or a forced-closed node is an operator's decision: it must outlive the
Redis that holds it, even one that comes back empty (its append-only file lost, a fresh server,
a flush). :class:`DurableBreakers` copies every forced (and disabled) breaker to a JSON file in
the state directory, written atomically, each time it finds them changed; and it writes them
back into a Redis that does not hold its marker key (a server that has lost what was written
to it) before routing depends on them: the embedded Redis runs :meth:`DurableBreakers.restore`
while it still refuses every other client, and :meth:`DurableBreakers.sync` restores an
external Redis found empty at its next pass. Quarantined nodes need no copy here: their
durable home is the platform's node label, from which the functions' sweep re-admits them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import redis

from knative.breakers import BreakerError, BreakerRegistrySettings, BreakerStore

log = logging.getLogger(__name__)

# the operator's states, and the action that puts a breaker back in each
KEPT = {"forced_open": "force_open", "forced_closed": "force_closed", "disabled": "disable"}


class DurableBreakers:
    """The file ``path`` mirrors the forced breakers of the Redis ``settings`` names."""

    def __init__(self, path: Path, settings: BreakerRegistrySettings) -> None:
        self.path = path
        self.settings = settings
        self.marker = f"{settings.prefix}:durable"
        self._store: BreakerStore | None = None
        self.restored = 0  # breakers written back, over this process's life

    def read(self) -> dict[str, dict[str, str]]:
        """The kept states: ``{key: {"state": ..., "reason": ...}}`` (empty when none)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            log.error("%s is not valid JSON (%s): no forced breaker can be restored",
                      self.path, exc)
            return {}
        rows = data.get("breakers", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in rows.items()
                if isinstance(v, dict) and v.get("state") in KEPT}

    def write(self, rows: dict[str, dict[str, str]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump({"breakers": rows}, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        with contextlib.suppress(OSError):  # the rename itself made durable
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def restore(self, client: redis.Redis) -> int:
        """Write the kept states into the Redis behind ``client`` (those it does not already
        hold) and set the marker; returns how many were written."""
        store = BreakerStore(client, self.settings)
        n = 0
        for key, row in sorted(self.read().items()):
            if store.status(key).state == row["state"]:
                continue
            reason = row.get("reason") or "restored"
            store.act(key, KEPT[row["state"]], reason)
            n += 1
        client.set(self.marker, "1")
        if n:
            log.warning("restored %d forced breaker(s) from %s", n, self.path)
        self.restored += n
        return n

    def sync(self) -> None:
        """One pass: restore into a Redis without the marker, else copy what changed to the
        file. Quiet while Redis is away (the supervisor restarts it)."""
        if self._store is None:
            self._store = BreakerStore.from_url(self.settings)
        store = self._store
        try:
            if not store.client.exists(self.marker):
                self.restore(store.client)
                return
            rows, _ = store.statuses()
        except (redis.RedisError, BreakerError) as exc:
            log.debug("durable breakers: redis away (%s)", exc)
            return
        kept = {s.key: {"state": s.state, "reason": s.reason} for s in rows if s.state in KEPT}
        if kept != self.read():
            self.write(kept)

    def close(self) -> None:
        if self._store is not None:
            self._store.client.close()

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path), "kept": len(self.read()), "restored": self.restored}
