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
from knative._backends import (
    BackendError,
    ContextOverflow,
    EmbeddingBackend,
    EngineBusy,
    GenerationBackend,
    LlamaCppBackend,
    ModelLoadError,
    SentenceTransformerBackend,
)
from knative._redis import EmbeddedRedis, RedisStartError
from knative._replica import Runtime, Unavailable, create_app, load_models, runtime_of
from knative._serve_settings import ServeSettings, SettingsError

__all__ = [
    "BackendError",
    "ContextOverflow",
    "EmbeddingBackend",
    "EngineBusy",
    "GenerationBackend",
    "LlamaCppBackend",
    "ModelLoadError",
    "Runtime",
    "SentenceTransformerBackend",
    "ServeSettings",
    "SettingsError",
    "Unavailable",
    "create_app",
    "load_models",
    "runtime_of",
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
