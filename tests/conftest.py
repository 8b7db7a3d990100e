"""Fakes and fixtures shared by every test package: a real Redis server, free ports, a clock
that moves only when the code under test sleeps, a poll for conditions met by other processes,
and the fake Kubernetes API with a ``KnativePlatform`` over it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from knative.breakers import EmbeddedRedis
from knative.platforms.kube import KnativePlatform
from tests.kube_fake import FakeKubeServer


class FakeTime:
    """A wall clock that moves only when the code under test sleeps (or the test says so);
    ``on_sleep`` is called with each sleep's seconds, after the clock moved."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[float], None] | None = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_for(pred: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something true (a condition that real processes meet:
    a replica ready, a port answering); fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One real redis-server for the session; tests use distinct keys or flush."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    import redis

    redis.Redis.from_url(redis_server.url).flushdb()
    return redis_server.url


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    """The fake Kubernetes API server (Knative's rules where the project depends on them)."""
    with FakeKubeServer() as server:
        yield server


@pytest.fixture
def platform(kube: FakeKubeServer, fake_time: FakeTime) -> KnativePlatform:
    """``KnativePlatform`` on the fake API, sleeping on the fake clock."""
    return KnativePlatform(kube.api_client(), "default", sleep=fake_time.sleep,
                           clock=fake_time.clock)
