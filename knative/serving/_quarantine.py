"""A replica's readiness follows its node's breaker.

When a function opens ``node:<name>`` (a fatal GPU fault), every replica on that node fails its
readiness probe, so Kubernetes (or the local platform) takes it out of the endpoints even for
clients that do not go through a Surefoot gateway. The watch reads Redis off the request path:
the probe only reads the last state seen. Its breaker settings (where Redis is, the key
prefix every process shares) come from the entry point, which reads them from the environment.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from knative.breakers import BreakerRegistrySettings

log = logging.getLogger(__name__)


class NodeBreakerWatch:
    """Polls the node's breaker every ``interval`` seconds; ``reason()`` is the probe's view."""

    def __init__(self, breakers: BreakerRegistrySettings, node: str,
                 interval: float = 0.25) -> None:
        # imported here: a replica without a Redis URL never loads the Redis client
        from knative.breakers import BreakerStore, node_key

        self.key = node_key(node)
        self.store = BreakerStore.from_url(breakers)
        self.interval = interval
        self._reason: str | None = None
        self._stop = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._run, name="node-breaker", daemon=True)

    def start(self) -> NodeBreakerWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def reason(self) -> str | None:
        return self._reason

    def poll(self) -> None:
        from knative.breakers import BreakerError

        try:
            status = self.store.status(self.key)
        except BreakerError as exc:
            if not self._warned:  # fail static: keep the last state seen
                log.warning("node breaker %s unreadable, keeping last state: %s", self.key, exc)
                self._warned = True
            return
        self._warned = False
        if status.state in ("open", "forced_open"):
            self._reason = f"{self.key} is {status.state}" + (
                f" ({status.reason})" if status.reason else "")
        else:
            self._reason = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)
