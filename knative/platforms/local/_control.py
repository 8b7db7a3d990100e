"""The local platform over HTTP: a control API served by ``surefoot up``, and its client.

``surefoot status``, ``surefoot kill``, ``surefoot evict``, the gateway and the drill run in
their own processes; they reach the one ``LocalPlatform`` of ``surefoot up`` through this small
API, and ``LocalPlatformClient`` gives them the same :class:`knative.Platform` interface the
Knative platform has. Platform errors travel as HTTP statuses and come back as the same types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import httpx
from flask import Blueprint, Flask, Response, jsonify, request

from knative.platforms import (
    Conflict,
    EvictionReport,
    Node,
    NotFound,
    PermanentPlatformError,
    PlatformError,
    Replica,
    Target,
    TemporaryPlatformError,
    TooManyRequests,
)
from knative.platforms.local._platform import LocalPlatform

_STATUS = {NotFound: 404, Conflict: 409, TooManyRequests: 429}


def _platform_error(exc: PlatformError) -> tuple[Response, int]:
    status = _STATUS.get(type(exc), 503 if exc.temporary else 422)
    return jsonify({"error": str(exc), "type": type(exc).__name__}), status


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise PermanentPlatformError("request body must be a JSON object")
    return data


def _targets(body: dict[str, Any]) -> list[Target]:
    raw = body.get("targets")
    if not isinstance(raw, list):
        raise PermanentPlatformError("targets: must be a list")
    try:
        return [Target(str(t["revision"]), int(t["percent"]), t.get("tag")) for t in raw]
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentPlatformError(f"targets: {exc}") from exc


def _scale(body: dict[str, Any]) -> tuple[int, int]:
    try:
        return int(body["min"]), int(body["max"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PermanentPlatformError(f"scale: min and max integers required ({exc})") from exc


def _timeout(raw: str) -> float:
    try:
        timeout = float(raw)
    except ValueError:
        timeout = math.nan
    if not 0 <= timeout < math.inf:  # NaN would make the drain loop never end
        raise PermanentPlatformError(f"timeout: {raw!r} is not a number of seconds >= 0")
    return timeout


MAX_WAIT = 60.0  # the longest a ``GET /v1/changes`` waits


def _wait_args(args: Mapping[str, str]) -> tuple[int, float]:
    """``after`` (a generation) and ``timeout`` (seconds, at most MAX_WAIT) of a long-poll."""
    try:
        after = int(args.get("after", "0"))
    except ValueError:
        raise PermanentPlatformError(
            f"after: {args.get('after')!r} is not a generation (an integer)") from None
    raw = args.get("timeout", "10")
    try:
        timeout = float(raw)
    except ValueError:
        timeout = math.nan
    if not 0 <= timeout <= MAX_WAIT:
        raise PermanentPlatformError(
            f"timeout: {raw!r} is not a number of seconds within 0..{MAX_WAIT:g}")
    return after, timeout


class ControlAPI:
    """The views of the control API: each one platform call, its arguments from the request."""

    def __init__(self, platform: LocalPlatform) -> None:
        self.platform = platform

    def status(self) -> Response:
        return jsonify(self.platform.status())

    def replicas(self, service: str) -> Response:
        return jsonify([r.__dict__ for r in self.platform.replicas(service)])

    def changes(self) -> Response:
        """Long-poll: the routing state's generation once it is not ``after``."""
        after, timeout = _wait_args(request.args)
        return jsonify({"generation": self.platform.wait_change(after, timeout)})

    def traffic(self, service: str) -> Response:
        return jsonify([t.__dict__ for t in self.platform.traffic(service)])

    def set_traffic(self, service: str) -> Response:
        targets = _targets(_body())
        self.platform.set_traffic(service, targets)
        return jsonify([t.__dict__ for t in targets])

    def set_scale(self, service: str, revision: str) -> Response:
        lo, hi = _scale(_body())
        self.platform.set_scale(service, revision, lo, hi)
        return jsonify({"min": lo, "max": hi})

    def set_standby(self) -> Response:
        raw = _body().get("count")
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise PermanentPlatformError(f"count: must be an integer, got {raw!r}")
        self.platform.set_standby(raw)
        return jsonify({"count": raw})

    def delete_replica(self, name: str) -> Response:
        self.platform.delete_replica(name)
        return jsonify({"deleted": name})

    def nodes(self) -> Response:
        return jsonify([n.__dict__ for n in self.platform.nodes()])

    def node_action(self, node: str, action: str) -> Response:
        if action == "evict":
            report = self.platform.evict(node, _timeout(request.args.get("timeout", "120")))
            return jsonify({**report.__dict__, "complete": report.complete})
        actions = {"cordon": self.platform.cordon, "uncordon": self.platform.uncordon}
        if action not in actions:
            raise NotFound(f"no node action {action!r} (cordon, uncordon, evict)")
        actions[action](node)
        return jsonify({"node": node, "action": action})

    def label(self, node: str) -> Response:
        for key, value in _body().items():
            self.platform.label(node, key, None if value is None else str(value))
        return jsonify({"node": node})

    def blueprint(self) -> Blueprint:
        bp = Blueprint("local_platform", __name__, url_prefix="/v1")
        bp.register_error_handler(PlatformError, _platform_error)
        routes: list[tuple[str, str, Callable[..., Response]]] = [
            ("GET", "/status", self.status),
            ("GET", "/changes", self.changes),
            ("GET", "/services/<service>/replicas", self.replicas),
            ("GET", "/services/<service>/traffic", self.traffic),
            ("PUT", "/services/<service>/traffic", self.set_traffic),
            ("PUT", "/services/<service>/revisions/<revision>/scale", self.set_scale),
            ("PUT", "/standby", self.set_standby),
            ("DELETE", "/replicas/<name>", self.delete_replica),
            ("GET", "/nodes", self.nodes),
            ("POST", "/nodes/<node>/<action>", self.node_action),
            ("PATCH", "/nodes/<node>/labels", self.label),
        ]
        for method, rule, view in routes:
            bp.add_url_rule(rule, view_func=view, methods=[method])
        return bp


