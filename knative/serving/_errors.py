"""Every error a replica answers, as OpenAI's error object with the right HTTP status.

Validation errors are 400 (404 for an unknown model) and name their field; a replica that
cannot take the request now answers a retryable 503 with ``Retry-After``; a backend failure is
500. Unknown routes and methods are JSON too, so every client parses one shape.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from knative.serving import _openai as oa
from knative.serving._backends import BackendError, ContextOverflow, EngineBusy
from knative.serving._liveness import ClientGone
from knative.serving._runtime import Runtime, Unavailable

log = logging.getLogger(__name__)


class UnsupportedType(Exception):
    """The request body is not ``application/json`` (HTTP 415); the message is its type."""


def error_reply(status: int, message: str, etype: str, param: str | None = None,
                code: str | None = None, headers: dict[str, str] | None = None) -> Response:
    resp = jsonify(oa.error_body(message, etype, param, code))
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


class ErrorReplies:
    """The app-wide error handlers of one replica."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def blueprint(self) -> Blueprint:
        bp = Blueprint("errors", __name__)
        bp.app_errorhandler(oa.RequestInvalid)(self.invalid)
        bp.app_errorhandler(ContextOverflow)(self.overflow)
        bp.app_errorhandler(Unavailable)(self.unavailable)
        bp.app_errorhandler(EngineBusy)(self.busy)
        bp.app_errorhandler(BackendError)(self.backend)
        bp.app_errorhandler(RequestEntityTooLarge)(self.too_large)
        bp.app_errorhandler(HTTPException)(self.http)
        bp.app_errorhandler(UnsupportedType)(self.unsupported)
        bp.app_errorhandler(ClientGone)(self.gone)
        return bp

    def invalid(self, exc: oa.RequestInvalid) -> Response:
        code = "model_not_found" if isinstance(exc, oa.ModelNotFound) else None
        body = oa.error_body(str(exc), exc.error_type, exc.param, code)
        body["error"]["fields"] = [{"param": e.param, "message": e.message} for e in exc.errors]
        resp = jsonify(body)
        resp.status_code = exc.status
        return resp

    def overflow(self, exc: ContextOverflow) -> Response:
        return error_reply(400, str(exc), "invalid_request_error", exc.param,
                           "context_length_exceeded")

    def unavailable(self, exc: Unavailable) -> Response:
        return error_reply(503, str(exc), "unavailable", None, exc.code,
                           {"Retry-After": str(exc.retry_after)})

    def busy(self, exc: EngineBusy) -> Response:
        self.rt.metrics.rejected.labels("engine_busy").inc()
        return error_reply(503, str(exc), "unavailable", None, "engine_busy",
                           {"Retry-After": "1"})

    def backend(self, exc: BackendError) -> Response:
        log.exception("backend error")
        return error_reply(500, f"model backend failed: {exc}", "server_error")

    def too_large(self, exc: RequestEntityTooLarge) -> Response:
        return error_reply(413, f"request body exceeds {self.rt.settings.max_body_bytes} bytes",
                           "invalid_request_error", "body")

    def http(self, exc: HTTPException) -> Response:
        return error_reply(exc.code or 500, exc.description or exc.name, "invalid_request_error")

    def gone(self, exc: ClientGone) -> Response:
        """Nobody reads it: 499, the status proxies log for a client that closed first."""
        log.info("client hung up before its answer began")
        return error_reply(499, str(exc), "client_closed_request")

    def unsupported(self, exc: UnsupportedType) -> Response:
        return error_reply(415, f"Content-Type must be application/json, got {exc}",
                           "invalid_request_error", "Content-Type")
