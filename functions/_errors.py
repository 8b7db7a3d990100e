"""The functions' errors: temporary (the broker redelivers) or permanent (dead letter).

They subclass the events package's two classes, so the CloudEvents receiver already answers
them the Knative way: a temporary error is HTTP 503 (the broker retries with backoff), a
permanent one 422 (the broker dead-letters it at once). Lower errors — the platform's, the
breaker store's, Redis's, httpx's — are mapped here and never leak out of a function.
"""

from __future__ import annotations

import httpx
import redis

from events import PermanentError, TemporaryError
from knative import PlatformError
from knative.breakers import BreakerError


class FunctionError(Exception):
    """Base of the functions' own errors."""


class TemporaryFunctionError(FunctionError, TemporaryError):
    """Worth a retry: an API server or Redis that did not answer, a 409, a 429, a 5xx."""


class PermanentFunctionError(FunctionError, PermanentError):
    """A retry cannot help: 403 from the API server, a missing object, a wrong admin token."""


def map_error(exc: BaseException, what: str) -> FunctionError:
    """The function error for ``exc`` raised while doing ``what``."""
    if isinstance(exc, FunctionError):
        return exc
    if isinstance(exc, PlatformError):
        cls = TemporaryFunctionError if exc.temporary else PermanentFunctionError
        return cls(f"{what}: {exc}")
    if isinstance(exc, BreakerError):
        cls = TemporaryFunctionError if exc.temporary else PermanentFunctionError
        return cls(f"{what}: {exc}")
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        return TemporaryFunctionError(f"{what}: Redis did not answer: {exc}")
    if isinstance(exc, redis.RedisError):
        return TemporaryFunctionError(f"{what}: Redis failed: {exc}")
    if isinstance(exc, httpx.HTTPError):
        return TemporaryFunctionError(f"{what}: {type(exc).__name__}: {exc}")
    raise TypeError(f"not a mapped error type: {type(exc).__name__}") from exc


#: What function code catches and hands to :func:`map_error`; anything else is a bug and
#: reaches the receiver as HTTP 500 (which the broker also retries).
MAPPED = (PlatformError, BreakerError, redis.RedisError, httpx.HTTPError)