def create_control_app(platform: LocalPlatform) -> Flask:
    """The control API of ``platform`` as a Flask app (``surefoot up`` serves it)."""
    app = Flask(__name__)
    app.register_blueprint(ControlAPI(platform).blueprint())
    return app


class LocalPlatformClient:
    """:class:`knative.Platform` over the control API of a running ``surefoot up``."""

    def __init__(self, url: str, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def _call(self, method: str, path: str, timeout: float | None = None,
              **kwargs: Any) -> Any:
        try:
            r = self._http.request(method, path, timeout=timeout or self._http.timeout,
                                   **kwargs)
        except httpx.HTTPError as exc:
            raise TemporaryPlatformError(
                f"local platform at {self.url} unreachable ({exc}); is `surefoot up` running?"
            ) from exc
        if r.status_code < 400:
            return r.json()
        try:
            message = r.json().get("error", r.text)
        except ValueError:
            message = r.text
        if r.status_code == 404:
            raise NotFound(message)
        if r.status_code == 409:
            raise Conflict(message)
        if r.status_code == 429:
            raise TooManyRequests(message)
        if r.status_code >= 500:
            raise TemporaryPlatformError(message)
        raise PermanentPlatformError(message)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/status")
        return result

    def replicas(self, service: str) -> list[Replica]:
        return [Replica(**r) for r in self._call("GET", f"/v1/services/{service}/replicas")]

    def wait_change(self, after: int, timeout: float) -> int:
        """The platform's routing generation once it is not ``after``, or after ``timeout``
        s (see :meth:`LocalPlatform.wait_change`)."""
        body = self._call("GET", "/v1/changes", timeout=timeout + 5.0,
                          params={"after": after, "timeout": min(timeout, MAX_WAIT)})
        return int(body["generation"])

    def traffic(self, service: str) -> list[Target]:
        return [Target(**t) for t in self._call("GET", f"/v1/services/{service}/traffic")]

    def set_traffic(self, service: str, targets: list[Target]) -> None:
        self._call("PUT", f"/v1/services/{service}/traffic",
                   json={"targets": [t.__dict__ for t in targets]})

    def set_scale(self, service: str, revision: str, min_scale: int, max_scale: int) -> None:
        self._call("PUT", f"/v1/services/{service}/revisions/{revision}/scale",
                   json={"min": min_scale, "max": max_scale})

    def set_standby(self, count: int) -> None:
        """Keep ``count`` loaded standbys per revision (0 stops them)."""
        self._call("PUT", "/v1/standby", json={"count": count})

    def delete_replica(self, name: str) -> None:
        self._call("DELETE", f"/v1/replicas/{name}")

    def nodes(self) -> list[Node]:
        return [Node(**n) for n in self._call("GET", "/v1/nodes")]

    def cordon(self, node: str) -> None:
        self._call("POST", f"/v1/nodes/{node}/cordon")

    def uncordon(self, node: str) -> None:
        self._call("POST", f"/v1/nodes/{node}/uncordon")

    def label(self, node: str, key: str, value: str | None) -> None:
        self._call("PATCH", f"/v1/nodes/{node}/labels", json={key: value})

    def evict(self, node: str, timeout: float = 120.0) -> EvictionReport:
        r = self._call("POST", f"/v1/nodes/{node}/evict", timeout=timeout + 10,
                       params={"timeout": timeout})
        return EvictionReport(r["node"], tuple(r["evicted"]), tuple(r["skipped"]),
                              tuple(r["refused"]), float(r["seconds"]))
