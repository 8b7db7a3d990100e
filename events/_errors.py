"""Typed errors of the events package.

Every failure is either *temporary* (worth a retry: a timeout, a 5xx, a hung NVML call) or
*permanent* (retrying cannot help: a malformed event, a 4xx, a missing driver). Callers branch on
these two classes only; lower libraries' exceptions (httpx, pynvml, kubernetes) never leak out.
"""

from __future__ import annotations

from collections.abc import Mapping


class EventsError(Exception):
    """Base of every error raised by the events package."""


class TemporaryError(EventsError):
    """A failure that may go away: retry with backoff."""


class PermanentError(EventsError):
    """A failure that a retry cannot fix: dead-letter or report it."""


class EventValidationError(PermanentError):
    """An event (or its HTTP message) is malformed; ``errors`` names every bad field at once.

    Keys are attribute names (``id``, ``specversion``, ...), ``data`` / ``data.<field>`` for the
    payload, or ``body`` when the message could not be parsed at all.
    """

    def __init__(self, errors: Mapping[str, str], message: str = "invalid CloudEvent") -> None:
        self.errors: dict[str, str] = dict(errors)
        detail = "; ".join(f"{k}: {v}" for k, v in self.errors.items())
        super().__init__(f"{message}: {detail}" if detail else message)
        self.message = message


class UnsupportedContentTypeError(PermanentError):
    """The HTTP message is in neither binary nor structured (JSON) content mode (HTTP 415)."""

    def __init__(self, content_type: str | None) -> None:
        self.content_type = content_type
        super().__init__(
            f"unsupported Content-Type {content_type!r}: send ce-* headers (binary mode) or "
            "application/cloudevents+json (structured mode)"
        )


class PayloadTooLargeError(PermanentError):
    """The HTTP body is larger than the receiver accepts (HTTP 413)."""

    def __init__(self, size: int | None, limit: int) -> None:
        self.size = size
        self.limit = limit
        got = f"{size} bytes" if size is not None else "more"
        super().__init__(f"body too large: {got}, limit {limit} bytes")


class DeliveryError(EventsError):
    """Sending an event failed. ``status`` is the HTTP status, or None when there was no answer."""

    def __init__(
        self, message: str, *, url: str, status: int | None = None, body: bytes = b""
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.body = body


class TemporaryDeliveryError(DeliveryError, TemporaryError):
    """Connection refused, timeout, 5xx, 408 or 429: retried by the sender."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        body: bytes = b"",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, url=url, status=status, body=body)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError, PermanentError):
    """Any other 4xx (or a 3xx): the subscriber rejected the event; dead-lettered at once."""


class ConfigError(PermanentError):
    """A configuration (trigger file, settings) is invalid; ``errors`` names every bad field."""

    def __init__(self, errors: Mapping[str, str], message: str = "invalid configuration") -> None:
        self.errors = dict(errors)
        detail = "; ".join(f"{k}: {v}" for k, v in self.errors.items())
        super().__init__(f"{message}: {detail}" if detail else message)


class ProbeError(TemporaryError):
    """A GPU probe call failed in a way that may pass (NVML error other than the ones below)."""


class ProbeTimeoutError(ProbeError):
    """An NVML call did not return before its deadline (the watchdog gave up waiting)."""


class GpuLostError(ProbeError):
    """The driver reports the GPU as lost (``NVMLError_GpuIsLost``) or fallen off the bus."""

    def __init__(self, gpu: int | None, message: str = "GPU is lost") -> None:
        super().__init__(message)
        self.gpu = gpu


class DriverNotFoundError(PermanentError):
    """No NVIDIA driver / NVML library on this machine (or pynvml is not importable)."""
