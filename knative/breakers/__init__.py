"""Circuit breakers shared through Redis (one per revision, node or replica), their
CloudEvents, and the embedded Redis server that ``surefoot up`` runs them on."""

from knative.breakers._access import check_credentials, redacted
from knative.breakers._durable import DurableBreakers, DurableHome, FileHome
from knative.breakers._events import CloudEventSink
from knative.breakers._redis import EmbeddedRedis, RedisStartError
from knative.breakers._registry import BreakerRegistry
from knative.breakers._settings import BreakerRegistrySettings, BreakerSettings
from knative.breakers._states import (
    ACTIONS,
    STATES,
    BreakerError,
    BreakerStatus,
    BreakerUnavailable,
    InvalidBreakerKey,
    InvalidBreakerSettings,
    Permit,
    Transition,
    TransitionHook,
    check_key,
    keys_for,
    node_key,
    replica_key,
    revision_key,
)
from knative.breakers._store import BreakerStore

__all__ = [
    "ACTIONS",
    "STATES",
    "BreakerError",
    "BreakerRegistry",
    "BreakerRegistrySettings",
    "BreakerSettings",
    "BreakerStatus",
    "BreakerStore",
    "BreakerUnavailable",
    "CloudEventSink",
    "DurableBreakers",
    "DurableHome",
    "EmbeddedRedis",
    "FileHome",
    "InvalidBreakerKey",
    "InvalidBreakerSettings",
    "Permit",
    "RedisStartError",
    "Transition",
    "TransitionHook",
    "check_credentials",
    "check_key",
    "keys_for",
    "node_key",
    "redacted",
    "replica_key",
    "revision_key",
]
