"""Reliable delivery of events over HTTP: retries with backoff, and a dead letter at the end.

Delivery is at-least-once, as in Knative Eventing: a send is retried on timeouts, connection
errors, 5xx, 408 and 429, with exponential (or linear) backoff and jitter; any other 4xx is
permanent. An event that cannot be delivered goes to a dead letter (a JSON-lines file or a URL)
carrying Knative's ``knativeerrordest``, ``knativeerrorcode`` and ``knativeerrordata``
extensions. The HTTP client keeps a pool of keep-alive connections; ``transport`` is the one seam
tests replace.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import httpx

from events._catalog import Event
from events._codec import from_http, is_cloudevent_message, to_binary, to_dict, to_structured
from events._errors import (
    ConfigError,
    DeliveryError,
    EventValidationError,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    UnsupportedContentTypeError,
)

log = logging.getLogger(__name__)

ERROR_DEST = "knativeerrordest"
ERROR_CODE = "knativeerrorcode"
ERROR_DATA = "knativeerrordata"
ERROR_DATA_MAX = 1024  # bytes of the response body kept, as Knative does

MODE_BINARY = "binary"
MODE_STRUCTURED = "structured"


@dataclass(frozen=True)
class RetryPolicy:
    """Knative's DeliverySpec knobs: ``retries`` after the first attempt, ``backoff_delay_s``,
    ``backoff_policy`` (exponential: delay * 2^n, linear: delay * n), plus a cap and jitter
    (the fraction of each delay that is randomized away)."""

    retries: int = 4
    backoff_delay_s: float = 0.2
    backoff_policy: str = "exponential"
    backoff_max_s: float = 10.0
    jitter: float = 0.5

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def delay(self, failures: int, rand: float) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (1-based); rand in [0, 1)."""
        if self.backoff_policy == "linear":
            base = self.backoff_delay_s * failures
        else:
            base = self.backoff_delay_s * (2 ** (failures - 1))
        base = min(base, self.backoff_max_s)
        return max(0.0, base * (1.0 - self.jitter * rand))

    def check(self) -> dict[str, str]:
        errors: dict[str, str] = {}
        if self.retries < 0:
            errors["retry"] = "must be >= 0"
        if self.backoff_delay_s < 0:
            errors["backoffDelay"] = "must be >= 0"
        if self.backoff_policy not in ("exponential", "linear"):
            errors["backoffPolicy"] = "must be exponential or linear"
        if not 0.0 <= self.jitter <= 1.0:
            errors["jitter"] = "must be within 0..1"
        return errors


@dataclass(frozen=True)
class SenderSettings:
    """``dead_letter``: a file path (JSON lines) or an http(s) URL; None drops failed events
    after logging them."""

    timeout_s: float = 5.0
    mode: str = MODE_BINARY
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    dead_letter: str | None = None
    max_connections: int = 32
    user_agent: str = "surefoot-events"


@dataclass(frozen=True)
class DeliveryResult:
    event_id: str
    url: str
    ok: bool
    attempts: int
    status: int | None = None
    reply: Event | None = None
    error: str | None = None
    dead_lettered: bool = False


_ISO_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def parse_duration(text: str) -> float:
    """ISO 8601 duration (``PT0.2S``, ``PT1M``, ``P1D``) -> seconds; ValueError when malformed."""
    m = _ISO_DURATION.match(text.strip()) if isinstance(text, str) else None
    if not m or text.strip() in ("P", "PT") or text.strip().endswith("T"):
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    d, h, mi, s = (float(m.group(g) or 0) for g in ("d", "h", "m", "s"))
    return d * 86400 + h * 3600 + mi * 60 + s


def classify_status(status: int) -> str:
    """'ok', 'temporary' or 'permanent' for an HTTP status."""
    if 200 <= status < 300:
        return "ok"
    if status >= 500 or status in (408, 429):
        return "temporary"
    return "permanent"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


_USE_OWN: Any = object()  # marker: the sender's own dead letter
_BODY_IN_ERROR = 300  # characters of a failed answer's body kept in the error text


