"""Every error of the kubernetes client as one of the seam's error types, with a message that
says what was being done and what the API server answered."""

from __future__ import annotations

import json
from typing import Any

from knative.platforms import (
    Conflict,
    NotFound,
    PermanentPlatformError,
    PlatformError,
    TemporaryPlatformError,
    TooManyRequests,
    Unauthorized,
)


def status_message(exc: Any) -> str:
    """The API server's own message (and causes) from an ``ApiException``."""
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
        except (TypeError, ValueError):
            text = str(body).strip()
            return text[:300]
        if isinstance(data, dict):
            msg = str(data.get("message") or data.get("reason") or "")
            causes = (data.get("details") or {}).get("causes") or []
            extra = "; ".join(str(c.get("message")) for c in causes if c.get("message"))
            return f"{msg} ({extra})" if extra else msg
    return str(getattr(exc, "reason", "") or exc)


def map_api_error(exc: BaseException, what: str) -> PlatformError:
    """The platform error for an exception from the kubernetes client while doing ``what``."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, PlatformError):
        return exc
    if not (isinstance(exc, ApiException) and exc.status):
        return TemporaryPlatformError(f"{what}: cannot reach the Kubernetes API: {exc}")
    code = int(exc.status)
    message = f"{what}: HTTP {code}: {status_message(exc)}"
    if code in (401, 403):
        hint = (
            "the credentials were rejected"
            if code == 401
            else "the service account's RBAC rules do not allow it"
        )
        return Unauthorized(f"{message} ({hint})")
    by_code: dict[int, type[PlatformError]] = {
        404: NotFound, 409: Conflict, 429: TooManyRequests, 408: TemporaryPlatformError,
    }
    if code in by_code:
        return by_code[code](message)
    if code >= 500:
        return TemporaryPlatformError(message)
    return PermanentPlatformError(message)
