"""The pod and node lifecycle source: a Kubernetes watch turned into ``pod.*`` / ``node.*`` events.

Knative's ApiServerSource emits nothing for changes it missed while it was down; this source
does not lose them. It lists, then watches from the list's resourceVersion; when the server
says 410 Gone (the version was compacted) it lists again and diffs the list against what it
knew, so deletions and transitions that happened in between are still reported (``missed``);
a periodic sweep does the same in case a watch silently dropped something. All diffing is the
pure logic of events._lifecycle; this module only moves objects from the API into it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

import yaml
from flask import Blueprint, Flask, Response, jsonify

from events._catalog import Event, build
from events._errors import ConfigError, PermanentError, TemporaryError
from events._lifecycle import (
    NodeState,
    PodState,
    diff_node,
    diff_pod,
    event_id,
    node_state,
    pod_state,
)

log = logging.getLogger(__name__)

POD = "pod"
NODE = "node"

Emit = Callable[[Event], None]


@dataclass(frozen=True)
class PodSourceSettings:
    namespace: str | None = None  # None: all namespaces
    selector: str = ""  # pod label selector
    watch_nodes: bool = True
    sweep_interval_s: float = 60.0
    watch_timeout_s: int = 300  # server-side timeoutSeconds of one watch call
    retry_min_s: float = 0.5
    retry_max_s: float = 30.0
    health_host: str = "127.0.0.1"
    health_port: int = 0
    source: str = "/surefoot/sources/pods"


class GoneError(TemporaryError):
    """The watch's resourceVersion is too old (HTTP 410): list again."""


# --- the API seam -------------------------------------------------------------------------


class KubeApi(Protocol):
    def list(self, kind: str, namespace: str | None, selector: str) -> tuple[list[dict[str, Any]],
                                                                             str]:
        """(items, list resourceVersion). TemporaryError / PermanentError on failure."""

    def watch(self, kind: str, namespace: str | None, selector: str, resource_version: str,
              timeout_s: int) -> Any:
        """A context manager yielding an iterator of raw watch events ({"type", "object"});
        GoneError for 410."""

    def interrupt(self) -> None:
        """Make blocked watches return (used by stop)."""


