"""The subscription that keeps a local view current: transitions pushed by Redis pub/sub.

Every gateway must stop routing to a target within milliseconds of any process opening its
breaker, without asking Redis on the request path. One background thread per process listens
on the transitions channel and hands each message to the view; on every (re)connect it
subscribes first and then re-reads every breaker, so a transition made in between arrives as a
message, and a periodic re-read bounds how stale the view can be if a message is lost. A lost
connection marks the process degraded (fail static) and is retried with a capped backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.client import PubSub

from knative.breakers._failstatic import FailStatic
from knative.breakers._settings import BreakerRegistrySettings
from knative.breakers._states import BreakerError
from knative.breakers._store import open_pubsub

log = logging.getLogger(__name__)

_LOST = (redis.RedisError, BreakerError, OSError, ValueError, AttributeError)
_MAX_BACKOFF = 1.0
_MAX_WAIT = 0.5  # the longest a listen waits, so a stop is noticed


class Subscription:
    """Listens on ``channel`` until ``stop`` is set.

    ``refresh(wholesale)`` re-reads every breaker into the view (``True`` after a reconnect);
    ``on_message`` takes the raw data of each published transition.
    """

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        settings: BreakerRegistrySettings,
        refresh: Callable[[bool], None],
        on_message: Callable[[bytes], None],
        health: FailStatic,
        stop: threading.Event,
    ) -> None:
        self.client = client
        self.channel = channel
        self.settings = settings
        self._refresh = refresh
        self._on_message = on_message
        self._health = health
        self._stop = stop
        self._pubsub: PubSub | None = None

    def run(self) -> None:
        """The thread's body: connect, listen, reconnect, until stopped."""
        backoff = self.settings.reconnect_interval
        while not self._stop.is_set():
            ps = None
            try:
                ps = open_pubsub(self.client)
                self._pubsub = ps
                ps.subscribe(self.channel)
                # Subscribed first, then read: a transition in between arrives as a message.
                self._refresh(True)
                self._health.set_subscribed(True)
                backoff = self.settings.reconnect_interval
                self._listen(ps)
            except _LOST as exc:
                if self._stop.is_set():
                    break
                self._health.set_subscribed(False, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)
            finally:
                if ps is not None:
                    _close_quietly(ps)

    def _listen(self, ps: PubSub) -> None:
        interval = self.settings.refresh_interval
        next_refresh = time.monotonic() + interval
        while not self._stop.is_set():
            wait = max(0.0, min(_MAX_WAIT, next_refresh - time.monotonic()))
            msg = ps.get_message(timeout=wait)
            if msg is not None and msg.get("type") == "message":
                self._on_message(msg["data"])
            if time.monotonic() >= next_refresh:
                self._refresh(False)
                next_refresh = time.monotonic() + interval

    def interrupt(self) -> None:
        """Close the current connection, so a thread waiting on it wakes up (to stop)."""
        ps = self._pubsub
        if ps is not None:
            _close_quietly(ps)


def _close_quietly(ps: PubSub) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may fail any way
        ps.close()
