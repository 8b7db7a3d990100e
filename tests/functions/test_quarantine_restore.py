"""A Redis that comes back empty forgets the quarantined set and the node breakers; the node's
label on the platform is their durable home, and the functions' sweep restores them."""

from __future__ import annotations

import redis

from functions import ACTED, Context, quarantine_node
from functions._state import quarantined
from tests.functions._helpers import xid
from tests.kube_fake import FakeKubeServer


def test_sweep_restores_quarantines_into_an_empty_redis(cluster: FakeKubeServer, ctx: Context,
                                                        redis_url: str) -> None:
    assert quarantine_node.handle(xid("gpu-1", 79), ctx).status == ACTED
    ctx.breakers.open("node:gpu-1", "xid 79")
    assert quarantined(ctx) == ["gpu-1"]
    redis.Redis.from_url(redis_url).flushall()  # Redis replaced by an empty one
    assert quarantined(ctx) == []
    outcomes = quarantine_node.sweep(ctx)
    assert [o.status for o in outcomes] == [ACTED]
    assert "restored from its label" in outcomes[0].reason
    assert quarantined(ctx) == ["gpu-1"]
    assert ctx.breakers.status("node:gpu-1").state == "open"
    assert quarantine_node.sweep(ctx) == []  # once
    # a release still releases: the label goes first, then the set
    quarantine_node.release(ctx, "gpu-1")
    assert quarantined(ctx) == []
    assert quarantine_node.sweep(ctx) == []
