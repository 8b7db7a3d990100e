"""A durable home for the operator's hand on the breakers, beside Redis.

A forced-open revision or a forced-closed node is an operator's decision: it must outlive the
Redis that holds it, even one that comes back empty (its append-only file lost, a fresh server,
a flush). :class:`DurableBreakers` copies every forced (and disabled) breaker to a home of its
own each time it finds them changed, and writes them back into a Redis that does not hold its
marker key (a server that has lost what was written to it) before routing depends on them.
The home is a JSON file under ``surefoot up`` (:class:`FileHome`) and a ConfigMap on a cluster
(``knative.platforms.kube.ConfigMapHome``); both hold ``{"breakers": {key: {state, reason}}}``.
Quarantined nodes need no copy here: their durable home is the node's label, from which the
functions' sweep re-admits them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import redis

from knative.breakers._settings import BreakerRegistrySettings
from knative.breakers._states import BreakerError
from knative.breakers._store import BreakerStore

log = logging.getLogger(__name__)

# the operator's states, and the action that puts a breaker back in each
KEPT = {"forced_open": "force_open", "forced_closed": "force_closed", "disabled": "disable"}

Rows = dict[str, dict[str, str]]


class DurableHome(Protocol):
    """Where the kept states live: ``read()`` gives the last document written (``{}`` when
    none), ``write()`` replaces it whole."""

    def read(self) -> Any: ...

    def write(self, document: dict[str, Any]) -> None: ...

    def describe(self) -> str: ...


class FileHome:
    """A JSON file, written to a temporary name, synced and renamed: never half written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def read(self) -> Any:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            log.error("%s is not valid JSON (%s): no forced breaker can be restored",
                      self.path, exc)
            return {}

    def write(self, document: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump(document, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        with contextlib.suppress(OSError):  # the rename itself made durable
            fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


class DurableBreakers:
    """``home`` mirrors the forced breakers of the Redis ``settings`` names."""

    def __init__(self, home: DurableHome, settings: BreakerRegistrySettings) -> None:
        self.home = home
        self.settings = settings
        self.marker = f"{settings.prefix}:durable"
        self._store: BreakerStore | None = None
        self.restored = 0  # breakers written back, over this process's life

    def read(self) -> Rows:
        """The kept states: ``{key: {"state": ..., "reason": ...}}`` (empty when none)."""
        data = self.home.read()
        rows = data.get("breakers", {}) if isinstance(data, dict) else {}
        return {k: v for k, v in rows.items()
                if isinstance(v, dict) and v.get("state") in KEPT}

    def write(self, rows: Rows) -> None:
        self.home.write({"breakers": rows})

    def restore(self, client: redis.Redis) -> int:
        """Write the kept states into the Redis behind ``client`` (those it does not already
        hold) and set the marker; returns how many were written."""
        store = BreakerStore(client, self.settings)
        n = 0
        for key, row in sorted(self.read().items()):
            if store.status(key).state == row["state"]:
                continue
            store.act(key, KEPT[row["state"]], row.get("reason") or "restored")
            n += 1
        client.set(self.marker, "1")
        if n:
            log.warning("restored %d forced breaker(s) from %s", n, self.home.describe())
        self.restored += n
        return n

    def sync(self) -> None:
        """One pass: restore into a Redis without the marker, else copy what changed to the
        home. Quiet while Redis is away (it is restarted, or reconnected to, elsewhere)."""
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
        return {"path": self.home.describe(), "kept": len(self.read()),
                "restored": self.restored}
