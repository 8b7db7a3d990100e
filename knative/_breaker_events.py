"""Breaker transitions as CloudEvents, posted to a sink off the caller's thread.

Functions (reroute traffic, quarantine a node) and dashboards react to a breaker that opened or
closed; the breaker itself must never wait on them. :class:`CloudEventSink` is a transition hook
(:data:`knative._breaker.TransitionHook`): it builds a binary-mode CloudEvent 1.0 and hands it to
one background sender with a bounded queue; a full queue or an unreachable sink drops the event
with a warning rather than slowing the breaker down.

The event id is ``<key>/<generation>``: the same transition reported twice (e.g. by a retry)
keeps one id, so consumers that deduplicate by id act once.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from knative._breaker import (
    CLOSED,
    DISABLED,
    FORCED_CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    Transition,
)

log = logging.getLogger(__name__)

_TYPES = {
    OPEN: "dev.surefoot.breaker.opened",
    FORCED_OPEN: "dev.surefoot.breaker.opened",
    HALF_OPEN: "dev.surefoot.breaker.half_opened",
    CLOSED: "dev.surefoot.breaker.closed",
    FORCED_CLOSED: "dev.surefoot.breaker.closed",
    DISABLED: "dev.surefoot.breaker.closed",
}

_FORMAT = JSONFormat()


def event_type(new_state: str) -> str:
    """``dev.surefoot.breaker.opened | half_opened | closed`` for a breaker's new state."""
    return _TYPES[new_state]


def transition_data(t: Transition) -> dict[str, Any]:
    return {
        "key": t.key,
        "old": t.old,
        "new": t.new,
        "generation": t.generation,
        "reason": t.reason,
        "until": t.until,
        "opens": t.opens,
    }


def to_cloudevent(t: Transition, source: str) -> ce_http.HTTPMessage:
    """The transition as a binary-mode HTTP message (headers ``ce-*``, JSON body)."""
    event = CloudEvent(
        {
            "specversion": "1.0",
            "id": f"{t.key}/{t.generation}",
            "source": source,
            "type": event_type(t.new),
            "subject": t.key,
            "time": datetime.fromtimestamp(t.at, UTC),
            "datacontenttype": "application/json",
        },
        transition_data(t),
    )
    return ce_http.to_binary(event, _FORMAT)


class CloudEventSink:
    """A transition hook that posts each transition to ``url`` in the background.

    ``transport`` is the seam tests replace (an ``httpx`` transport).
    """

    def __init__(
        self,
        url: str,
        source: str = "/surefoot/breakers",
        timeout: float = 2.0,
        max_queue: int = 1000,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"breaker event sink {url!r} is not an http(s) URL")
        self.url = url
        self.source = source
        self.sent = 0
        self.failed = 0
        self._q: queue.Queue[ce_http.HTTPMessage | None] = queue.Queue(max_queue)
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._thread = threading.Thread(target=self._run, name="breaker-events", daemon=True)
        self._thread.start()

    def __call__(self, t: Transition) -> None:
        try:
            self._q.put_nowait(to_cloudevent(t, self.source))
        except queue.Full:
            self.failed += 1
            log.warning("breaker event queue full; dropped %s -> %s of %s", t.old, t.new, t.key)

    def _run(self) -> None:
        while True:
            msg = self._q.get()
            if msg is None:
                return
            try:
                r = self._client.post(self.url, headers=msg.headers, content=msg.body)
                if r.status_code >= 300:
                    raise httpx.HTTPStatusError(
                        f"sink answered {r.status_code}", request=r.request, response=r
                    )
                self.sent += 1
            except httpx.HTTPError as exc:
                self.failed += 1
                log.warning("breaker event %s not delivered to %s: %s",
                            msg.headers.get("ce-id"), self.url, exc)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        try:
            self._q.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._client.close()