class KubernetesApi:
    """KubeApi over the official ``kubernetes`` client (raw JSON, no model deserialization)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        self._open: set[Any] = set()
        self._lock = threading.Lock()

    def _call(self, kind: str, namespace: str | None, **kw: Any) -> Any:
        if kind == NODE:
            return self._core.list_node(**kw)
        if namespace:
            return self._core.list_namespaced_pod(namespace, **kw)
        return self._core.list_pod_for_all_namespaces(**kw)

    def list(self, kind: str, namespace: str | None, selector: str) -> tuple[list[dict[str, Any]],
                                                                             str]:
        kw: dict[str, Any] = {"_preload_content": False, "_request_timeout": 30}
        if kind == POD and selector:
            kw["label_selector"] = selector
        with _mapped_errors(f"list {kind}s"):
            resp = self._call(kind, namespace, **kw)
            try:
                doc = json.loads(resp.data)
            finally:
                resp.release_conn()
        items = doc.get("items") or []
        for item in items:  # list items carry no TypeMeta
            item.setdefault("kind", "Node" if kind == NODE else "Pod")
        return items, str((doc.get("metadata") or {}).get("resourceVersion") or "")

    @contextmanager
    def watch(self, kind: str, namespace: str | None, selector: str, resource_version: str,
              timeout_s: int) -> Iterator[Iterator[dict[str, Any]]]:
        from kubernetes.watch.watch import iter_resp_lines

        kw: dict[str, Any] = {
            "watch": True, "_preload_content": False, "resource_version": resource_version,
            "timeout_seconds": timeout_s, "allow_watch_bookmarks": True,
            "_request_timeout": (10, timeout_s + 30),
        }
        if kind == POD and selector:
            kw["label_selector"] = selector
        with _mapped_errors(f"watch {kind}s"):
            resp = self._call(kind, namespace, **kw)
        with self._lock:
            self._open.add(resp)

        def events() -> Iterator[dict[str, Any]]:
            with _mapped_errors(f"watch {kind}s"):
                for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                    if not line.strip():
                        continue
                    try:
                        ev = json.loads(line)
                    except ValueError:
                        log.warning("skipping a malformed watch line for %ss", kind)
                        continue
                    if ev.get("type") == "ERROR":
                        status = ev.get("object") or {}
                        if status.get("code") == 410:
                            raise GoneError(str(status.get("message") or "resourceVersion gone"))
                        raise TemporaryError(f"watch {kind}s: {status.get('message')}")
                    yield ev

        try:
            yield events()
        finally:
            with self._lock:
                self._open.discard(resp)
            resp.close()
            resp.release_conn()

    def interrupt(self) -> None:
        with self._lock:
            responses = list(self._open)
        for resp in responses:
            with suppress(Exception):  # already closed: nothing to interrupt
                resp.shutdown()


@contextmanager
def _mapped_errors(what: str) -> Iterator[None]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError, ProtocolError

    try:
        yield
    except ApiException as exc:
        if exc.status == 410:
            raise GoneError(f"{what}: 410 Gone") from None
        if exc.status in (401, 403, 404):
            raise PermanentError(f"{what}: HTTP {exc.status} {exc.reason}") from None
        raise TemporaryError(f"{what}: HTTP {exc.status} {exc.reason}") from None
    except (HTTPError, ProtocolError, OSError, ValueError) as exc:
        raise TemporaryError(f"{what}: {type(exc).__name__}: {exc}") from None


def kube_client(kubeconfig: str | None = None, context: str | None = None) -> KubernetesApi:
    """A KubernetesApi from a kubeconfig file, else in-cluster config, else ~/.kube/config."""
    from kubernetes import client, config

    try:
        if kubeconfig or context:
            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context
            )
            return KubernetesApi(api)
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            return KubernetesApi(client.ApiClient())
        except config.ConfigException:
            api = config.new_client_from_config()  # type: ignore[no-untyped-call]
            return KubernetesApi(api)
    except (config.ConfigException, OSError, TypeError, ValueError, KeyError,
            yaml.YAMLError) as exc:
        raise ConfigError({"kubeconfig": " ".join(str(exc).split())},
                          message="cannot configure the Kubernetes client") from None


# --- the tracker: known states, diffs ------------------------------------------------------


def _rv_int(rv: str | None) -> int | None:
    try:
        return int(rv) if rv else None
    except ValueError:
        return None


class Tracker:
    """What one kind (pods or nodes) looked like last, and the events of each change. No I/O;
    thread-safe (the watch and the sweep share it)."""

    def __init__(self, kind: str, source: str) -> None:
        self.kind = kind
        self.source = source
        self._lock = threading.Lock()
        self._states: dict[str, PodState | NodeState] = {}
        self.last_rv: str | None = None
        self.listed = False

    def _state(self, obj: dict[str, Any]) -> PodState | NodeState:
        return pod_state(obj) if self.kind == POD else node_state(obj)

    def _diff(self, old: Any, new: Any, *, baseline: bool = False, missed: bool = False) -> list[
            Any]:
        if self.kind == POD:
            return diff_pod(old, new, baseline=baseline, missed=missed)
        return diff_node(old, new, baseline=baseline)

    def _events(self, payloads: list[Any], state: PodState | NodeState, *, gone: bool = False
                ) -> list[Event]:
        return [
            build(p, source=self.source,
                  id=event_id(self.kind, state, p, "gone" if gone else ""))
            for p in payloads
        ]

    def __len__(self) -> int:
        return len(self._states)

    def apply_list(self, items: list[dict[str, Any]], list_rv: str) -> list[Event]:
        """A full list: the first one sets the baseline; later ones report what changed
        since (including deletions a watch never delivered)."""
        with self._lock:
            lrv, known = _rv_int(list_rv), _rv_int(self.last_rv)
            if self.listed and lrv is not None and known is not None and lrv < known:
                log.debug("%s list at %s is older than the watch (%s): skipped", self.kind,
                          list_rv, self.last_rv)
                return []
            first = not self.listed
            out: list[Event] = []
            seen: set[str] = set()
            for obj in items:
                new = self._state(obj)
                seen.add(new.key)
                old = self._states.get(new.key)
                if old is not None and old.uid and new.uid and old.uid != new.uid:
                    # Same name, new object: the old one was deleted in between.
                    out += self._events(self._diff(old, None, missed=True), old, gone=True)
                    old = None
                out += self._events(self._diff(old, new, baseline=first, missed=True), new)
                self._states[new.key] = new
            for key in [k for k in self._states if k not in seen]:
                old = self._states.pop(key)
                out += self._events(self._diff(old, None, missed=True), old, gone=True)
            self.listed = True
            self.last_rv = list_rv or self.last_rv
            return out

    def apply_event(self, etype: str, obj: dict[str, Any]) -> list[Event]:
        """One watch event (ADDED, MODIFIED, DELETED, BOOKMARK)."""
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            if rv and (_rv_int(rv) or 0) >= (_rv_int(self.last_rv) or 0):
                self.last_rv = rv
            if etype == "BOOKMARK":
                return []
            new = self._state(obj)
            old = self._states.get(new.key)
            if old is not None and _rv_int(rv) is not None and _rv_int(old.resource_version) \
                    is not None and int(rv) <= int(old.resource_version):
                return []  # already known: a list overtook this event
            out: list[Event] = []
            if old is not None and old.uid and new.uid and old.uid != new.uid:
                out += self._events(self._diff(old, None), old, gone=True)
                old = None
            if etype == "DELETED":
                self._states.pop(new.key, None)
                if self.kind == POD:
                    # Report the last transitions first (an eviction the watch never showed),
                    # then the deletion itself: one pod.deleted or pod.evicted in all.
                    assert isinstance(new, PodState)
                    base = old if old is not None else dataclasses.replace(
                        new, deleting=False, evicted_reason="", evicted_message="")
                    payloads = self._diff(base, new) + self._diff(new, None)
                else:
                    payloads = (self._diff(old, new) if old else []) + self._diff(new, None)
                return out + self._events(payloads, new, gone=True)
            self._states[new.key] = new
            return out + self._events(self._diff(old, new), new)


# --- watch loops ---------------------------------------------------------------------------


class ResourceWatcher:
    """List, then watch from the list's resourceVersion; list again on 410 Gone; back off on
    errors. ``sleep`` is the stop-aware wait (tests pass one that does not sleep)."""

    def __init__(self, kind: str, api: KubeApi, tracker: Tracker, emit: Emit,
                 settings: PodSourceSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self.api = api
        self.tracker = tracker
        self.emit = emit
        self.settings = settings
        self.clock = clock
        self.last_contact: float | None = None
        self.relists = 0
        self.errors = 0
        self.last_error = ""
        self._need_list = True
        self._lock = threading.Lock()  # one list/diff at a time (watch loop vs sweep)

    @property
    def selector(self) -> str:
        return self.settings.selector if self.kind == POD else ""

    @property
    def namespace(self) -> str | None:
        return self.settings.namespace if self.kind == POD else None

    def _send(self, events: list[Event]) -> list[Event]:
        for e in events:
            self.emit(e)
        return events

    def relist(self) -> list[Event]:
        with self._lock:
            items, rv = self.api.list(self.kind, self.namespace, self.selector)
            self.last_contact = self.clock()
            events = self.tracker.apply_list(items, rv)
            self.relists += 1
            self._need_list = False
        if events:
            log.info("%s re-list found %d change(s) the watch had not delivered", self.kind,
                     len(events))
        return self._send(events)

    def watch_once(self, stop: threading.Event) -> list[Event]:
        """One watch call, until the server ends it (timeout), stop, or an error."""
        out: list[Event] = []
        if self._need_list or self.tracker.last_rv is None:
            out += self.relist()
        rv = self.tracker.last_rv or ""
        try:
            with self.api.watch(self.kind, self.namespace, self.selector, rv,
                                self.settings.watch_timeout_s) as stream:
                self.last_contact = self.clock()
                for raw in stream:
                    self.last_contact = self.clock()
                    obj = raw.get("object")
                    if isinstance(obj, dict):
                        out += self._send(self.tracker.apply_event(str(raw.get("type")), obj))
                    if stop.is_set():
                        break
        except GoneError:
            log.info("%s watch from resourceVersion %s expired (410): listing again",
                     self.kind, rv)
            self._need_list = True
        return out

    def run(self, stop: threading.Event) -> None:
        delay = self.settings.retry_min_s
        while not stop.is_set():
            try:
                self.watch_once(stop)
                delay = self.settings.retry_min_s
            except (TemporaryError, PermanentError) as exc:
                self.errors += 1
                self.last_error = str(exc)
                if stop.is_set():
                    break
                log.warning("%s watch failed (%s); retrying in %.1fs", self.kind, exc, delay)
                self._need_list = True
                stop.wait(delay)
                delay = min(delay * 2, self.settings.retry_max_s)


class PodLifecycleSource:
    """Pod and node watchers plus the periodic sweep, feeding one emit function."""

    def __init__(self, settings: PodSourceSettings, api: KubeApi, emit: Emit, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.api = api
        self.clock = clock
        self.watchers = [ResourceWatcher(POD, api, Tracker(POD, settings.source), emit, settings,
                                         clock=clock)]
        if settings.watch_nodes:
            self.watchers.append(ResourceWatcher(NODE, api, Tracker(NODE, settings.source), emit,
                                                 settings, clock=clock))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.sweeps = 0

    def sweep(self) -> list[Event]:
        """List everything again and report what the watches missed."""
        out: list[Event] = []
        for w in self.watchers:
            try:
                out += w.relist()
            except (TemporaryError, PermanentError) as exc:
                w.errors += 1
                w.last_error = str(exc)
                log.warning("%s sweep failed: %s", w.kind, exc)
        self.sweeps += 1
        return out

    def start(self) -> PodLifecycleSource:
        for w in self.watchers:
            t = threading.Thread(target=w.run, args=(self._stop,), name=f"watch-{w.kind}s",
                                 daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._sweep_loop, name="pod-sweep", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.settings.sweep_interval_s):
            self.sweep()

    def stop(self) -> None:
        self._stop.set()
        self.api.interrupt()
        for t in self._threads:
            t.join(timeout=10)

    def healthy(self) -> bool:
        """Every watcher has listed and talked to the API server recently."""
        limit = self.settings.watch_timeout_s + 2 * self.settings.sweep_interval_s + 30
        now = self.clock()
        return all(w.tracker.listed and w.last_contact is not None
                   and now - w.last_contact <= limit for w in self.watchers)

    def status(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy(),
            "sweeps": self.sweeps,
            "watchers": {
                w.kind: {"objects": len(w.tracker), "resource_version": w.tracker.last_rv,
                         "relists": w.relists, "errors": w.errors, "last_error": w.last_error}
                for w in self.watchers
            },
        }


def pods_health_blueprint(source: PodLifecycleSource) -> Blueprint:
    """GET /healthz (503 when a watcher is not watching) and GET /status."""
    bp = Blueprint("pods_health", __name__)

    @bp.get("/healthz")
    def healthz() -> Response:
        ok = source.healthy()
        resp = jsonify({"status": "ok" if ok else "not watching"})
        resp.status_code = 200 if ok else 503
        return resp

    @bp.get("/status")
    def status() -> Response:
        return jsonify(source.status())

    return bp


def create_pods_health_app(source: PodLifecycleSource) -> Flask:
    app = Flask(__name__)
    app.register_blueprint(pods_health_blueprint(source))
    return app


class PodSourceService:
    """The pod source plus its health endpoint (for ``surefoot source pods`` and ``up``)."""

    def __init__(self, settings: PodSourceSettings, *, api: KubeApi, emit: Emit) -> None:
        self.source = PodLifecycleSource(settings, api, emit)
        self._http: Any = None

    @property
    def health_url(self) -> str:
        return str(self._http.url) if self._http is not None else ""

    def start(self) -> PodSourceService:
        from events._http import HttpServer

        s = self.source.settings
        self._http = HttpServer(create_pods_health_app(self.source), s.health_host,
                                s.health_port).start()
        self.source.start()
        return self

    def stop(self) -> None:
        self.source.stop()
        if self._http is not None:
            self._http.stop()

    def __enter__(self) -> PodSourceService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
