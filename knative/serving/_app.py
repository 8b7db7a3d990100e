"""The serving replica's WSGI app: the OpenAI HTTP API over one model instance per process.

It is the thing the rest of Surefoot protects, so it must tell the truth in its probes, refuse
work it cannot take (a bounded admission queue, 503 with ``Retry-After``) instead of piling up
threads, and drain cleanly on SIGTERM: readiness goes false at once, new requests are refused
with a retryable 503, in-flight requests (streams included) finish, then drain hooks (a
checkpoint snapshot) run and the process exits. The app is three blueprints over one
:class:`Runtime`: the errors, the operational routes, the OpenAI routes.
"""

from __future__ import annotations

from flask import Flask, request

from knative.serving._api import OpenAIRoutes
from knative.serving._backends import EmbeddingBackend, GenerationBackend
from knative.serving._errors import ErrorReplies
from knative.serving._liveness import client_alive, socket_probe
from knative.serving._ops import OpsRoutes
from knative.serving._runtime import Runtime, build_backends
from knative.serving._settings import ServeSettings

_EXTENSION = "surefoot"


def create_app(
    settings: ServeSettings,
    generation: GenerationBackend | None = None,
    embedding: EmbeddingBackend | None = None,
    *,
    runtime: Runtime | None = None,
) -> Flask:
    """The replica's WSGI app.

    Backends passed in are taken as loaded (tests share one model across apps). With none
    given, backends are built from ``settings`` and the caller loads them (``load_models``),
    typically in a background thread so that probes answer while the model loads.
    """
    if runtime is None:
        preloaded = generation is not None or embedding is not None
        if not preloaded:
            generation, embedding = build_backends(settings)
        runtime = Runtime(settings, generation, embedding)
        if preloaded:
            runtime.mark_loaded()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[_EXTENSION] = runtime
    app.register_blueprint(ErrorReplies(runtime).blueprint())
    app.register_blueprint(OpsRoutes(runtime).blueprint())
    app.register_blueprint(OpenAIRoutes(runtime).blueprint())
    app.before_request(_watch_client)
    return app


def _watch_client() -> None:
    """Let the engine see this request's client hang up (where the server gives its socket)."""
    sock = request.environ.get("gunicorn.socket") or request.environ.get("werkzeug.socket")
    client_alive.set(socket_probe(sock) if sock is not None else None)


def runtime_of(app: Flask) -> Runtime:
    """The runtime behind an app made by :func:`create_app`."""
    rt: Runtime = app.extensions[_EXTENSION]
    return rt
