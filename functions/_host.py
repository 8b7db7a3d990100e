"""The functions host: every function over HTTP, Knative-style, in one process.

``surefoot functions`` serves this app; ``surefoot up`` mounts it in-process on the local
platform. Each function has its own path (``POST /trip_breaker``, ...), which is what a broker
Trigger points at; ``POST /`` dispatches by event type (and maps Knative ApiServerSource events
onto the Surefoot catalog first). Events are received by the events package's CloudEvents
receiver: a malformed event gets 400 naming every bad field. The answer is Knative's reply
pattern: 200 with the reply event in binary mode, or 202 when the function did nothing; a
temporary failure is 503 (the broker redelivers), a permanent one 422 (dead letter). Headers
``Surefoot-Function``, ``Surefoot-Outcome`` and ``Surefoot-Reason`` say what happened either way.

Beside the functions: ``POST /dead-letter`` keeps what the broker gave up on (a bounded list in
Redis, ``GET`` reads it back), ``/admin/*`` (bearer ``admin_token`` when set) releases a node
and shows the quarantines and deferred actions, and a sweeper thread runs deferred actions
(hold times, paused restores, deferred drains) every ``sweep_interval_s``.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import redis
from flask import Blueprint, Flask, Response, g, jsonify, request

from events import (
    KNATIVE_PING,
    Event,
    EventValidationError,
    HttpServer,
    PermanentError,
    ReceiverSettings,
    TemporaryError,
    Trigger,
    from_http,
    receiver_blueprint,
    to_dict,
)
from functions import quarantine_node, reroute_traffic, snapshot_checkpoint, trip_breaker
from functions._context import NOOP, Context, Outcome
from functions._once import run_handoffs
from functions._settings import FunctionSettings
from functions._state import deferred

log = logging.getLogger(__name__)

FUNCTIONS: Mapping[str, ModuleType] = {
    m.NAME: m for m in (trip_breaker, reroute_traffic, snapshot_checkpoint, quarantine_node)
}

#: function name -> the event types it handles (one broker Trigger per pair).
ROUTES: Mapping[str, tuple[str, ...]] = {name: tuple(m.TYPES) for name, m in FUNCTIONS.items()}

DEAD_LETTER_PATH = "/dead-letter"
EXTENSION = "surefoot.functions"


def functions_for(event_type: str, only: str = "") -> list[str]:
    """The functions that handle ``event_type``, in ROUTES order (``only``: that one)."""
    return [name for name, types in ROUTES.items()
            if event_type in types and (not only or name == only)]


def triggers(base_url: str, *, prefix: str = "functions", only: str = "") -> list[Trigger]:
    """Local-broker Triggers that route every handled type to its function's path."""
    base = base_url.rstrip("/")
    out = []
    for name, types in ROUTES.items():
        if only and name != only:
            continue
        for t in types:
            short = t.removeprefix("dev.surefoot.").removeprefix("dev.knative.").replace(".", "-")
            out.append(Trigger(name=f"{prefix}-{name.replace('_', '-')}-{short}",
                               subscriber=f"{base}/{name}", attributes={"type": t}))
    return out


