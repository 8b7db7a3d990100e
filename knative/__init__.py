"""Serving on Knative: the replica app, the gateway and its breakers, manifests, and the
platform seam with its Knative and local implementations."""

from knative._platform import (
    Conflict,
    EvictionReport,
    Node,
    NotFound,
    PermanentPlatformError,
    Platform,
    PlatformError,
    Replica,
    Target,
    TemporaryPlatformError,
    TooManyRequests,
    Unauthorized,
    validate_traffic,
)
from knative._redis import EmbeddedRedis, RedisStartError

__all__ = [
    "Conflict",
    "EmbeddedRedis",
    "EvictionReport",
    "Node",
    "NotFound",
    "PermanentPlatformError",
    "Platform",
    "PlatformError",
    "RedisStartError",
    "Replica",
    "Target",
    "TemporaryPlatformError",
    "TooManyRequests",
    "Unauthorized",
    "validate_traffic",
]
