"""``surefoot status`` shows degraded states plainly: Pending replicas and why, cordoned nodes
and by whom, the capacity each revision has left, the dead-lettered events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from knative import Node, Replica, Target
from surefoot._cmd_up import collect_status, format_status


class DegradedPlatform:
    """A platform that has been through faults: one primary Pending, the fallback lost, one
    node quarantined by Surefoot and one cordoned by an operator."""

    def replicas(self, service: str) -> list[Replica]:
        return [
            Replica("p-1", "node-1", "svc-primary", "http://x:1", True),
            Replica("p-2", "node-2", "svc-primary", "http://x:2", True),
            Replica("p-3", None, "svc-primary", None, False, phase="Pending"),
            Replica("f-1", "node-4", "svc-fallback", "http://x:4", False),
        ]

    def traffic(self, service: str) -> list[Target]:
        return [Target("svc-primary", 100, "primary"), Target("svc-fallback", 0, "fallback")]

    def nodes(self) -> list[Node]:
        return [Node("node-1"), Node("node-2"),
                Node("node-3", unschedulable=True, labels={"surefoot.dev/gpu-error": "true"}),
                Node("node-4", unschedulable=True)]

    def status(self) -> dict[str, Any]:
        return {"replicas": [{"name": "p-3", "pending_reason": "0/4 nodes available: 2 "
                                                              "cordoned (node-3, node-4)"}],
                "revisions": [{"name": "svc-primary", "min_scale": 3},
                              {"name": "svc-fallback", "min_scale": 1}]}


def dead_letters(path: Path) -> None:
    import base64

    row = {"specversion": "1.0", "id": "ev-1", "type": "dev.surefoot.breaker.closed",
           "source": "/t", "time": "2026-12-01T14:00:00Z",
           "knativeerrordest": "http://127.0.0.1:1/reroute_traffic", "knativeerrorcode": "503",
           "knativeerrordata": base64.b64encode(json.dumps(
               {"error": "temporary failure: lock traffic:svc is held"}).encode()).decode()}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "ev-2"}) + "\n")


def test_status_shows_pending_cordoned_capacity_and_dead_letters(
    tmp_path: Path, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.hset("surefoot:fn:quarantine:node-3", "reason", "XID 79 (GPU has fallen off the bus)")
    client.close()
    dead = tmp_path / "dead-letters.jsonl"
    dead_letters(dead)
    st = collect_status(DegradedPlatform(), "svc", redis_url, None, dead_letter_file=str(dead))
    text = format_status(st)
    lines = text.splitlines()
    pending = next(i for i, line in enumerate(lines) if line.startswith("pending"))
    assert lines[pending] == "pending (no node can take them): p-3"
    assert lines[pending + 1] == "  p-3: 0/4 nodes available: 2 cordoned (node-3, node-4)"
    assert st["pending"] == [{"name": "p-3", "revision": "svc-primary",
                              "reason": "0/4 nodes available: 2 cordoned (node-3, node-4)"}]
    cordoned = next(line for line in lines if line.startswith("cordoned:"))
    assert "node-3 by surefoot quarantine (XID 79 (GPU has fallen off the bus))" in cordoned
    assert "node-4 by not Surefoot" in cordoned
    capacity = next(line for line in lines if line.startswith("capacity:"))
    assert "svc-primary 2/3 ready, 1 pending" in capacity
    assert "svc-fallback 0/1 ready (NONE READY)" in capacity
    assert f"dead letters: 2 ({dead})" in text
    assert "dev.surefoot.breaker.closed ev-2 -> http://127.0.0.1:1/reroute_traffic: HTTP 503 " \
           "temporary failure: lock traffic:svc is held" in text
    assert st["dead_letters"]["count"] == 2  # and in --json


def test_status_without_degradation_says_none(tmp_path: Path) -> None:
    class Fine(DegradedPlatform):
        def nodes(self) -> list[Node]:
            return [Node("node-1")]

        def status(self) -> dict[str, Any]:
            return {}

    text = format_status(collect_status(Fine(), "svc", None, None,
                                        dead_letter_file=str(tmp_path / "none.jsonl")))
    assert "cordoned: none" in text
    assert "dead letters: 0" in text
    pending = next(line for line in text.splitlines() if line.startswith("pending"))
    assert pending == "pending (no node satisfies anti-affinity): p-3"
