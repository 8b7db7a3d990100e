"""Fixtures: a small cluster on the fake Kubernetes API, a real Redis, a context with a fake
clock (see _helpers for the cluster's shape)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from functions import Context, FunctionSettings, build_context
from knative.breakers import BreakerRegistrySettings
from knative.platforms.kube import KnativePlatform
from tests.conftest import FakeTime
from tests.functions._helpers import Sink, make_cluster
from tests.kube_fake import FakeKubeServer

# build_context arguments; every other keyword of make_ctx is a settings field.
CONTEXT_ARGS = ("platform", "redis_client", "breakers", "http", "transport", "canary", "sink")


@pytest.fixture
def cluster(kube: FakeKubeServer) -> FakeKubeServer:
    make_cluster(kube)
    return kube


@pytest.fixture
def platform(kube: FakeKubeServer, fake_time: FakeTime) -> KnativePlatform:
    """The shared platform fixture, with a shorter first retry backoff."""
    return KnativePlatform(kube.api_client(), "default", sleep=fake_time.sleep,
                           clock=fake_time.clock, backoff_initial=0.5)


@pytest.fixture
def settings(redis_url: str) -> FunctionSettings:
    return FunctionSettings(redis_url=redis_url, restore_step_wait_s=30.0,
                            restore_health_timeout_s=10.0, restore_health_poll_s=2.0,
                            drain_timeout_s=20.0, inflight_wait_s=2.0, sweep_interval_s=0)


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def make_ctx(platform: KnativePlatform, fake_time: FakeTime, sink: Sink, redis_url: str,
             settings: FunctionSettings) -> Iterator[Callable[..., Context]]:
    made: list[Context] = []

    def make(**changes: Any) -> Context:
        wiring = {k: changes.pop(k) for k in list(changes) if k in CONTEXT_ARGS}
        s = replace(settings, **changes)
        wiring.setdefault("sink", sink)
        ctx = build_context(s, wiring.pop("platform", platform),
                            breaker_settings=BreakerRegistrySettings(redis_url=redis_url),
                            clock=fake_time.clock, sleep=fake_time.sleep, **wiring)
        made.append(ctx)
        return ctx

    yield make
    for c in made:
        c.close()
        c.http.close()
        c.redis.close()


@pytest.fixture
def ctx(make_ctx: Callable[..., Context]) -> Context:
    return make_ctx()


