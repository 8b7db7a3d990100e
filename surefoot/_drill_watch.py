"""The reactions to an injected GPU fault, timed: the breaker opening (seen on Redis pub/sub),
the gateway's own view holding it open, the node quarantined, the traffic rerouted. Each signal
is watched on its own thread, so one slow read does not delay another.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import httpx
import redis as redis_lib

if TYPE_CHECKING:
    from surefoot._drill import Target

log = logging.getLogger(__name__)

OPEN_STATES = ("open", "forced_open")
BREAKER_OPENED = "breaker_opened"
GATEWAY_STOPPED = "gateway_stopped_routing"
NODE_QUARANTINED = "node_quarantined"
TRAFFIC_REROUTED = "traffic_rerouted"
SIGNALS = (BREAKER_OPENED, GATEWAY_STOPPED, NODE_QUARANTINED, TRAFFIC_REROUTED)


def view_open(view: Any, key: str) -> bool:
    """Does the gateway's own (in-memory) view, from /admin/breakers, hold ``key`` open?"""
    if isinstance(view, dict) and isinstance(view.get("view"), dict):
        return view["view"].get(key) in OPEN_STATES
    items = view.get("breakers", view) if isinstance(view, dict) else view
    if isinstance(items, dict):
        entry = items.get(key)
        return isinstance(entry, dict) and entry.get("state") in OPEN_STATES
    if isinstance(items, list):
        return any(isinstance(b, dict) and b.get("key") == key
                   and b.get("state") in OPEN_STATES for b in items)
    return False


class ReactionWatch:
    """When each reaction to a fault on ``node`` (breaker ``key``) was first seen: ``seen``
    maps a signal's name to the wall-clock time. Subscribed from construction on, so a
    transition published right after the injection is not missed."""

    def __init__(self, target: Target, node: str, key: str, channel: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.t = target
        self.node = node
        self.key = key
        self.clock = clock
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        client: Any = redis_lib.Redis.from_url(target.redis_url)
        self._pubsub: Any = client.pubsub()
        self._pubsub.subscribe(channel)
        self._gw = httpx.Client(timeout=2)
        self._headers = {"Authorization": f"Bearer {target.admin_token}"}
        self._threads = [
            threading.Thread(target=self._breaker_messages, daemon=True),
            threading.Thread(target=self._poll(GATEWAY_STOPPED, self._gateway_open), daemon=True),
            threading.Thread(target=self._poll(NODE_QUARANTINED, self._node_quarantined),
                             daemon=True),
            threading.Thread(target=self._poll(TRAFFIC_REROUTED, self._traffic_rerouted),
                             daemon=True),
        ]

    def start(self) -> ReactionWatch:
        for w in self._threads:
            w.start()
        return self

    def wait(self, wanted: Collection[str], timeout: float, linger: float) -> None:
        """Until every ``wanted`` signal was seen or ``timeout`` ran out; then ``linger``
        seconds more for the signals that come later (a reroute follows soon after)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not set(wanted) <= set(self.seen):
            time.sleep(0.01)
        time.sleep(linger)

    def close(self) -> None:
        self._stop.set()
        for w in self._threads:
            w.join(3)
        self._pubsub.close()
        self._gw.close()

    def _breaker_messages(self) -> None:
        while not self._stop.is_set() and BREAKER_OPENED not in self.seen:
            msg = self._pubsub.get_message(timeout=0.05)
            if not msg or msg.get("type") != "message":
                continue
            try:
                t = json.loads(msg["data"])
            except ValueError:
                continue
            if t.get("key") == self.key and t.get("new") in OPEN_STATES:
                self.seen.setdefault(BREAKER_OPENED, self.clock())

    def _poll(self, name: str, check: Callable[[], bool]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set() and name not in self.seen:
                try:
                    if check():
                        self.seen.setdefault(name, self.clock())
                except Exception:  # the system under test may answer slowly; keep looking
                    pass
                self._stop.wait(0.002)
        return run

    def _gateway_open(self) -> bool:
        view = self._gw.get(f"{self.t.gateway_url}/admin/breakers", headers=self._headers)
        return view_open(view.json(), self.key)

    def _node_quarantined(self) -> bool:
        return any(n.name == self.node and n.unschedulable for n in self.t.platform.nodes())

    def _traffic_rerouted(self) -> bool:
        return any(t.revision == self.t.primary_revision and t.percent < 100
                   for t in self.t.platform.traffic(self.t.service))
