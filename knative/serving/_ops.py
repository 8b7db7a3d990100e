"""A replica's operational routes and request bookkeeping: the probes Kubernetes (or the local
platform) asks, Prometheus metrics, the admin status, and per-route request counts and latency.

Readiness tells the truth: false until a model is loaded, while draining, while the node is
quarantined and while the replica is a standby; ``/readyz?model=NAME`` answers for one model
(a replica serves completions while its embedding model still loads). Liveness only says the
process answers.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from knative.serving._runtime import Runtime


class OpsRoutes:
    """``/healthz``, ``/readyz``, ``/metrics`` and ``/admin/status`` over one runtime, and the
    request counts and latency of every route."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def blueprint(self) -> Blueprint:
        bp = Blueprint("ops", __name__)
        bp.before_app_request(self.start_timer)
        bp.after_app_request(self.observe)
        bp.add_url_rule("/healthz", view_func=self.healthz, methods=["GET"])
        bp.add_url_rule("/readyz", view_func=self.readyz, methods=["GET"])
        bp.add_url_rule("/metrics", view_func=self.metrics, methods=["GET"])
        bp.add_url_rule("/admin/status", view_func=self.admin_status, methods=["GET"])
        return bp

    # --- bookkeeping -----------------------------------------------------------------------
    def start_timer(self) -> None:
        g.start = time.perf_counter()

    def observe(self, resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        start = g.get("start", time.perf_counter())
        status = str(resp.status_code)
        m = self.rt.metrics

        def record() -> None:
            m.requests.labels(route, status).inc()
            m.latency.labels(route).observe(time.perf_counter() - start)

        if resp.is_streamed:
            resp.call_on_close(record)  # at the end of the stream
        else:
            record()
        return resp

    # --- routes ----------------------------------------------------------------------------
    def healthz(self) -> Response:
        return jsonify({"status": "ok"})

    def readyz(self) -> Response:
        model = request.args.get("model") or None
        if model is not None and model not in self.rt.served_models():
            resp = jsonify({"ready": False, "error": f"model: {model!r} is not served here "
                            f"(models: {', '.join(self.rt.served_models()) or 'none'})"})
            resp.status_code = 404
            return resp
        reason = self.rt.not_ready_reason(model)
        models = self.rt.models_readiness()
        if reason is None:
            return jsonify({"ready": True, "models": models})
        resp = jsonify({"ready": False, "reason": reason, "models": models,
                        "standby": self.rt.standby})
        resp.status_code = 503
        return resp

    def metrics(self) -> Response:
        return Response(generate_latest(self.rt.metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    def admin_status(self) -> Response:
        return jsonify(self.rt.status())
