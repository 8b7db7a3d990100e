"""The functions on the LocalPlatform (real ``surefoot serve`` processes on simulated nodes):
the same handlers, only the Platform changes. A fatal XID opens the node's breaker and
quarantines the node (its replica evicted and rescheduled elsewhere); the primary's breaker
reroutes traffic and restores it; the timer snapshots a real replica."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import events as ev
from functions import (
    ACTED,
    FunctionSettings,
    build_context,
    quarantine_node,
    reroute_traffic,
    snapshot_checkpoint,
    trip_breaker,
)
from knative import Target
from knative.breakers import BreakerRegistrySettings, node_key
from knative.platforms.local import LocalPlatform, LocalSettings, RevisionSpec
from tests.conftest import FakeTime
from tests.functions._helpers import closed, opened, ping, xid

SMALL = ("--embedding-model", "", "--n-ctx", "512", "--max-tokens", "16", "--grace-seconds", "1")


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalPlatform]:
    settings = LocalSettings(nodes=3, log_dir=str(tmp_path / "logs"), grace_seconds=3.0,
                             checkpoint_dir=str(tmp_path / "ckpt"),
                             env={"SUREFOOT_ADMIN_TOKEN": "tok"}, base_env=os.environ)
    revisions = [RevisionSpec("surefoot-primary", "surefoot", "primary", 2, 3, SMALL),
                 RevisionSpec("surefoot-fallback", "surefoot", "fallback", 1, 3, SMALL)]
    traffic = {"surefoot": [Target("surefoot-primary", 100, "primary"),
                            Target("surefoot-fallback", 0, "fallback")]}
    platform = LocalPlatform(settings, revisions, traffic)
    platform.start()
    try:
        assert platform.wait_ready(90), "local replicas did not become ready"
        yield platform
    finally:
        platform.stop(timeout=10)


def test_functions_drive_the_local_platform(local: LocalPlatform, redis_url: str) -> None:
    settings = FunctionSettings(redis_url=redis_url, platform="local", admin_token="tok",
                                primary_min_ready=1, fallback_max_scale=3,
                                restore_step_wait_s=1.0, drain_timeout_s=30.0,
                                sweep_interval_s=0)
    fake = FakeTime()
    ctx = build_context(settings, local,
                        breaker_settings=BreakerRegistrySettings(redis_url=redis_url),
                        clock=fake.clock, sleep=fake.sleep)
    try:
        victim = next(r for r in local.replicas("surefoot") if r.revision == "surefoot-primary")
        assert victim.node is not None
        fault = xid(victim.node, 79)
        assert trip_breaker.handle(fault, ctx).status == ACTED
        assert ctx.breakers.status(node_key(victim.node)).state == "open"
        out = quarantine_node.handle(fault, ctx)
        assert out.status == ACTED, out.reason
        node = next(n for n in local.nodes() if n.name == victim.node)
        assert node.unschedulable
        assert node.labels["surefoot.dev/gpu-error"] == "true"
        p = ev.payload_of(out.reply) if out.reply else None
        assert isinstance(p, ev.NodeQuarantined)
        assert victim.name in p.evicted_pods
        assert all(r.node != victim.node for r in local.replicas("surefoot")
                   if r.phase != "Terminating")

        assert reroute_traffic.handle(opened(), ctx).status == ACTED
        assert [(t.revision, t.percent) for t in local.traffic("surefoot")] == [
            ("surefoot-primary", 0), ("surefoot-fallback", 100)]
        assert reroute_traffic.handle(closed(), ctx).status == ACTED
        assert [(t.revision, t.percent) for t in local.traffic("surefoot")] == [
            ("surefoot-primary", 100), ("surefoot-fallback", 0)]

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            out = snapshot_checkpoint.handle(ping(), ctx)
            if out.status == ACTED:
                break
            time.sleep(0.5)
        assert out.status == ACTED, out.reason
        saved = [ev.payload_of(e) for e in out.events]
        assert {s.revision for s in saved} == {"surefoot-primary", "surefoot-fallback"}  # type: ignore[attr-defined]

        assert quarantine_node.release(ctx, victim.node).status == ACTED
        node = next(n for n in local.nodes() if n.name == victim.node)
        assert not node.unschedulable
        assert "surefoot.dev/gpu-error" not in node.labels
    finally:
        ctx.close()
