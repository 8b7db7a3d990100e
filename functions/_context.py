"""What a function is handed besides its event, and what it hands back.

A function is ``handle(event, context) -> Outcome``. The :class:`Context` carries everything
that touches the world — the settings, the platform, Redis and the breaker store, an HTTP client,
a clock and a sleep, a sink for extra events — so tests replace each piece and ``surefoot up``
can run the same functions in-process on the local platform. The :class:`Outcome` says what the
function did and carries the CloudEvent that reports it (the HTTP reply, Knative-style).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, Unpack

import httpx
import redis

from events import Event, EventData, build
from functions._errors import PermanentFunctionError
from functions._settings import FunctionSettings
from knative import Platform
from knative.breakers import BreakerRegistrySettings, BreakerStore

log = logging.getLogger(__name__)

# Outcome statuses.
ACTED = "acted"  # the function changed something (the reply says what)
NOOP = "noop"  # nothing to do (benign event, already in that state, opted out, capped)
DRY_RUN = "dry_run"  # dry-run mode: the reply says what would have been done
DEFERRED = "deferred"  # scheduled for later (a hold time, a drain that must wait)
DUPLICATE = "duplicate"  # this event id was handled before: the stored reply again
STATUSES = (ACTED, NOOP, DRY_RUN, DEFERRED, DUPLICATE)

Sink = Callable[[Event], None]


class CanaryControl(Protocol):
    """Traffic steering of a KServe InferenceService (its ``canaryTrafficPercent``)."""

    def canary_percent(self, isvc: str) -> int | None:
        """The current canaryTrafficPercent, or None when unset (100% to the latest)."""
        ...

    def set_canary_percent(self, isvc: str, percent: int) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What one function did with one event.

    ``reply`` is the CloudEvent that reports it (sent back in the HTTP response); ``extra``
    are further events for the sink (e.g. one ``checkpoint.saved`` per replica beyond the
    first). ``reason`` is one human line.
    """

    function: str
    status: str
    reason: str = ""
    reply: Event | None = None
    extra: tuple[Event, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def acted(self) -> bool:
        return self.status == ACTED

    @property
    def events(self) -> tuple[Event, ...]:
        return ((self.reply,) if self.reply is not None else ()) + self.extra


class Context:
    """Everything a function may touch. Build it once per process (``build_context``)."""

    def __init__(
        self,
        settings: FunctionSettings,
        platform: Platform,
        redis_client: redis.Redis,
        breakers: BreakerStore,
        http: httpx.Client,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        sink: Sink | None = None,
        canary: CanaryControl | None = None,
    ) -> None:
        self.settings = settings
        self.platform = platform
        self.redis = redis_client
        self.breakers = breakers
        self.http = http
        self.clock = clock
        self.sleep = sleep
        self.sink = sink
        self.canary = canary
        self.leases = LeaseKeeper(redis_client, settings.lease_s)
        self._scripts: dict[str, Any] = {}

    def script(self, source: str) -> Any:
        """A registered Lua script (EVALSHA, loaded once per connection pool)."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = self.redis.register_script(source)
        return found

    def key(self, *parts: str) -> str:
        """A Redis key under the functions' prefix."""
        return ":".join((self.settings.redis_prefix, *parts))

    def source(self, function: str) -> str:
        return f"{self.settings.source}/{function}"

    def event(self, function: str, payload: EventData, *, id: str | None = None,
              extensions: Mapping[str, str] | None = None) -> Event:
        """A reply event of ``function`` (deterministic ``id`` when given)."""
        return build(payload, source=self.source(function), id=id or str(uuid.uuid4()),
                     extensions=extensions)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to the sink now (progress events); logged and dropped without one."""
        if self.sink is None:
            log.info("no sink for event %s (%s %s)", event.id, event.type, event.subject)
            return
        try:
            self.sink(event)
        except Exception:  # a broken sink must not fail the action that already happened
            log.exception("sink failed for event %s (%s)", event.id, event.type)

    def close(self) -> None:
        self.leases.close()


class ContextParts(TypedDict, total=False):
    """The pieces of a :class:`Context` that :func:`build_context` makes when not given."""

    redis_client: redis.Redis | None
    breakers: BreakerStore | None
    breaker_settings: BreakerRegistrySettings | None
    http: httpx.Client | None
    transport: httpx.BaseTransport | None
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    sink: Sink | None
    canary: CanaryControl | None


def build_context(
    settings: FunctionSettings, platform: Platform, **parts: Unpack[ContextParts]
) -> Context:
    """A Context with default clients for the ``parts`` not given (Redis from ``redis_url``,
    an HTTP client over ``transport``). ``breaker_settings`` must be the ones the gateways use
    (``BreakerRegistrySettings.from_env(os.environ)`` in the entry point): the breaker policy
    travels with every script call."""
    redis_client = parts.get("redis_client")
    if redis_client is None:
        if not settings.redis_url:
            raise PermanentFunctionError("redis_url: set SUREFOOT_REDIS_URL (the shared Redis)")
        redis_client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
    breakers = parts.get("breakers")
    if breakers is None:
        bs = parts.get("breaker_settings") or BreakerRegistrySettings(
            redis_url=settings.redis_url or "redis://127.0.0.1:6379/0"
        )
        breakers = BreakerStore(redis_client, bs)
    http = parts.get("http")
    if http is None:
        http = httpx.Client(
            timeout=httpx.Timeout(settings.snapshot_timeout_s, connect=5.0),
            transport=parts.get("transport"),
        )
    return Context(settings, platform, redis_client, breakers, http,
                   clock=parts.get("clock", time.time), sleep=parts.get("sleep", time.sleep),
                   sink=parts.get("sink"), canary=parts.get("canary"))


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class LeaseKeeper:
    """Keeps the claims of events being handled alive while their handlers run.

    A claim (see ``functions._once``) expires after ``lease_s`` so a crashed handler does not
    block redelivery for long; a live handler that runs longer (a drain, a stepwise restore)
    has its claims renewed every third of the lease by one background thread.
    """

    def __init__(self, client: redis.Redis, lease_s: float) -> None:
        self.client = client
        self.lease_ms = max(1, int(lease_s * 1000))
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._renew = client.register_script(_RENEW)

    def hold(self, key: str, value: str) -> None:
        with self._lock:
            self._held[key] = value
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="functions-leases",
                                                daemon=True)
                self._thread.start()

    def drop(self, key: str) -> None:
        with self._lock:
            self._held.pop(key, None)

    def held(self) -> dict[str, str]:
        with self._lock:
            return dict(self._held)

    def renew_all(self) -> None:
        for key, value in self.held().items():
            try:
                self._renew(keys=[key], args=[value, self.lease_ms])
            except redis.RedisError as exc:
                log.warning("could not renew the claim %s: %s", key, exc)

    def _run(self) -> None:
        period = self.lease_ms / 3000.0
        while not self._stop.wait(period):
            self.renew_all()

    def close(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(2.0)
