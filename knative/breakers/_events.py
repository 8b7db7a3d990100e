"""Breaker transitions as CloudEvents of the events catalog, posted off the caller's thread.

Functions (reroute traffic, quarantine a node) and dashboards react to a breaker that opened or
closed; the breaker itself must never wait on them. :class:`CloudEventSink` is a transition hook
(:data:`knative.breakers._states.TransitionHook`): it builds the catalog's ``breaker.opened |
halfopened | closed`` event with :func:`events.build` and hands it to an
:class:`events.Publisher` (one background sender with a bounded queue, retries and an optional
dead letter), so an unreachable sink costs the breaker nothing.

The catalog's breaker scopes are ``node`` and ``revision``; transitions of other keys (e.g.
``replica:*``) are not emitted. Forced states map onto the same three types; the exact state and
the generation travel as the extensions ``breakerstate`` and ``breakergen``. The event id is
``<key>/<generation>/<redis-time-ms>``: unique per transition even after Redis forgets a
breaker, and the same if one transition were reported twice.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import httpx

from events import (
    BREAKER_SCOPES,
    BreakerClosed,
    BreakerHalfOpened,
    BreakerOpened,
    Event,
    Publisher,
    Sender,
    SenderSettings,
    build,
)
from knative.breakers._states import (
    CLOSED,
    DISABLED,
    FORCED_CLOSED,
    FORCED_OPEN,
    HALF_OPEN,
    OPEN,
    Transition,
)

log = logging.getLogger(__name__)


def transition_event(t: Transition, source: str) -> Event | None:
    """The catalog event for a transition, or ``None`` for a key outside the catalog's scopes."""
    scope, _, name = t.key.partition(":")
    if scope not in BREAKER_SCOPES or not name:
        return None
    reason = t.reason
    payload: BreakerOpened | BreakerHalfOpened | BreakerClosed
    if t.new in (OPEN, FORCED_OPEN):
        hold = round(t.until - t.at, 3) if t.until is not None else None
        payload = BreakerOpened(scope=scope, name=name, reason=reason, hold_seconds=hold)
    elif t.new == HALF_OPEN:
        payload = BreakerHalfOpened(scope=scope, name=name, reason=reason)
    elif t.new in (CLOSED, FORCED_CLOSED, DISABLED):
        payload = BreakerClosed(scope=scope, name=name, reason=reason)
    else:  # pragma: no cover - every state is mapped above
        return None
    return build(
        payload,
        source=source,
        id=f"{t.key}/{t.generation}/{round(t.at * 1000)}",
        time=datetime.fromtimestamp(t.at, UTC),
        extensions={"breakerstate": t.new, "breakergen": str(t.generation)},
    )


class CloudEventSink:
    """A transition hook that publishes each transition to ``url`` in the background.

    ``settings`` are the events package's sender settings (timeout, retries, dead letter);
    ``transport`` is the seam tests replace (an ``httpx`` transport).
    """

    def __init__(
        self,
        url: str,
        source: str = "/surefoot/breakers",
        settings: SenderSettings | None = None,
        transport: httpx.BaseTransport | None = None,
        max_queue: int = 1000,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"breaker event sink {url!r} is not an http(s) URL")
        self.url = url
        self.source = source
        self.skipped = 0
        self._sender = Sender(settings or SenderSettings(), transport=transport)
        self._publisher = Publisher(self._sender, url, max_queue=max_queue)

    @property
    def sent(self) -> int:
        return self._publisher.sent

    @property
    def failed(self) -> int:
        return self._publisher.failed + self._publisher.dropped

    def __call__(self, t: Transition) -> None:
        event = transition_event(t, self.source)
        if event is None:
            self.skipped += 1
            log.debug("breaker %s: no catalog event for this scope", t.key)
            return
        self._publisher(event)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then stop."""
        self._publisher.close(timeout)
        self._sender.close()
