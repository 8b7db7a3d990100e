"""HTTP front of the fake Kubernetes API server, and the hooks tests drive it with."""

from __future__ import annotations

import contextlib
import copy
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from tests.kube_fake._selectors import SelectorError, field_selector, label_selector
from tests.kube_fake._state import (
    PODAUTOSCALER,
    REVISION,
    ApiError,
    Event,
    Resource,
    State,
    resource_for_kind,
    resource_for_path,
    resource_named,
)

DEFAULT_WATCH_SECONDS = 1800  # the API server picks 30-60 min when timeoutSeconds is absent


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered (for assertions on what a client sent)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    status: int
    body: Any = None


@dataclass
class _Fault:
    path: str
    status: int
    times: int
    method: str | None
    message: str
    retry_after: float | None


class FakeKubeServer:
    """A Kubernetes API server on 127.0.0.1 for tests. See the package docstring."""

    def __init__(self, history: int = 1000, time_scale: float = 1.0) -> None:
        """``history``: watch events kept for resuming (older versions get 410 Gone).
        ``time_scale``: multiplies every watch's ``timeoutSeconds``, so a test can see a
        1-second watch time out in 50 ms (``time_scale=0.05``) instead of waiting."""
        self.state = State(history=history)
        self.time_scale = time_scale
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self.requests: list[RequestRecord] = []
        self._sockets: set[socket.socket] = set()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeKubeServer:
        handler = _make_handler(self)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        with self.state.cond:
            self.state.closing = True
            self.state.cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            for s in list(self._sockets):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        if self._thread:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> FakeKubeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def configuration(self) -> Any:
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        config.retries = 0  # a refused connection fails at once in tests
        return config

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` pointed at this server."""
        from kubernetes import client

        return client.ApiClient(self.configuration())

    def write_kubeconfig(self, path: Any, namespace: str = "default") -> str:
        """Write a kubeconfig file whose current context is this server; returns its path."""
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "fake", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        return str(path)

    # ------------------------------------------------------------------ fault injection
    def fail_next(
        self,
        path: str,
        status: int,
        times: int = 1,
        *,
        method: str | None = None,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """The next ``times`` requests whose path starts with ``path`` (and whose method is
        ``method``, if given) answer ``status`` with a Status body instead of being served."""
        with self._lock:
            self._faults.append(
                _Fault(
                    path,
                    status,
                    times,
                    method.upper() if method else None,
                    message or f"injected fault: {status}",
                    retry_after,
                )
            )

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if path.startswith(f.path) and (f.method is None or f.method == method):
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                    return f
        return None

    def _log(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)

    def requests_to(self, path: str, method: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.path.startswith(path) and (method is None or r.method == method.upper())
            ]

    # ------------------------------------------------------------------ object hooks
    def get(self, resource: str, name: str, namespace: str | None = "default") -> dict[str, Any]:
        """An object by ``plural[.group]`` (``pods``, ``services.serving.knative.dev``)."""
        return self.state.get(resource_named(resource), namespace, name)

    def find(
        self, resource: str, name: str, namespace: str | None = "default"
    ) -> dict[str, Any] | None:
        return self.state.find(resource_named(resource), namespace, name)

    def list(
        self, resource: str, namespace: str | None = None, labels: str | None = None
    ) -> list[dict[str, Any]]:
        return self.state.list(resource_named(resource), namespace, labels)[0]

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create through the same path (and validation) as a POST."""
        res = resource_for_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        if res is None:
            raise KeyError(f"unknown kind {obj.get('apiVersion')} {obj.get('kind')}")
        ns = (obj.get("metadata") or {}).get("namespace", "default") if res.namespaced else None
        self.ensure_namespace(ns)
        return self.state.create(res, ns, obj)[0]

    def ensure_namespace(self, namespace: str | None) -> None:
        if namespace and self.state.find(resource_named("namespaces"), None, namespace) is None:
            self.state.put_direct(resource_named("namespaces"), {"metadata": {"name": namespace}})

    def add_node(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        ready: bool = True,
        unschedulable: bool = False,
        taints: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        if unschedulable:
            spec["unschedulable"] = True
        if taints:
            spec["taints"] = taints
        return self.state.put_direct(
            resource_named("nodes"),
            {
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                },
                "spec": spec,
                "status": {
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                    "addresses": [{"type": "Hostname", "address": name}],
                },
            },
        )

    def set_node_ready(self, name: str, ready: bool) -> dict[str, Any]:
        node = self.state.get(resource_named("nodes"), None, name)
        node["status"]["conditions"] = [
            c for c in node["status"].get("conditions", []) if c.get("type") != "Ready"
        ] + [{"type": "Ready", "status": "True" if ready else "False"}]
        return self.state.put_direct(resource_named("nodes"), node)

    def add_pod(  # noqa: PLR0913 - one keyword per pod field a test sets
        self,
        name: str,
        *,
        namespace: str = "default",
        node: str | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        ready: bool = True,
        phase: str = "Running",
        ip: str | None = None,
        owner: tuple[str, str] | None = None,
        mirror: bool = False,
        containers: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A pod as the scheduler and kubelet would leave it. ``owner=("DaemonSet", "x")`` sets a
        controller ownerReference; ``mirror=True`` marks a static pod's mirror."""
        self.ensure_namespace(namespace)
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        ann = dict(annotations or {})
        if mirror:
            ann["kubernetes.io/config.mirror"] = "mirror"
        if ann:
            meta["annotations"] = ann
        if owner:
            kind, oname = owner
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": kind,
                    "name": oname,
                    "uid": f"uid-{kind.lower()}-{oname}",
                    "controller": True,
                }
            ]
        spec: dict[str, Any] = {
            "containers": containers or [{"name": "main", "image": "example/main:1"}]
        }
        if node:
            spec["nodeName"] = node
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
        if phase == "Running":
            status["podIP"] = ip or f"10.0.{len(self.state.objects) % 250}.{(hash(name) % 250) + 1}"
        return self.state.put_direct(
            resource_named("pods"), {"metadata": meta, "spec": spec, "status": status}
        )

    def set_pod_ready(self, name: str, ready: bool, namespace: str = "default") -> dict[str, Any]:
        pod = self.state.get(resource_named("pods"), namespace, name)
        status = pod.setdefault("status", {})
        status["conditions"] = [
            c for c in status.get("conditions", []) if c.get("type") != "Ready"
        ] + [{"type": "Ready", "status": "True" if ready else "False"}]
        return self.state.put_direct(resource_named("pods"), pod)

    def set_pod_phase(self, name: str, phase: str, namespace: str = "default") -> dict[str, Any]:
        pod = self.state.get(resource_named("pods"), namespace, name)
        pod.setdefault("status", {})["phase"] = phase
        return self.state.put_direct(resource_named("pods"), pod)

    def set_pod_status(
        self, name: str, status: dict[str, Any], namespace: str = "default"
    ) -> dict[str, Any]:
        """Merge ``status`` into the pod's status as the kubelet would report it, e.g.
        ``{"containerStatuses": [{"name": "main", "image": "x", "imageID": "x", "ready": False,
        "restartCount": 3,
        "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}``
        (the official client's models insist on name, image, imageID, ready and restartCount)."""
        return self.patch_object("pods", name, {"status": status}, namespace)

    def patch_object(
        self, resource: str, name: str, patch: dict[str, Any], namespace: str | None = "default"
    ) -> dict[str, Any]:
        """JSON-merge-patch any object as a controller would (no validation, status included);
        watchers see MODIFIED."""
        from tests.kube_fake._patch import merge_patch

        res = resource_named(resource)
        obj = self.state.get(res, namespace, name)
        return self.state.put_direct(res, merge_patch(obj, patch))

    def delete_pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return self.state.delete(resource_named("pods"), namespace, name)

    def add_revision(
        self,
        name: str,
        *,
        namespace: str = "default",
        service: str | None = None,
        configuration: str | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A Knative Revision as the configuration controller creates it, with the
        PodAutoscaler the revision controller makes for it (same name, same annotations)."""
        self.ensure_namespace(namespace)
        labels = {"serving.knative.dev/configuration": configuration or service or name}
        if service:
            labels["serving.knative.dev/service"] = service
        meta = {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "annotations": dict(annotations or {}),
        }
        rev = self.state.put_direct(
            REVISION,
            {
                "metadata": meta,
                "spec": {"containers": [{"image": "example/replica:1"}]},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            },
        )
        self.state.put_direct(
            PODAUTOSCALER,
            {
                "metadata": {**copy.deepcopy(meta)},
                "spec": {"protocolType": "http1", "reachability": "Reachable"},
            },
        )
        return rev

    def compact(self) -> None:
        """Drop the watch history: a watch from any earlier resourceVersion gets 410 Gone."""
        self.state.compact()

    def end_watches(self) -> None:
        """Close every open watch stream cleanly (as an API server restart would)."""
        self.state.end_watches()

    def open_connections(self) -> int:
        """Client connections open now (a watch in progress holds one)."""
        with self._lock:
            return len(self._sockets)

    @property
    def resource_version(self) -> str:
        return str(self.state.rv)

    # ------------------------------------------------------------------ HTTP
    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)


def _parse_path(path: str) -> tuple[Resource, str | None, str | None, str | None]:
    """``(resource, namespace, name, subresource)`` for an API path; ApiError 404 otherwise."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise ApiError(404, f"the server could not find the requested resource ({path})")
    ns = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if not rest:
        raise ApiError(404, f"the server could not find the requested resource ({path})")
    res = resource_for_path(group, version, rest[0])
    if res is None or (ns is not None and not res.namespaced):
        raise ApiError(404, f"the server could not find the requested resource ({path})")
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if len(rest) > 3:
        raise ApiError(404, f"the server could not find the requested resource ({path})")
    return res, ns, name, sub


_NOT_ALLOWED = "the server does not allow this method on the requested resource"


class _Handler(BaseHTTPRequestHandler):
    """One API request against the fake's state; ``fake`` is set on a per-server subclass."""

    protocol_version = "HTTP/1.1"
    fake: FakeKubeServer
    _path = ""
    _query: dict[str, str]

    @property
    def state(self) -> State:
        return self.fake.state

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out in separate writes: without this, Nagle's algorithm and
        # the client's delayed ACK add 40 ms to every response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.fake._track(self.connection, False)

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self,
        code: int,
        obj: Any,
        warnings: list[str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for w in warnings or []:
            self.send_header("Warning", f'299 - "{w}"')
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _record(self, status: int, body: Any = None) -> None:
        self.fake._log(
            RequestRecord(
                self.command,
                self._path,
                self._query,
                self.headers.get("Content-Type", ""),
                status,
                body,
            )
        )

    def _send_fault(self, fault: _Fault) -> None:
        err = ApiError(fault.status, fault.message)
        extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
        self._record(fault.status)
        self._send(fault.status, err.status(), extra=extra)

    def _parse_body(self, raw: bytes) -> Any:
        if not raw:
            return None
        ctype = self.headers.get("Content-Type", "")
        try:
            return yaml.safe_load(raw) if "yaml" in ctype else json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(400, f"the request body is not valid: {exc}") from None

    def _handle(self) -> None:
        split = urlsplit(self.path)
        self._path = split.path
        self._query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        raw = self._body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else b""
        body: Any = None
        fault = self.fake._take_fault(self.command, self._path)
        if fault is not None:
            self._send_fault(fault)
            return
        try:
            body = self._parse_body(raw)
            code, obj, warnings = self._dispatch(body)
        except ApiError as err:
            self._record(err.code, body)
            self._send(err.code, err.status())
            return
        except SelectorError as err:
            self._record(400, body)
            self._send(400, ApiError(400, str(err)).status())
            return
        if code == 0:  # a watch wrote its own response
            self._record(200, body)
            return
        self._record(code, body)
        self._send(code, obj, warnings)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    # ------------------------------------------------------------------ routing
    def _dispatch(self, body: Any) -> tuple[int, Any, list[str]]:
        if self._path == "/version":
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-surefoot-fake"}, []
        res, ns, name, sub = _parse_path(self._path)
        if name is None:
            return self._collection(res, ns, body)
        if res.namespaced and ns is None:
            raise ApiError(404, f"the server could not find the requested resource ({self._path})")
        if sub == "eviction":
            if res.plural != "pods" or res.group or self.command != "POST":
                raise ApiError(405, "eviction is a POST on pods only")
            return 201, self.state.evict(ns or "", name, body, dry_run=self._dry_run), []
        if sub not in (None, "status"):
            raise ApiError(404, f"the server could not find the requested resource ({self._path})")
        if sub == "status" and not res.status_subresource:
            raise ApiError(404, f"{res.key} has no status subresource")
        return self._object(res, ns, name, sub, body)

    @property
    def _dry_run(self) -> bool:
        return self._query.get("dryRun") == "All"

    @property
    def _field_validation(self) -> str:
        return self._query.get("fieldValidation", "Warn")

    def _collection(
        self, res: Resource, ns: str | None, body: Any
    ) -> tuple[int, Any, list[str]]:
        q = self._query
        if self.command == "GET":
            if q.get("watch") in ("true", "1"):
                self._watch(res, ns)
                return 0, None, []
            items, rv = self.state.list(res, ns, q.get("labelSelector"), q.get("fieldSelector"))
            listing = {
                "apiVersion": res.api_version,
                "kind": f"{res.kind}List",
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
            return 200, listing, []
        if self.command == "POST":
            if res.namespaced and ns is None:
                raise ApiError(405, _NOT_ALLOWED)
            obj, warnings = self.state.create(
                res, ns, body, dry_run=self._dry_run, field_validation=self._field_validation
            )
            return 201, obj, warnings
        raise ApiError(405, _NOT_ALLOWED)

    def _object(
        self, res: Resource, ns: str | None, name: str, sub: str | None, body: Any
    ) -> tuple[int, Any, list[str]]:
        m, q, state = self.command, self._query, self.state
        if m == "GET":
            return 200, state.get(res, ns, name), []
        if m == "PUT":
            obj, warnings = state.replace(
                res, ns, name, body, subresource=sub, dry_run=self._dry_run,
                field_validation=self._field_validation,
            )
            return 200, obj, warnings
        if m == "PATCH":
            obj, warnings, created = state.patch(
                res,
                ns,
                name,
                self.headers.get("Content-Type", ""),
                body,
                subresource=sub,
                field_manager=q.get("fieldManager"),
                force=q.get("force") == "true",
                dry_run=self._dry_run,
                field_validation=self._field_validation,
            )
            return (201 if created else 200), obj, warnings
        if m == "DELETE":
            return 200, state.delete(res, ns, name, dry_run=self._dry_run), []
        raise ApiError(405, _NOT_ALLOWED)

    # ------------------------------------------------------------------ watch
    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch_start(
        self, res: Resource, ns: str | None
    ) -> tuple[list[dict[str, Any]], int, bool, int]:
        """(initial events, last resourceVersion, too old, watch epoch), under the lock."""
        q, state = self._query, self.state
        rv_param = q.get("resourceVersion") or ""
        with state.cond:
            gone = False
            initial: list[dict[str, Any]] = []
            if rv_param in ("", "0"):
                listed = state.list(res, ns, q.get("labelSelector"), q.get("fieldSelector"))[0]
                initial = [{"type": "ADDED", "object": o} for o in listed]
                last = state.rv
            else:
                try:
                    last = int(rv_param)
                except ValueError:
                    raise ApiError(400, f"invalid resourceVersion {rv_param!r}") from None
                gone = last < state.floor
            return initial, last, gone, state.watch_epoch

    def _next_batch(
        self, res: Resource, last: int, epoch: int, deadline: float
    ) -> tuple[list[Event], int, bool]:
        """Wait for changes after ``last``: (batch, new last, too old)."""
        state = self.state
        with state.cond:
            while not (state.closing or state.watch_epoch != epoch):
                if last < state.floor:
                    return [], last, True
                batch = [e for e in state.events if e.rv > last and e.resource == res]
                newest = state.events[-1].rv if state.events else last
                last = max(last, newest)
                if batch:
                    return batch, last, False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                state.cond.wait(min(remaining, 0.5))
        return [], last, False

    def _watch(self, res: Resource, ns: str | None) -> None:
        q = self._query
        lsel = label_selector(q.get("labelSelector"))
        fsel = field_selector(res.plural, q.get("fieldSelector"))
        try:
            seconds = float(q.get("timeoutSeconds") or DEFAULT_WATCH_SECONDS)
        except ValueError:
            raise ApiError(400, "timeoutSeconds must be a number") from None

        def matches(obj: dict[str, Any] | None) -> bool:
            if obj is None:
                return False
            if res.namespaced and ns is not None and obj["metadata"].get("namespace") != ns:
                return False
            return lsel(obj["metadata"].get("labels") or {}) and fsel(obj)

        initial, last, gone, epoch = self._watch_start(res, ns)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + seconds * self.fake.time_scale
        try:
            self._stream(res, initial, last, gone, epoch, deadline, matches)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True

    def _stream(
        self, res: Resource, initial: list[dict[str, Any]], last: int, gone: bool, epoch: int,
        deadline: float, matches: Any,
    ) -> None:
        if gone:
            self._send_gone(last)
            return
        for ev in initial:
            self._chunk(json.dumps(ev).encode() + b"\n")
        while True:
            batch, last, gone = self._next_batch(res, last, epoch, deadline)
            if gone:
                self._send_gone(last)
                return
            if not batch:
                break
            for e in batch:
                for out in _watch_events(e, matches):
                    self._chunk(json.dumps(out).encode() + b"\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_gone(self, rv: int) -> None:
        status = ApiError(
            410, f"too old resource version: {rv} ({self.state.floor})", reason="Expired"
        ).status()
        self._chunk(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _make_handler(server: FakeKubeServer) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"fake": server})


def _watch_events(e: Event, matches: Any) -> Iterator[dict[str, Any]]:
    """What a watcher with a selector sees for one change: an object moving into the selection
    is ADDED, one moving out is DELETED (as the watch cache reports it)."""
    now, before = matches(e.obj), matches(e.prev)
    if e.type == "DELETED":
        if before or now:
            yield {"type": "DELETED", "object": e.obj}
    elif e.type == "ADDED" or (now and not before):
        if now:
            yield {"type": "ADDED", "object": e.obj}
    elif now and before:
        yield {"type": "MODIFIED", "object": e.obj}
    elif before and not now:
        yield {"type": "DELETED", "object": e.obj}