def _status_text(resp: httpx.Response) -> str:
    """``HTTP 503`` and why the subscriber said so (its JSON ``error``, else the start of its
    body), so a log line about a failed delivery carries the cause."""
    text = f"HTTP {resp.status_code}"
    why = ""
    try:
        doc = resp.json()
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            why = doc["error"]
    except ValueError:
        why = resp.content[:_BODY_IN_ERROR].decode("utf-8", "replace")
    why = " ".join(why.split())[:_BODY_IN_ERROR]
    return f"{text}: {why}" if why else text


class DeadLetter(Protocol):
    def put(self, event: Event) -> None:
        """Store ``event`` (already carrying the knativeerror* extensions)."""


def with_error_extensions(event: Event, *, dest: str, code: int | None, body: bytes) -> Event:
    ext = {ERROR_DEST: dest}
    if code is not None:
        ext[ERROR_CODE] = str(code)
    if body:
        ext[ERROR_DATA] = base64.b64encode(body[:ERROR_DATA_MAX]).decode()
    return event.with_extensions(**ext)


class FileDeadLetter:
    """Appends one structured-mode JSON document per line; safe across threads and processes
    (one ``write`` of a whole line on an O_APPEND descriptor)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def put(self, event: Event) -> None:
        line = (json.dumps(to_dict(event), separators=(",", ":")) + "\n").encode()
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)


def read_dead_letters(path: str) -> list[Event]:
    """The events in a dead-letter file (for tests, drills and operators)."""
    from events._codec import from_dict

    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                out.append(from_dict(json.loads(line), accept=None))
    return out


class UrlDeadLetter:
    """Sends dead letters to a URL with the same sender (retries, but no further dead letter)."""

    def __init__(self, url: str, sender: Sender) -> None:
        self.url = url
        self._sender = sender

    def put(self, event: Event) -> None:
        result = self._sender.send(event, self.url, dead_letter=None)
        if not result.ok:
            log.error("dead letter to %s failed for event %s: %s", self.url, event.id, result.error)


class Sender:
    """Posts events; thread-safe; one keep-alive connection pool per sender.

    ``sleep`` and ``rand`` are injectable so tests never wait for real backoff.
    """

    def __init__(
        self,
        settings: SenderSettings | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        dead_letter: DeadLetter | None = None,
    ) -> None:
        self.settings = settings or SenderSettings()
        problems = self.settings.retry.check()
        if self.settings.mode not in (MODE_BINARY, MODE_STRUCTURED):
            problems["mode"] = "must be binary or structured"
        if problems:
            raise ConfigError(problems, message="invalid sender settings")
        self._sleep = sleep
        self._rand = rand
        limits = httpx.Limits(
            max_connections=self.settings.max_connections,
            max_keepalive_connections=self.settings.max_connections,
        )
        self._client = httpx.Client(
            transport=transport,
            timeout=httpx.Timeout(self.settings.timeout_s),
            limits=limits,
            headers={"user-agent": self.settings.user_agent},
        )
        if dead_letter is None and self.settings.dead_letter:
            dead_letter = make_dead_letter(self.settings.dead_letter, self)
        self.dead_letter = dead_letter

    def __enter__(self) -> Sender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def encode(self, event: Event) -> tuple[dict[str, str], bytes]:
        msg = to_structured(event) if self.settings.mode == MODE_STRUCTURED else to_binary(event)
        return msg.headers, msg.body

    def send_once(self, event: Event, url: str) -> tuple[int, Event | None]:
        """One POST. Returns (status, reply event or None); raises TemporaryDeliveryError or
        PermanentDeliveryError."""
        headers, body = self.encode(event)
        return self.post_encoded(url, headers, body)

    def post_encoded(
        self, url: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Event | None]:
        try:
            resp = self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TemporaryDeliveryError(f"timeout: {type(exc).__name__}", url=url) from None
        except httpx.UnsupportedProtocol as exc:
            raise PermanentDeliveryError(f"invalid URL: {exc}", url=url) from None
        except httpx.TransportError as exc:
            raise TemporaryDeliveryError(
                f"transport error: {type(exc).__name__}: {exc}", url=url
            ) from None
        except httpx.InvalidURL as exc:
            raise PermanentDeliveryError(f"invalid URL: {exc}", url=url) from None
        verdict = classify_status(resp.status_code)
        if verdict == "temporary":
            raise TemporaryDeliveryError(
                _status_text(resp), url=url, status=resp.status_code, body=resp.content,
                retry_after=_retry_after(resp.headers.get("retry-after")),
            )
        if verdict == "permanent":
            raise PermanentDeliveryError(
                _status_text(resp), url=url, status=resp.status_code, body=resp.content
            )
        reply = None
        if resp.content and is_cloudevent_message(resp.headers):
            try:
                reply = from_http(dict(resp.headers.items()), resp.content, accept=None)
            except (EventValidationError, UnsupportedContentTypeError) as exc:
                log.warning("ignoring malformed reply event from %s: %s", url, exc)
        return resp.status_code, reply

    def send(
        self,
        event: Event,
        url: str,
        *,
        retry: RetryPolicy | None = None,
        dead_letter: DeadLetter | None = _USE_OWN,
    ) -> DeliveryResult:
        """Deliver with retries; on final failure hand the event to the dead letter.

        ``dead_letter`` defaults to the sender's own; pass ``None`` explicitly to skip it.
        """
        policy = retry or self.settings.retry
        headers, body = self.encode(event)
        attempts = 0
        last: DeliveryError | None = None
        while attempts < policy.max_attempts:
            attempts += 1
            try:
                status, reply = self.post_encoded(url, headers, body)
                return DeliveryResult(event.id, url, True, attempts, status=status, reply=reply)
            except PermanentDeliveryError as exc:
                last = exc
                break
            except TemporaryDeliveryError as exc:
                last = exc
                if attempts >= policy.max_attempts:
                    break
                wait = policy.delay(attempts, self._rand())
                if exc.retry_after is not None:
                    wait = max(wait, min(exc.retry_after, policy.backoff_max_s))
                log.debug("event %s to %s failed (%s), retry in %.3fs", event.id, url, exc, wait)
                self._sleep(wait)
        assert last is not None
        sink = self.dead_letter if dead_letter is _USE_OWN else dead_letter
        dead = False
        if sink is not None:
            try:
                sink.put(with_error_extensions(event, dest=url, code=last.status, body=last.body))
                dead = True
            except OSError as exc:
                log.error("dead letter failed for event %s: %s", event.id, exc)
        else:
            log.error("dropping event %s (%s) after %d attempts to %s: %s",
                      event.id, event.type, attempts, url, last)
        return DeliveryResult(event.id, url, False, attempts, status=last.status,
                              error=str(last), dead_lettered=dead)


def make_dead_letter(target: str, sender: Sender) -> DeadLetter:
    if target.startswith(("http://", "https://")):
        return UrlDeadLetter(target, sender)
    return FileDeadLetter(target)


def with_retry(settings: SenderSettings, **changes: object) -> SenderSettings:
    return replace(settings, retry=replace(settings.retry, **changes))  # type: ignore[arg-type]


class Publisher:
    """Sends events to one URL from a background thread, so a slow or dead sink never stalls
    the caller (a source's detection loop). Calling it enqueues; ``close`` drains."""

    def __init__(self, sender: Sender, url: str, *, max_queue: int = 10_000) -> None:
        self.sender = sender
        self.url = url
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=max_queue)
        self.results: deque[DeliveryResult] = deque(maxlen=100)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            log.error("publisher queue full: dropping event %s (%s)", event.id, event.type)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            result = self.sender.send(event, self.url)
            self.results.append(result)
            if result.ok:
                self.sent += 1
            else:
                self.failed += 1

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (up to ``timeout`` seconds), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.error("publisher: %d event(s) still queued at close", self._queue.qsize())
            return
        self._thread.join(timeout)