class Host:
    """Runs functions against one context; the HTTP endpoints and the sweeper both use it."""

    def __init__(self, settings: FunctionSettings, context: Context) -> None:
        self.settings = settings
        self.context = context

    def serves(self, name: str) -> bool:
        """Whether this host serves the function ``name`` (all, or ``only_function``)."""
        only = self.settings.only_function
        return not only or name == only

    def run(self, name: str, event: Event) -> Outcome:
        """One function on one event; errors are the function's (temporary / permanent)."""
        module = FUNCTIONS.get(name)
        if module is None:
            raise EventValidationError({"function": f"no function named {name!r}"})
        try:
            outcome: Outcome = module.handle(event, self.context)
        except TemporaryError as exc:
            log.warning("%s %s %s: temporary failure, answered 503 (redelivered): %s", name,
                        event.type, event.id, exc)
            raise
        except PermanentError as exc:
            log.error("%s %s %s: rejected, answered 422 (dead letter): %s", name, event.type,
                      event.id, exc)
            raise
        if event.type == KNATIVE_PING:  # a ping also settles this function's hand-overs
            try:
                self.emit(run_handoffs(self.context, {name: module.handle}))
            except redis.RedisError as exc:  # the next ping or sweep tries again
                log.warning("%s: hand-overs not settled: %s", name, exc)
        level = logging.DEBUG if outcome.status in (NOOP, "duplicate") else logging.INFO
        log.log(level, "%s %s %s: %s %s", name, event.type, event.id, outcome.status,
                outcome.reason)
        return outcome

    def dispatch(self, event: Event) -> list[Outcome]:
        """Every function that handles ``event.type``; all run even if one fails, then the
        first temporary (else permanent) failure is raised."""
        outcomes: list[Outcome] = []
        failure: Exception | None = None
        for name in functions_for(event.type, self.settings.only_function):
            try:
                outcomes.append(self.run(name, event))
            except TemporaryError as exc:
                if failure is None or isinstance(failure, PermanentError):
                    failure = exc
            except PermanentError as exc:
                failure = failure or exc
        if failure is not None:
            self.emit(outcomes)
            raise failure
        return outcomes

    def sweep(self) -> list[Outcome]:
        """Run every due deferred action and hand-over now; their events go to the sink."""
        out: list[Outcome] = []
        try:
            taken = run_handoffs(self.context, {n: m.handle for n, m in FUNCTIONS.items()
                                                if self.serves(n)})
        except Exception:  # Redis away: the next sweep tries again
            log.exception("hand-overs failed")
        else:
            self.emit(taken)
            out.extend(taken)
        for name, module in FUNCTIONS.items():
            sweeper = getattr(module, "sweep", None)
            if sweeper is None:
                continue
            try:
                outcomes = sweeper(self.context)
            except Exception:  # Redis away: the next sweep tries again
                log.exception("sweep of %s failed", name)
                continue
            self.emit(outcomes)
            out.extend(outcomes)
        return out

    def emit(self, outcomes: list[Outcome]) -> None:
        """Every event of ``outcomes`` to the sink."""
        for o in outcomes:
            for e in o.events:
                self.context.emit(e)


def host_of(app: Flask) -> Host:
    """The Host behind an app made by :func:`create_app`."""
    host: Host = app.extensions[EXTENSION]
    return host


_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _header(text: str, limit: int = 300) -> str:
    return _UNSAFE.sub("?", text)[:limit]


def _note(outcomes: list[Outcome]) -> None:
    g.setdefault("surefoot_outcomes", []).extend(outcomes)


def _outcome_headers(resp: Response) -> Response:
    """``Surefoot-Function``, ``-Outcome`` and ``-Reason``: what the request's functions did."""
    outcomes: list[Outcome] = g.get("surefoot_outcomes", [])
    if outcomes:
        resp.headers["Surefoot-Function"] = ",".join(o.function for o in outcomes)
        resp.headers["Surefoot-Outcome"] = ",".join(o.status for o in outcomes)
        resp.headers["Surefoot-Reason"] = _header(" | ".join(o.reason for o in outcomes))
    return resp


def _json_error(status: int, message: str, fields: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"error": message}
    if fields:
        body["fields"] = fields
    resp = jsonify(body)
    resp.status_code = status
    return resp


class EventEndpoints:
    """The CloudEvent receivers: each function at its own path, and ``POST /`` dispatching by
    event type (Knative ApiServerSource events mapped onto the Surefoot catalog first)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def handle(self, name: str, event: Event) -> Event | None:
        """``event`` at the path of the function ``name``: its reply (extra events to the sink)."""
        if event.type not in ROUTES[name]:
            raise EventValidationError(
                {"type": f"{name} does not handle {event.type!r}; it handles "
                         f"{', '.join(ROUTES[name])}"},
                message=f"event type not handled by {name}")
        outcome = self.host.run(name, event)
        _note([outcome])
        for e in outcome.extra:
            self.host.context.emit(e)
        return outcome.reply

    def dispatch(self, event: Event) -> Event | None:
        """``event`` at ``/``: every function that handles its type; the first event is the
        reply, the others go to the sink."""
        if not functions_for(event.type, self.host.settings.only_function):
            _note([Outcome("-", NOOP, f"no function handles {event.type}")])
            return None
        outcomes = self.host.dispatch(event)
        _note(outcomes)
        events = [e for o in outcomes for e in o.events]
        for e in events[1:]:
            self.host.context.emit(e)
        return events[0] if events else None

    def handler(self, name: str) -> Callable[[Event], Event | None]:
        """The receiver's handler for the function ``name``."""
        return functools.partial(self.handle, name)

    def blueprints(self) -> list[Blueprint]:
        strict = ReceiverSettings(strict_types=True)
        out = [receiver_blueprint(f"fn_{name}", self.handler(name), strict, rule=f"/{name}")
               for name in FUNCTIONS if self.host.serves(name)]
        out.append(receiver_blueprint("fn_dispatch", self.dispatch,
                                      ReceiverSettings(strict_types=True, map_knative=True)))
        return out


