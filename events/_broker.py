"""A local event broker: an HTTP ingress, triggers that filter by attributes, fan-out delivery.

On one machine (``surefoot up``, tests, drills) this stands in for a Knative Broker: sources post
events to its ingress; each trigger whose filter matches gets the event delivered to its
subscriber with retries and a dead letter; a subscriber's reply event goes back into the broker
(with a hop limit), as Knative's broker does. Trigger filters follow Knative: ``filter.attributes``
(exact match on every attribute) or the ``filters`` dialect (``exact``, ``prefix``, ``suffix``,
``all``, ``any``, ``not``), which wins when both are present.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import yaml
from flask import Blueprint, Flask, Response, jsonify

from events._catalog import Event, is_accepted_type
from events._delivery import (
    DeadLetter,
    DeliveryResult,
    RetryPolicy,
    Sender,
    SenderSettings,
    make_dead_letter,
    parse_duration,
)
from events._errors import ConfigError, TemporaryError
from events._http import HttpServer
from events._receiver import ReceiverSettings, install_error_handlers, receiver_blueprint

log = logging.getLogger(__name__)

TTL_EXTENSION = "knativebrokerttl"
DEFAULT_TTL = 255


# --- filters ------------------------------------------------------------------------------

_DIALECT_LEAVES = ("exact", "prefix", "suffix")
_DIALECT_NODES = ("all", "any", "not")


def check_filters(filters: Any, path: str = "filters") -> dict[str, str]:
    """Every problem with a ``filters`` list (Knative's filter dialect)."""
    errors: dict[str, str] = {}
    if not isinstance(filters, list):
        return {path: "must be a list"}
    for i, expr in enumerate(filters):
        errors.update(_check_expr(expr, f"{path}[{i}]"))
    return errors


def _check_expr(expr: Any, path: str) -> dict[str, str]:
    if not isinstance(expr, Mapping) or len(expr) != 1:
        return {path: "must be an object with exactly one of exact, prefix, suffix, all, any, not"}
    (op, arg), = expr.items()
    if op in _DIALECT_LEAVES:
        return _check_leaf(op, arg, f"{path}.{op}")
    if op in ("all", "any"):
        return check_filters(arg, f"{path}.{op}")
    if op == "not":
        return _check_expr(arg, f"{path}.not")
    if op == "cesql":
        return {f"{path}.cesql": "CloudEvents SQL filters are not supported by the local broker"}
    return {path: f"unknown filter {op!r}"}


def _check_leaf(op: str, arg: Any, path: str) -> dict[str, str]:
    """An ``exact`` / ``prefix`` / ``suffix`` filter: attribute names to strings."""
    if not isinstance(arg, Mapping) or not arg:
        return {path: "must map attribute names to strings"}
    bad = [k for k, v in arg.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        return {path: f"values must be strings (bad: {', '.join(map(str, bad))})"}
    if op != "exact" and any(v == "" for v in arg.values()):
        return {path: "must not be empty"}
    return {}


def _match_expr(event: Event, expr: Mapping[str, Any]) -> bool:
    (op, arg), = expr.items()
    if op == "exact":
        return all(event.attribute(k) == v for k, v in arg.items())
    if op == "prefix":
        return all((event.attribute(k) or "\0").startswith(v) for k, v in arg.items())
    if op == "suffix":
        return all((event.attribute(k) or "\0").endswith(v) for k, v in arg.items())
    if op == "all":
        return all(_match_expr(event, e) for e in arg)
    if op == "any":
        return any(_match_expr(event, e) for e in arg)
    if op == "not":
        return not _match_expr(event, arg)
    return False


def matches(
    event: Event,
    attributes: Mapping[str, str] | None = None,
    filters: Sequence[Mapping[str, Any]] = (),
) -> bool:
    """Knative Trigger semantics: ``filters`` (all must match) if given, else every
    ``attributes`` entry must equal the event's attribute; no filter matches everything."""
    if filters:
        return all(_match_expr(event, e) for e in filters)
    if attributes:
        return all(event.attribute(k) == v for k, v in attributes.items())
    return True


# --- triggers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """A subscription: events matching the filter go to ``subscriber`` (an http(s) URL).
    ``retry`` / ``dead_letter`` override the broker's delivery settings when set."""

    name: str
    subscriber: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    filters: tuple[Mapping[str, Any], ...] = ()
    retry: RetryPolicy | None = None
    dead_letter: str | None = None

    def matches(self, event: Event) -> bool:
        return matches(event, self.attributes, self.filters)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "subscriber": self.subscriber}
        if self.attributes:
            out["filter"] = {"attributes": dict(self.attributes)}
        if self.filters:
            out["filters"] = [dict(f) for f in self.filters]
        delivery: dict[str, Any] = {}
        if self.retry is not None:
            delivery["retry"] = self.retry.retries
            delivery["backoffPolicy"] = self.retry.backoff_policy
            delivery["backoffDelay"] = f"PT{self.retry.backoff_delay_s:g}S"
        if self.dead_letter:
            delivery["deadLetterSink"] = {"uri": self.dead_letter}
        if delivery:
            out["delivery"] = delivery
        return out


_TRIGGER_KEYS = {"name", "subscriber", "filter", "filters", "delivery"}
_DELIVERY_KEYS = {"retry", "backoffDelay", "backoffPolicy", "deadLetterSink"}


def _uri(value: Any, path: str, errors: dict[str, str], *, allow_file: bool = False) -> str | None:
    if isinstance(value, Mapping):
        if "ref" in value and "uri" not in value:
            errors[path] = "only uri destinations are supported locally (no ref)"
            return None
        value = value.get("uri")
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        return value
    if allow_file and isinstance(value, str) and value and "://" not in value:
        return value
    errors[path] = "must be an http(s) URL" + (" or a file path" if allow_file else "")
    return None


def trigger_from_dict(spec: Any, where: str = "trigger") -> Trigger:
    """A Trigger from a flat dict or a Knative Trigger manifest; ConfigError names every
    bad field."""
    errors: dict[str, str] = {}
    if not isinstance(spec, Mapping):
        raise ConfigError({where: "must be an object"}, message="invalid trigger")
    body = _trigger_body(spec)
    for key in body:
        if key not in _TRIGGER_KEYS:
            errors[f"{where}.{key}"] = "unknown field"
    name = body.get("name")
    if not isinstance(name, str) or not name:
        errors[f"{where}.name"] = "missing"
    subscriber = _uri(body.get("subscriber"), f"{where}.subscriber", errors)
    attributes = _attributes_from(body.get("filter"), f"{where}.filter.attributes", errors)
    filters = body.get("filters") or []
    errors.update(check_filters(filters, f"{where}.filters"))
    retry, dead_letter = _delivery_from(body.get("delivery"), f"{where}.delivery", errors)
    if errors:
        raise ConfigError(errors, message="invalid trigger")
    assert isinstance(name, str)
    assert subscriber is not None
    return Trigger(name=name, subscriber=subscriber, attributes=attributes,
                   filters=tuple(filters), retry=retry, dead_letter=dead_letter)


def _trigger_body(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The flat form of a trigger: a Knative manifest's spec with its metadata's name."""
    if "spec" in spec or spec.get("kind") == "Trigger":
        body = dict(spec.get("spec") or {})
        body["name"] = (spec.get("metadata") or {}).get("name")
        return body
    return dict(spec)


def _attributes_from(flt: Any, path: str, errors: dict[str, str]) -> dict[str, str]:
    if flt is None:
        return {}
    attrs = flt.get("attributes") if isinstance(flt, Mapping) else None
    if not isinstance(attrs, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attrs.items()
    ):
        errors[path] = "must map attribute names to strings"
        return {}
    return dict(attrs)


def _delivery_from(
    delivery: Any, path: str, errors: dict[str, str]
) -> tuple[RetryPolicy | None, str | None]:
    """A trigger's own retry policy and dead letter (None: the broker's)."""
    if delivery is None:
        return None, None
    if not isinstance(delivery, Mapping):
        errors[path] = "must be an object"
        return None, None
    for key in delivery:
        if key not in _DELIVERY_KEYS:
            errors[f"{path}.{key}"] = "unknown field"
    retry = _retry_from(delivery, path, errors)
    dead_letter = None
    if "deadLetterSink" in delivery:
        dead_letter = _uri(delivery["deadLetterSink"], f"{path}.deadLetterSink", errors,
                           allow_file=True)
    return retry, dead_letter


def _retry_from(
    delivery: Mapping[str, Any], path: str, errors: dict[str, str]
) -> RetryPolicy | None:
    if not any(k in delivery for k in ("retry", "backoffDelay", "backoffPolicy")):
        return None
    base = RetryPolicy()
    retries = delivery.get("retry", base.retries)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        errors[f"{path}.retry"] = "must be an integer >= 0"
        retries = base.retries
    delay = base.backoff_delay_s
    if "backoffDelay" in delivery:
        try:
            delay = parse_duration(delivery["backoffDelay"])
        except ValueError as exc:
            errors[f"{path}.backoffDelay"] = str(exc)
    policy = delivery.get("backoffPolicy", base.backoff_policy)
    if policy not in ("exponential", "linear"):
        errors[f"{path}.backoffPolicy"] = "must be exponential or linear"
        policy = base.backoff_policy
    return RetryPolicy(retries=retries, backoff_delay_s=delay, backoff_policy=policy)


def parse_triggers(doc: Any) -> list[Trigger]:
    """Triggers from parsed YAML: ``{triggers: [...]}``, a list, or Knative Trigger manifests
    (pass a list of documents). Every bad field of every trigger is reported at once."""
    if isinstance(doc, Mapping) and "triggers" in doc:
        items = doc["triggers"]
    elif isinstance(doc, Mapping) and doc.get("kind") == "Trigger":
        items = [doc]
    else:
        items = doc
    if not isinstance(items, list):
        raise ConfigError({"triggers": "must be a list of triggers"}, message="invalid triggers")
    errors: dict[str, str] = {}
    out: list[Trigger] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if isinstance(item, Mapping) and item.get("kind") not in (None, "Trigger"):
            continue  # other manifests in the same file
        name = _raw_name(item)
        if name is not None and name in seen:
            errors[f"triggers[{i}].name"] = f"duplicate trigger name {name!r}"
        if name is not None:
            seen.add(name)
        try:
            out.append(trigger_from_dict(item, f"triggers[{i}]"))
        except ConfigError as exc:
            errors.update(exc.errors)
    if errors:
        raise ConfigError(errors, message="invalid triggers")
    return out


def _raw_name(item: Any) -> str | None:
    if not isinstance(item, Mapping):
        return None
    name = (item.get("metadata") or {}).get("name") if "spec" in item else item.get("name")
    return name if isinstance(name, str) and name else None


def load_triggers(path: str) -> list[Trigger]:
    """Read a triggers YAML file (one or more documents)."""
    try:
        with open(path, encoding="utf-8") as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    except OSError as exc:
        raise ConfigError({"config": f"cannot read {path}: {exc.strerror}"}) from None
    except yaml.YAMLError as exc:
        raise ConfigError({"config": f"{path} is not valid YAML: {exc}"}) from None
    if len(docs) == 1:
        return parse_triggers(docs[0])
    return parse_triggers(docs)


# --- broker -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerSettings:
    """``workers``: delivery threads; ``max_pending``: deliveries queued before the ingress
    answers 503; ``ingest_replies``: subscriber replies re-enter the broker."""

    host: str = "127.0.0.1"
    port: int = 0
    workers: int = 8
    max_pending: int = 10_000
    ingest_replies: bool = True
    sender: SenderSettings = field(default_factory=SenderSettings)
    receiver: ReceiverSettings = field(
        default_factory=lambda: ReceiverSettings(strict_types=True, map_knative=True)
    )


DeliveryListener = Callable[[Event, Trigger, DeliveryResult], None]


class Broker:
    """Triggers plus asynchronous fan-out. Thread-safe; use ``close()`` (or ``with``)."""

    def __init__(self, settings: BrokerSettings | None = None, *, sender: Sender | None = None):
        self.settings = settings or BrokerSettings()
        self._own_sender = sender is None
        self.sender = sender or Sender(self.settings.sender)
        self._lock = threading.Lock()
        self._triggers: dict[str, Trigger] = {}
        self._dead_letters: dict[str, DeadLetter] = {}
        self._pool = ThreadPoolExecutor(max_workers=self.settings.workers,
                                        thread_name_prefix="broker-deliver")
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._listeners: list[DeliveryListener] = []
        self.stats = {"received": 0, "delivered": 0, "failed": 0, "dead_lettered": 0,
                      "unmatched": 0, "replies": 0, "rejected": 0}

    def __enter__(self) -> Broker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._own_sender:
            self.sender.close()

    # triggers
    def add_trigger(self, trigger: Trigger) -> None:
        with self._lock:
            self._triggers[trigger.name] = trigger
            if trigger.dead_letter:
                self._dead_letters[trigger.name] = make_dead_letter(trigger.dead_letter,
                                                                    self.sender)
            else:
                self._dead_letters.pop(trigger.name, None)

    def remove_trigger(self, name: str) -> bool:
        with self._lock:
            self._dead_letters.pop(name, None)
            return self._triggers.pop(name, None) is not None

    def triggers(self) -> list[Trigger]:
        with self._lock:
            return list(self._triggers.values())

    def add_listener(self, listener: DeliveryListener) -> None:
        """Called after every delivery attempt chain (from a delivery thread)."""
        self._listeners.append(listener)

    def matching(self, event: Event) -> list[Trigger]:
        with self._lock:
            return [t for t in self._triggers.values() if t.matches(event)]

    # publishing
    def publish(self, event: Event) -> int:
        """Queue delivery to every matching trigger; returns how many matched. Raises
        TemporaryError when too many deliveries are pending (the ingress answers 503)."""
        targets = self.matching(event)
        with self._lock:
            self.stats["received"] += 1
            if not targets:
                self.stats["unmatched"] += 1
                return 0
            if self._pending + len(targets) > self.settings.max_pending:
                self.stats["rejected"] += 1
                raise TemporaryError(f"broker busy: {self._pending} deliveries pending")
            self._pending += len(targets)
        for trig in targets:
            self._pool.submit(self._deliver_counted, event, trig)
        return len(targets)

    def deliver_now(self, event: Event) -> list[DeliveryResult]:
        """Deliver synchronously to every matching trigger (tests, one-shot CLI use)."""
        return [self._deliver(event, t) for t in self.matching(event)]

    def wait_idle(self, timeout: float) -> bool:
        """Block until no delivery is pending (or ``timeout`` seconds pass)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def _deliver_counted(self, event: Event, trig: Trigger) -> None:
        try:
            self._deliver(event, trig)
        except Exception:  # a listener or a dead letter blew up: keep the worker alive
            log.exception("delivery of %s to trigger %s failed", event.id, trig.name)
        finally:
            with self._idle:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.notify_all()

    def _deliver(self, event: Event, trig: Trigger) -> DeliveryResult:
        with self._lock:
            sink = self._dead_letters.get(trig.name, _BROKER_DLQ)
        if sink is _BROKER_DLQ:
            result = self.sender.send(event, trig.subscriber, retry=trig.retry)
        else:
            result = self.sender.send(event, trig.subscriber, retry=trig.retry, dead_letter=sink)
        with self._lock:
            self.stats["delivered" if result.ok else "failed"] += 1
            if result.dead_lettered:
                self.stats["dead_lettered"] += 1
        for listener in list(self._listeners):
            listener(event, trig, result)
        if result.reply is not None and self.settings.ingest_replies:
            self._ingest_reply(event, result.reply, trig)
        return result

    def _ingest_reply(self, parent: Event, reply: Event, trig: Trigger) -> None:
        try:
            ttl = int(parent.extensions.get(TTL_EXTENSION, DEFAULT_TTL)) - 1
        except ValueError:
            ttl = DEFAULT_TTL - 1
        if ttl <= 0:
            log.warning("dropping reply %s from trigger %s: hop limit reached", reply.id, trig.name)
            return
        if self.settings.receiver.strict_types and not is_accepted_type(reply.type):
            log.warning("dropping reply %s from trigger %s: unknown type %r", reply.id,
                        trig.name, reply.type)
            return
        with self._lock:
            self.stats["replies"] += 1
        try:
            self.publish(reply.with_extensions(**{TTL_EXTENSION: str(ttl)}))
        except TemporaryError as exc:
            log.error("dropping reply %s: %s", reply.id, exc)


_BROKER_DLQ: Any = object()


def broker_blueprint(broker: Broker) -> Blueprint:
    """GET /triggers and GET /healthz of a broker."""
    bp = Blueprint("broker", __name__)

    @bp.get("/triggers")
    def list_triggers() -> Response:
        return jsonify({"triggers": [t.to_dict() for t in broker.triggers()]})

    @bp.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok", "stats": dict(broker.stats)})

    return bp


def create_broker_app(broker: Broker) -> Flask:
    """The broker's HTTP face: POST / (ingress), GET /triggers, GET /healthz."""
    app = Flask(__name__)
    settings = broker.settings.receiver
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes

    def ingress(event: Event) -> None:
        broker.publish(event)
        return None

    app.register_blueprint(receiver_blueprint("ingress", ingress, settings))
    app.register_blueprint(broker_blueprint(broker))
    install_error_handlers(app)
    return app


class BrokerServer:
    """A Broker with its HTTP ingress on a port: ``with BrokerServer(...) as b: b.url``."""

    def __init__(
        self,
        settings: BrokerSettings | None = None,
        *,
        triggers: Sequence[Trigger] = (),
        sender: Sender | None = None,
    ) -> None:
        self.broker = Broker(settings, sender=sender)
        for t in triggers:
            self.broker.add_trigger(t)
        s = self.broker.settings
        self._http = HttpServer(create_broker_app(self.broker), s.host, s.port)

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def port(self) -> int:
        return self._http.port

    def start(self) -> BrokerServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()
        self.broker.close()

    def __enter__(self) -> BrokerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
