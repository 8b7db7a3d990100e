"""A CloudEvents HTTP receiver as a Flask building block.

The functions host, the local broker's ingress and the sources' test subscribers all need the
same thing: accept a POST in binary or structured mode, refuse bad input with a JSON answer that
names every bad field (400), an oversized body (413) or a non-CloudEvents content type (415), call
a handler, and answer 202 — or 200 with a reply event in binary mode (Knative's reply pattern).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Request, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from events._catalog import Event, is_accepted_type
from events._codec import from_http, to_binary, to_structured
from events._errors import (
    EventValidationError,
    PayloadTooLargeError,
    PermanentError,
    TemporaryError,
    UnsupportedContentTypeError,
)
from events._knative import KnativeMapper, is_knative

log = logging.getLogger(__name__)

Handler = Callable[[Event], "Event | None"]


@dataclass(frozen=True)
class ReceiverSettings:
    """How a receiver judges input.

    ``strict_types``: refuse (400) types outside the Surefoot catalog and Knative's ApiServer /
    Ping types. ``map_knative``: hand the handler the Surefoot events a Knative event maps to
    (one call per mapped event). ``reply_structured``: send reply events in structured mode.
    """

    max_body_bytes: int = 1 << 20
    strict_types: bool = True
    map_knative: bool = False
    reply_structured: bool = False


def read_event(req: Request, settings: ReceiverSettings) -> Event:
    """Parse the current request into an Event, or raise a typed error."""
    limit = settings.max_body_bytes
    if req.content_length is not None and req.content_length > limit:
        raise PayloadTooLargeError(req.content_length, limit)
    body = req.stream.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLargeError(None, limit)
    accept = is_accepted_type if settings.strict_types else None
    return from_http(dict(req.headers.items()), body, accept=accept)


def event_response(reply: Event | None, *, structured: bool = False) -> Response:
    """202 with no body, or 200 carrying the reply event (binary mode unless structured)."""
    if reply is None:
        return Response(status=202)
    message = to_structured(reply) if structured else to_binary(reply)
    return Response(message.body, status=200, headers=message.headers)


def error_body(status: int, message: str, fields: dict[str, str] | None = None) -> Response:
    payload: dict[str, Any] = {"error": message}
    if fields:
        payload["fields"] = fields
    resp = jsonify(payload)
    resp.status_code = status
    return resp


def install_error_handlers(target: Flask | Blueprint) -> None:
    """JSON error answers, one handler per exception class."""

    @target.errorhandler(EventValidationError)
    def _invalid(exc: EventValidationError) -> Response:
        return error_body(400, exc.message, exc.errors)

    @target.errorhandler(UnsupportedContentTypeError)
    def _unsupported(exc: UnsupportedContentTypeError) -> Response:
        return error_body(415, str(exc), {"content-type": str(exc)})

    @target.errorhandler(PayloadTooLargeError)
    def _too_large(exc: PayloadTooLargeError) -> Response:
        return error_body(413, str(exc), {"body": str(exc)})

    @target.errorhandler(RequestEntityTooLarge)
    def _too_large_werkzeug(exc: RequestEntityTooLarge) -> Response:
        return error_body(413, "body too large", {"body": "too large"})

    @target.errorhandler(TemporaryError)
    def _temporary(exc: TemporaryError) -> Response:
        resp = error_body(503, f"temporary failure: {exc}")
        resp.headers["Retry-After"] = "1"
        return resp

    @target.errorhandler(PermanentError)
    def _permanent(exc: PermanentError) -> Response:
        return error_body(422, f"event rejected: {exc}")

    @target.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response | HTTPException:
        if isinstance(exc, HTTPException):
            return exc
        log.exception("event handler failed")
        return error_body(500, f"handler failed: {type(exc).__name__}")


class _Dispatch:
    def __init__(self, handler: Handler, settings: ReceiverSettings) -> None:
        self.handler = handler
        self.settings = settings
        self.mapper = KnativeMapper() if settings.map_knative else None
        self.lock = threading.Lock()

    def __call__(self) -> Response:
        event = read_event(request, self.settings)
        events = [event]
        if self.mapper is not None and is_knative(event):
            with self.lock:
                events = self.mapper.map(event)
            if not events:
                log.debug("knative event %s (%s) maps to nothing", event.id, event.type)
        reply: Event | None = None
        for ev in events:
            out = self.handler(ev)
            if out is not None:
                reply = out
        return event_response(reply, structured=self.settings.reply_structured)


def receiver_blueprint(
    name: str,
    handler: Handler,
    settings: ReceiverSettings | None = None,
    *,
    rule: str = "/",
    url_prefix: str | None = None,
) -> Blueprint:
    """A Blueprint that receives CloudEvents with POST at ``rule`` and calls ``handler``.

    The handler gets a validated Event and returns a reply Event or None. It may raise
    TemporaryError (answered 503, the sender retries) or PermanentError (422, dead-lettered).
    """
    settings = settings or ReceiverSettings()
    bp = Blueprint(name, __name__, url_prefix=url_prefix)
    bp.add_url_rule(rule, endpoint="receive", view_func=_Dispatch(handler, settings),
                    methods=["POST"])
    install_error_handlers(bp)
    return bp


def create_app(settings: ReceiverSettings | None, handler: Handler) -> Flask:
    """A Flask app: POST / receives events, GET /healthz answers 200."""
    settings = settings or ReceiverSettings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.register_blueprint(receiver_blueprint("events", handler, settings))
    install_error_handlers(app)

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    return app