class HostInfo:
    """``GET /healthz`` (liveness, and whether Redis answers) and ``GET /functions``."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def healthz(self) -> Response:
        try:
            self.host.context.redis.ping()
            redis_state = "ok"
        except Exception as exc:  # report, do not fail liveness on a Redis blip
            redis_state = f"unreachable: {type(exc).__name__}"
        return jsonify({"status": "ok", "redis": redis_state, "functions": list(FUNCTIONS)})

    def functions(self) -> Response:
        return jsonify({"functions": {n: {"path": f"/{n}", "types": list(t)}
                                      for n, t in ROUTES.items() if self.host.serves(n)},
                        "dispatch": "/", "dead_letter": DEAD_LETTER_PATH})

    def blueprint(self) -> Blueprint:
        bp = Blueprint("fn_info", __name__)
        bp.add_url_rule("/healthz", view_func=self.healthz, methods=["GET"])
        bp.add_url_rule("/functions", view_func=self.functions, methods=["GET"])
        return bp


class DeadLetters:
    """What the broker gave up on: ``POST /dead-letter`` keeps it in a bounded Redis list,
    ``GET /dead-letter`` reads it back (newest first)."""

    def __init__(self, context: Context, keep: int) -> None:
        self.context = context
        self.keep = keep
        self.key = context.key("dead-letters")

    def receive(self) -> Response:
        body = request.get_data(cache=False)
        headers = dict(request.headers.items())
        record: dict[str, Any] = {"received": time.time()}
        try:
            event = from_http(headers, body, accept=None)
            record["event"] = to_dict(event)
            record["error"] = {k: event.extensions.get(k) for k in
                               ("knativeerrordest", "knativeerrorcode", "knativeerrordata")
                               if event.extensions.get(k)}
            log.error("dead letter: %s %s (%s) gave up: %s", event.type, event.id,
                      event.subject, record["error"])
        except (EventValidationError, PermanentError) as exc:
            record["unparsed"] = {"headers": {k: v for k, v in headers.items()
                                              if k.lower().startswith("ce-")
                                              or k.lower() == "content-type"},
                                  "body": body[:4096].decode("utf-8", "replace"),
                                  "problem": str(exc)}
            log.error("dead letter that is not a valid CloudEvent: %s", exc)
        pipe = self.context.redis.pipeline()
        pipe.lpush(self.key, json.dumps(record, separators=(",", ":"), default=str))
        pipe.ltrim(self.key, 0, self.keep - 1)
        pipe.execute()
        return Response(status=202)

    def read(self) -> Response:
        limit = request.args.get("limit", "100")
        if not limit.isdigit():
            return _json_error(400, "limit must be a non-negative integer",
                               {"limit": f"{limit!r} is not an integer"})
        rows = self.context.redis.lrange(self.key, 0, int(limit) - 1) if int(limit) else []
        return jsonify({"dead_letters": [json.loads(r) for r in rows]})

    def blueprint(self) -> Blueprint:
        bp = Blueprint("fn_dead_letters", __name__)
        bp.add_url_rule(DEAD_LETTER_PATH, view_func=self.receive, methods=["POST"])
        bp.add_url_rule(DEAD_LETTER_PATH, view_func=self.read, methods=["GET"])
        return bp


def _release_request(doc: Any) -> tuple[str, str] | Response:
    """The node and reason of a release request, or the 400 that says what is wrong."""
    if not isinstance(doc, dict):
        return _json_error(400, "send a JSON object {\"node\": NAME}",
                           {"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    node = doc.get("node")
    if not isinstance(node, str) or not node.strip():
        errors["node"] = "missing" if node is None else "must be a non-empty string"
    reason = doc.get("reason", "released by an operator")
    if not isinstance(reason, str):
        errors["reason"] = "must be a string"
    if errors or not isinstance(node, str):
        return _json_error(400, "invalid release request", errors)
    return node.strip(), reason


class Admin:
    """``/admin/*`` (bearer ``admin_token`` when set): release a node now, show the
    quarantines and deferred actions, run the due deferred actions."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def unauthorized(self) -> Response | None:
        """None when the request may use the admin API, else its 401 / 403."""
        token = self.host.settings.admin_token
        if not token:
            return None
        given = request.headers.get("Authorization", "")
        if not given:
            return _json_error(401, "Authorization: bearer token required",
                               {"Authorization": "missing"})
        if not hmac.compare_digest(given, f"Bearer {token}"):
            return _json_error(403, "Authorization: wrong token", {"Authorization": "wrong"})
        return None

    def release(self) -> Response:
        denied = self.unauthorized()
        if denied is not None:
            return denied
        parsed = _release_request(request.get_json(silent=True))
        if isinstance(parsed, Response):
            return parsed
        node, reason = parsed
        outcome = quarantine_node.release(self.host.context, node, reason=reason)
        self.host.emit([outcome])
        return jsonify({"status": outcome.status, "reason": outcome.reason,
                        "event": to_dict(outcome.reply) if outcome.reply else None})

    def quarantine(self) -> Response:
        denied = self.unauthorized()
        if denied is not None:
            return denied
        ctx = self.host.context
        return jsonify({"quarantined": quarantine_node.status(ctx),
                        "deferred": [{"action": m, "due": d} for m, d in deferred(ctx)]})

    def sweep(self) -> Response:
        denied = self.unauthorized()
        if denied is not None:
            return denied
        outcomes = self.host.sweep()
        return jsonify({"outcomes": [{"function": o.function, "status": o.status,
                                      "reason": o.reason} for o in outcomes]})

    def blueprint(self) -> Blueprint:
        bp = Blueprint("fn_admin", __name__, url_prefix="/admin")
        bp.add_url_rule("/release", view_func=self.release, methods=["POST"])
        bp.add_url_rule("/quarantine", view_func=self.quarantine, methods=["GET"])
        bp.add_url_rule("/sweep", view_func=self.sweep, methods=["POST"])
        return bp


def _invalid(exc: EventValidationError) -> Response:
    return _json_error(400, exc.message, exc.errors)


def _temporary(exc: TemporaryError) -> Response:
    resp = _json_error(503, f"temporary failure: {exc}")
    resp.headers["Retry-After"] = "1"
    return resp


def _permanent(exc: PermanentError) -> Response:
    return _json_error(422, f"rejected: {exc}")


def _redis_failed(exc: redis.RedisError) -> Response:
    resp = _json_error(503, f"Redis failed: {type(exc).__name__}")
    resp.headers["Retry-After"] = "1"
    return resp


def _install_error_handlers(app: Flask) -> None:
    """JSON answers for the admin and dead-letter routes (the receiver blueprints have their
    own): 400 for bad input, 503 temporary, 422 permanent."""
    app.register_error_handler(EventValidationError, _invalid)
    app.register_error_handler(TemporaryError, _temporary)
    app.register_error_handler(PermanentError, _permanent)
    app.register_error_handler(redis.RedisError, _redis_failed)


def create_app(settings: FunctionSettings, context: Context) -> Flask:
    """The functions host as a Flask app (no threads started; see :class:`FunctionsServer`)."""
    host = Host(settings, context)
    app = Flask(__name__)
    app.extensions[EXTENSION] = host
    for bp in EventEndpoints(host).blueprints():
        app.register_blueprint(bp)
    app.config["MAX_CONTENT_LENGTH"] = ReceiverSettings(strict_types=True).max_body_bytes
    _install_error_handlers(app)
    app.after_request(_outcome_headers)
    app.register_blueprint(HostInfo(host).blueprint())
    app.register_blueprint(DeadLetters(context, settings.dead_letter_keep).blueprint())
    app.register_blueprint(Admin(host).blueprint())
    return app


class Sweeper:
    """Runs ``host.sweep()`` every ``interval`` seconds in a daemon thread."""

    def __init__(self, host: Host, interval: float) -> None:
        self.host = host
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="functions-sweeper", daemon=True)

    def start(self) -> Sweeper:
        if self.interval > 0:
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.host.sweep()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)


class FunctionsServer:
    """The host on a port with its sweeper: ``FunctionsServer(settings, ctx).start()``.

    ``port=0`` picks a free port (``.url`` says which). Stopping it does not close the
    context (the caller built it and owns its clients).
    """

    def __init__(self, settings: FunctionSettings, context: Context, *,
                 host: str = "127.0.0.1", port: int = 0, sweep: bool = True) -> None:
        self.app = create_app(settings, context)
        self.host = host_of(self.app)
        self._http = HttpServer(self.app, host, port)
        self._sweeper = Sweeper(self.host, settings.sweep_interval_s if sweep else 0.0)

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def port(self) -> int:
        return self._http.port

    def triggers(self, prefix: str = "functions") -> list[Trigger]:
        """Local-broker Triggers for this server's functions."""
        return triggers(self.url, prefix=prefix, only=self.host.settings.only_function)

    def start(self) -> FunctionsServer:
        self._http.start()
        self._sweeper.start()
        return self

    def stop(self) -> None:
        self._sweeper.stop()
        self._http.stop()

    def __enter__(self) -> FunctionsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
