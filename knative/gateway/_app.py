"""The gateway as one WSGI app: ``/v1/*`` straight to the :class:`Gateway` (no Flask on the
hot path), and Flask routes for the rest: ``/healthz``, ``/readyz``, ``/metrics``,
``GET /admin/breakers`` and ``POST /admin/breakers/<key>``, as blueprints over the gateway's
public methods."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from knative.breakers import BreakerRegistry, BreakerUnavailable, keys_for, revision_key
from knative.gateway._admin import AdminError
from knative.gateway._gateway import Gateway
from knative.gateway._routing import Resolver
from knative.gateway._settings import GatewaySettings
from knative.gateway._upstream import UpstreamPool

_EXTENSION = "surefoot.gateway"


class ProbeRoutes:
    """``/healthz``, ``/readyz`` and ``/metrics`` of one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway

    def blueprint(self) -> Blueprint:
        bp = Blueprint("probes", __name__)
        bp.add_url_rule("/healthz", view_func=self.healthz, methods=["GET"])
        bp.add_url_rule("/readyz", view_func=self.readyz, methods=["GET"])
        bp.add_url_rule("/metrics", view_func=self.metrics, methods=["GET"])
        bp.app_errorhandler(HTTPException)(self.http_error)
        return bp

    def healthz(self) -> Response:
        return jsonify({"status": "ok"})

    def readyz(self) -> Response:
        ready, body = self.gw.readiness()
        r = jsonify(body)
        r.status_code = 200 if ready else 503
        return r

    def metrics(self) -> Response:
        m = self.gw.metrics
        return Response(m.exposition(), mimetype=m.content_type)

    def http_error(self, exc: HTTPException) -> Response:
        code = exc.code or 500
        r = jsonify({"error": {"message": exc.description, "code": code}})
        r.status_code = code
        return r


class AdminRoutes:
    """The breaker admin API of one gateway, behind its bearer token; the keys it knows are
    those of the gateway's routing table (and the breakers already in the store)."""

    def __init__(self, gateway: Gateway) -> None:
        self.admin = gateway.admin
        self.resolver = gateway.resolver

    def blueprint(self) -> Blueprint:
        bp = Blueprint("admin", __name__)
        bp.add_url_rule("/admin/breakers", view_func=self.list_breakers, methods=["GET"])
        bp.add_url_rule("/admin/breakers/<path:key>", view_func=self.act_breaker,
                        methods=["POST"])
        bp.app_errorhandler(AdminError)(self.admin_error)
        bp.app_errorhandler(BreakerUnavailable)(self.unavailable)
        return bp

    def targets(self) -> list[str]:
        """The breaker keys the routing table names: each revision, node and replica."""
        keys = []
        for route in self.resolver.table().revisions():
            keys.append(revision_key(route.revision))
            for e in route.endpoints:
                keys += keys_for(route.revision, e.node, e.replica)[1:]
        return keys

    def list_breakers(self) -> Response:
        self.admin.authorize(request.headers.get("Authorization"))
        return jsonify(self.admin.report(self.targets()))

    def act_breaker(self, key: str) -> Response:
        self.admin.authorize(request.headers.get("Authorization"))
        return jsonify(self.admin.act(key, request.get_json(silent=True, force=True),
                                      self.targets))

    def admin_error(self, exc: AdminError) -> Response:
        r = jsonify({"error": {"message": str(exc), "code": exc.status, **exc.extra}})
        r.status_code = exc.status
        r.headers.update(exc.headers)
        return r

    def unavailable(self, exc: BreakerUnavailable) -> Response:
        r = jsonify({"error": {"message": f"breaker store unavailable: {exc}", "code": 503}})
        r.status_code = 503
        r.headers["Retry-After"] = "1"
        return r


def gateway_of(app: Flask) -> Gateway:
    """The :class:`Gateway` behind an app made by :func:`create_app`."""
    gw: Gateway = app.extensions[_EXTENSION]
    return gw


def create_app(
    settings: GatewaySettings,
    resolver: Resolver,
    breakers: BreakerRegistry | None = None,
    *,
    pool: UpstreamPool | None = None,
    rng: random.Random | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Flask:
    """The gateway as a WSGI app: ``/v1/*`` proxied, plus ``/healthz``, ``/readyz``,
    ``/metrics``, ``GET /admin/breakers`` and ``POST /admin/breakers/<key>``."""
    app = Flask("knative.gateway")
    gw = Gateway(settings, resolver, breakers, pool, rng, sleep)
    app.extensions[_EXTENSION] = gw
    app.register_blueprint(ProbeRoutes(gw).blueprint())
    app.register_blueprint(AdminRoutes(gw).blueprint())
    flask_wsgi = app.wsgi_app

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO", "").startswith("/v1/"):
            return gw(environ, start_response)
        return flask_wsgi(environ, start_response)

    app.wsgi_app = wsgi  # type: ignore[method-assign]
    return app
