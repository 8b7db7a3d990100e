"""HTTP on the client's side of the gateway: which headers travel, how a request body is read
from WSGI, and the shape of the errors the gateway itself answers (JSON, and the SSE error event
that ends a stream that cannot be finished)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

from knative.gateway._upstream import Response as UpstreamResponse

# Hop-by-hop headers, and those the gateway or its server sets itself: never passed on.
HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "date",
        "server",
        "x-surefoot-internal",  # the gateway's own, to the replicas: never a client's
    }
)

_STATUS_TEXT = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Payload Too Large", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class BodyTooLarge(Exception):
    """The request body is larger than the gateway accepts."""


def status_line(code: int) -> str:
    return f"{code} {_STATUS_TEXT.get(code) or http.client.responses.get(code, 'Unknown')}"


def error_body(status: int, kind: str, message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()


def sse_error(status: int, kind: str, message: str) -> bytes:
    """The event a client gets when a stream cannot be finished."""
    return b"data: " + error_body(status, kind, message) + b"\n\n"


def read_body(environ: dict[str, Any], limit: int) -> bytes:
    """The request body, at most ``limit`` bytes (:class:`BodyTooLarge` beyond)."""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    cl = environ.get("CONTENT_LENGTH")
    if cl:
        n = int(cl)
        if n > limit:
            raise BodyTooLarge()
        return bytes(stream.read(n)) if n else b""
    if environ.get("REQUEST_METHOD") == "GET":
        return b""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise BodyTooLarge()
    return bytes(data)


def forward_headers(environ: dict[str, Any], instance: str) -> dict[str, str]:
    """The client's end-to-end headers (lower-cased), marked with this gateway's name."""
    h: dict[str, str] = {}
    for k, v in environ.items():
        if k.startswith("HTTP_"):
            name = k[5:].replace("_", "-").lower()
            if name not in HOP:
                h[name] = v
    ct = environ.get("CONTENT_TYPE")
    if ct:
        h["content-type"] = ct
    h["x-surefoot-gateway"] = instance
    return h


def response_headers(
    resp: UpstreamResponse, revision: str, replica: str
) -> list[tuple[str, str]]:
    """The upstream's end-to-end headers, plus which revision and replica answered."""
    out = [(k, v) for k, v in resp.headers if k.lower() not in HOP]
    out.append(("X-Surefoot-Revision", revision))
    out.append(("X-Surefoot-Replica", replica))
    return out


def respond_error(
    start_response: Callable[..., Any], status: int, kind: str, message: str,
    extra: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    """Answer the gateway's own JSON error."""
    body = error_body(status, kind, message)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if extra:
        headers += extra
    start_response(status_line(status), headers)
    return [body]
