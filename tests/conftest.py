"""Fixtures shared by every test package: a real Redis server, free ports."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from knative.breakers import EmbeddedRedis


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
