"""The serving replica: the OpenAI HTTP API over one model instance per process.

It is the thing the rest of Surefoot protects, so it must tell the truth in its probes, refuse
work it cannot take (a bounded admission queue, 503 with ``Retry-After``) instead of piling up
threads, and drain cleanly on SIGTERM: readiness goes false at once, new requests are refused
with a retryable 503, in-flight requests (streams included) finish, then drain hooks (a
checkpoint snapshot) run and the process exits.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from knative.serving import _openai as oa
from knative.serving._backends import (
    BackendError,
    ContextOverflow,
    Delta,
    EmbeddingBackend,
    EngineBusy,
    GenerationBackend,
    LlamaCppBackend,
    ModelLoadError,
    SentenceTransformerBackend,
)
from knative.serving._settings import ServeSettings

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The replica cannot take this request now (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int = 1, code: str = "unavailable") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "surefoot_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "surefoot_request_seconds", "Request latency (whole stream for streams)", ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.ttft = Histogram(
            "surefoot_time_to_first_token_seconds", "Time to the first generated token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10), registry=r,
        )
        self.tokens = Counter(
            "surefoot_generated_tokens", "Generated tokens", ["model"], registry=r
        )
        self.queue_depth = Gauge(
            "surefoot_queue_depth", "Admitted requests waiting for the engine", registry=r
        )
        self.inflight = Gauge("surefoot_inflight_requests", "Admitted requests", registry=r)
        self.rejected = Counter(
            "surefoot_rejected_requests", "Requests refused with 503", ["reason"], registry=r
        )
        self.load_seconds = Gauge(
            "surefoot_model_load_seconds", "Seconds to load each model", ["model"], registry=r
        )
        self.restore_seconds = Gauge(
            "surefoot_checkpoint_restore_seconds", "Seconds to restore the checkpoint at start",
            registry=r,
        )
        self.ready = Gauge("surefoot_ready", "1 when the readiness probe passes", registry=r)


@dataclass
class Runtime:
    """The replica's mutable state: models, admission, lifecycle phases, drain hooks."""

    settings: ServeSettings
    generation: GenerationBackend | None
    embedding: EmbeddingBackend | None
    metrics: _Metrics = field(default_factory=_Metrics)
    loaded: threading.Event = field(default_factory=threading.Event)
    load_error: str | None = None
    draining: bool = False
    quarantine_reason: str | None = None
    phases: dict[str, float] = field(default_factory=dict)
    drain_hooks: list[Callable[[], None]] = field(default_factory=list)
    quarantine_check: Callable[[], str | None] | None = None
    _inflight: int = 0
    _running: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    # --- readiness -------------------------------------------------------------------------
    def not_ready_reason(self) -> str | None:
        if self.load_error:
            return f"model load failed: {self.load_error}"
        if not self.loaded.is_set():
            return "loading model"
        if self.draining:
            return "draining"
        if self.quarantine_check is not None:
            reason = self.quarantine_check()
            if reason:
                return f"quarantined: {reason}"
        return None

    def served_models(self) -> list[str]:
        out = []
        if self.generation is not None:
            out.append(self.generation.model_id)
        if self.embedding is not None:
            out.append(self.embedding.model_id)
        return out

    # --- admission -------------------------------------------------------------------------
    def admit(self) -> _Ticket:
        reason = self.not_ready_reason()
        if reason:
            code = "draining" if self.draining else "not_ready"
            self.metrics.rejected.labels(code).inc()
            raise Unavailable(f"replica not ready: {reason}", retry_after=1, code=code)
        with self._cond:
            if self._inflight >= self.settings.queue_capacity:
                self.metrics.rejected.labels("queue_full").inc()
                raise Unavailable(
                    f"admission queue full ({self.settings.queue_capacity} requests)",
                    retry_after=1, code="queue_full",
                )
            self._inflight += 1
            self._publish()
        return _Ticket(self)

    def _publish(self) -> None:
        self.metrics.inflight.set(self._inflight)
        self.metrics.queue_depth.set(max(0, self._inflight - self._running))

    def _release(self, ticket: _Ticket) -> None:
        with self._cond:
            if ticket.running:
                self._running -= 1
            self._inflight -= 1
            self._publish()
            self._cond.notify_all()

    @property
    def inflight(self) -> int:
        return self._inflight

    # --- drain -----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        if not self.draining:
            log.info("draining: readiness false, refusing new requests, %d in flight",
                     self._inflight)
        self.draining = True
        self.metrics.ready.set(0)

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._inflight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def drain(self, grace: float) -> bool:
        """Refuse new work, wait up to ``grace`` for in-flight requests, then run the drain
        hooks (a checkpoint snapshot; each bounds its own time). True if all requests finished.
        """
        self.begin_drain()
        idle = self.wait_idle(grace)
        if not idle:
            log.warning("grace period of %.1f s ran out with %d requests in flight",
                        grace, self._inflight)
        for hook in self.drain_hooks:
            try:
                hook()
            except Exception:  # a failing hook must not keep the process from exiting
                log.exception("drain hook failed")
        return idle

    def status(self) -> dict[str, Any]:
        reason = self.not_ready_reason()
        s = self.settings
        return {
            "replica": s.replica, "revision": s.revision, "node": s.node, "pid": os.getpid(),
            "ready": reason is None, "reason": reason, "draining": self.draining,
            "inflight": self._inflight, "models": self.served_models(), "phases": self.phases,
        }


class _Ticket:
    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime
        self._done = False
        self.running = False

    def start(self) -> None:
        with self._rt._cond:
            if not self.running and not self._done:
                self.running = True
                self._rt._running += 1
                self._rt._publish()

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._rt._release(self)


def build_backends(
    settings: ServeSettings,
) -> tuple[GenerationBackend | None, EmbeddingBackend | None]:
    gen = LlamaCppBackend(
        settings.model, model_id=settings.model_id or None, n_ctx=settings.n_ctx,
        n_threads=settings.n_threads or None, n_gpu_layers=settings.n_gpu_layers,
        queue_timeout=settings.queue_timeout, chat_format=settings.chat_format,
    ) if settings.model else None
    emb = SentenceTransformerBackend(
        settings.embedding_model, cuda=settings.cuda, queue_timeout=settings.queue_timeout,
        n_threads=settings.n_threads or None,
    ) if settings.embedding_model else None
    return gen, emb


def load_models(runtime: Runtime, before: Callable[[], object] | None = None,
                after: Callable[[], object] | None = None) -> None:
    """Load every model of the runtime, recording phases and load seconds; ``before`` runs
    first (restore a checkpoint), ``after`` once the models are in (put engine state back).
    Readiness turns true only when all of it is done."""
    try:
        if before is not None:
            before()
        for backend in (runtime.generation, runtime.embedding):
            if backend is None:
                continue
            start = time.perf_counter()
            backend.load()
            seconds = time.perf_counter() - start
            runtime.metrics.load_seconds.labels(backend.model_id).set(seconds)
            log.info("model %s loaded in %.2f s", backend.model_id, seconds)
        runtime.phases["model_loaded"] = time.time()
        if after is not None:
            after()
        runtime.loaded.set()
        runtime.metrics.ready.set(1)
    except ModelLoadError as exc:
        runtime.load_error = str(exc)
        log.error("model load failed: %s", exc)
        raise


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


_DONE = b"data: [DONE]\n\n"


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
            runtime.phases["model_loaded"] = time.time()
            runtime.loaded.set()
            runtime.metrics.ready.set(1)
    rt = runtime
    m = rt.metrics
    limits = oa.Limits(max_tokens=settings.max_tokens)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["surefoot"] = rt

    # --- errors ----------------------------------------------------------------------------
    def err(status: int, message: str, etype: str, param: str | None = None,
            code: str | None = None, headers: dict[str, str] | None = None) -> Response:
        resp = jsonify(oa.error_body(message, etype, param, code))
        resp.status_code = status
        for k, v in (headers or {}).items():
            resp.headers[k] = v
        return resp

    @app.errorhandler(oa.RequestInvalid)
    def _invalid(exc: oa.RequestInvalid) -> Response:
        code = "model_not_found" if isinstance(exc, oa.ModelNotFound) else None
        body = oa.error_body(str(exc), exc.error_type, exc.param, code)
        body["error"]["fields"] = [{"param": e.param, "message": e.message} for e in exc.errors]
        resp = jsonify(body)
        resp.status_code = exc.status
        return resp

    @app.errorhandler(ContextOverflow)
    def _overflow(exc: ContextOverflow) -> Response:
        return err(400, str(exc), "invalid_request_error", exc.param, "context_length_exceeded")

    @app.errorhandler(Unavailable)
    def _unavailable(exc: Unavailable) -> Response:
        return err(503, str(exc), "unavailable", None, exc.code,
                   {"Retry-After": str(exc.retry_after)})

    @app.errorhandler(EngineBusy)
    def _busy(exc: EngineBusy) -> Response:
        m.rejected.labels("engine_busy").inc()
        return err(503, str(exc), "unavailable", None, "engine_busy", {"Retry-After": "1"})

    @app.errorhandler(BackendError)
    def _backend(exc: BackendError) -> Response:
        log.exception("backend error")
        return err(500, f"model backend failed: {exc}", "server_error")

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        return err(413, f"request body exceeds {settings.max_body_bytes} bytes",
                   "invalid_request_error", "body")

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return err(exc.code or 500, exc.description or exc.name, "invalid_request_error")

    # --- bookkeeping -----------------------------------------------------------------------
    @app.before_request
    def _start() -> None:
        g.start = time.perf_counter()

    @app.after_request
    def _observe(resp: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        start = g.get("start", time.perf_counter())
        status = str(resp.status_code)

        def record() -> None:
            m.requests.labels(route, status).inc()
            m.latency.labels(route).observe(time.perf_counter() - start)

        if resp.is_streamed:
            resp.call_on_close(record)  # at the end of the stream
        else:
            record()
        return resp

    def body_json() -> Any:
        if request.mimetype != "application/json":
            raise _UnsupportedType(request.mimetype or "none")
        raw = request.get_data(cache=False)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise oa.RequestInvalid([oa.FieldError("body", f"invalid JSON: {exc}")]) from exc

    @app.errorhandler(_UnsupportedType)
    def _unsupported(exc: _UnsupportedType) -> Response:
        return err(415, f"Content-Type must be application/json, got {exc}",
                   "invalid_request_error", "Content-Type")

    # --- probes and metrics ----------------------------------------------------------------
    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Response:
        reason = rt.not_ready_reason()
        if reason is None:
            return jsonify({"ready": True})
        resp = jsonify({"ready": False, "reason": reason})
        resp.status_code = 503
        return resp

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(m.registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/admin/status")
    def admin_status() -> Response:
        return jsonify(rt.status())

    # --- OpenAI API ------------------------------------------------------------------------
    @app.get("/v1/models")
    def models() -> Response:
        created = int(rt.phases.get("model_loaded", time.time()))
        data = [{"id": mid, "object": "model", "created": created, "owned_by": "surefoot"}
                for mid in rt.served_models()]
        return jsonify({"object": "list", "data": data})

    def generation_backend(model: str) -> GenerationBackend:
        if rt.generation is None or model != rt.generation.model_id:
            raise oa.ModelNotFound(model, [rt.generation.model_id] if rt.generation else [])
        return rt.generation

    def gen_models() -> list[str]:
        return [rt.generation.model_id] if rt.generation else []

    @app.post("/v1/completions")
    def completions() -> Response:
        body = body_json()
        req = oa.parse_completion(body, gen_models(), limits)
        backend = generation_backend(req.model)
        ticket = rt.admit()
        try:
            if req.stream:
                return _stream_response(
                    ticket, req.model, "text_completion", "cmpl", req.prompts,
                    lambda p: backend.stream_complete(p, req.params), req.include_usage,
                )
            ticket.start()
            start = time.perf_counter()
            choices, prompt_tokens, completion_tokens = [], 0, 0
            for i, prompt in enumerate(req.prompts):
                out = backend.complete(prompt, req.params, echo=req.echo)
                choices.append({"index": i, "text": out.text, "logprobs": None,
                                "finish_reason": out.finish_reason})
                prompt_tokens += out.prompt_tokens
                completion_tokens += out.completion_tokens
            m.ttft.observe(time.perf_counter() - start)
            m.tokens.labels(req.model).inc(completion_tokens)
            return jsonify({
                "id": oa.new_id("cmpl"), "object": "text_completion", "created": oa.now(),
                "model": req.model, "choices": choices,
                "usage": _usage(prompt_tokens, completion_tokens),
            })
        finally:
            if not req.stream:
                ticket.release()

    @app.post("/v1/chat/completions")
    def chat_completions() -> Response:
        body = body_json()
        req = oa.parse_chat(body, gen_models(), limits)
        backend = generation_backend(req.model)
        ticket = rt.admit()
        try:
            if req.stream:
                return _stream_response(
                    ticket, req.model, "chat.completion.chunk", "chatcmpl", (req.messages,),
                    lambda msgs: backend.stream_chat(msgs, req.params), req.include_usage,
                    chat=True,
                )
            ticket.start()
            out = backend.chat(req.messages, req.params)
            m.tokens.labels(req.model).inc(out.completion_tokens)
            return jsonify({
                "id": oa.new_id("chatcmpl"), "object": "chat.completion", "created": oa.now(),
                "model": req.model,
                "choices": [{"index": 0, "finish_reason": out.finish_reason, "logprobs": None,
                             "message": {"role": "assistant", "content": out.text}}],
                "usage": _usage(out.prompt_tokens, out.completion_tokens),
            })
        finally:
            if not req.stream:
                ticket.release()

    def _stream_response(
        ticket: _Ticket, model: str, obj: str, prefix: str, inputs: tuple[Any, ...],
        run: Callable[[Any], Iterator[Delta]], include_usage: bool, chat: bool = False,
    ) -> Response:
        rid, created = oa.new_id(prefix), oa.now()
        start = time.perf_counter()

        def chunk(index: int, text: str | None, finish: str | None,
                  role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None,
                                          "finish_reason": finish}
            else:
                choice = {"index": index, "text": text or "", "logprobs": None,
                          "finish_reason": finish}
            return {"id": rid, "object": obj, "created": created, "model": model,
                    "choices": [choice]}

        # Start the first generation here, so that an error before the first token
        # (context overflow, busy engine) is still an HTTP status, not a broken stream.
        ticket.start()
        first_iter = run(inputs[0])
        try:
            first = next(first_iter, None)
        except BaseException:
            ticket.release()
            raise
        m.ttft.observe(time.perf_counter() - start)

        def events() -> Iterator[bytes]:
            prompt_tokens = completion_tokens = 0
            try:
                for index, item in enumerate(inputs):
                    it = first_iter if index == 0 else run(item)
                    pending = first if index == 0 else next(it, None)
                    if chat:
                        yield _sse(chunk(index, "", None, role=True))
                    while pending is not None:
                        if pending.usage:
                            prompt_tokens += pending.usage[0]
                            completion_tokens += pending.usage[1]
                        if pending.text or not chat:
                            yield _sse(chunk(index, pending.text, None))
                        if pending.finish_reason:
                            yield _sse(chunk(index, None if chat else "",
                                             pending.finish_reason))
                        pending = next(it, None)
                if include_usage:
                    yield _sse({"id": rid, "object": obj, "created": created, "model": model,
                                "choices": [], "usage": _usage(prompt_tokens, completion_tokens)})
                yield _DONE
            except (BackendError, ValueError) as exc:
                log.exception("generation failed mid-stream")
                yield _sse(oa.error_body(f"generation failed: {exc}", "server_error"))
            finally:
                m.tokens.labels(model).inc(completion_tokens)
                ticket.release()

        resp = Response(events(), mimetype="text/event-stream")
        resp.headers["Cache-Control"] = "no-cache"
        resp.headers["X-Accel-Buffering"] = "no"
        resp.call_on_close(ticket.release)
        return resp

    @app.post("/v1/embeddings")
    def embeddings() -> Response:
        body = body_json()
        served = [rt.embedding.model_id] if rt.embedding else []
        req = oa.parse_embedding(body, served, limits)
        assert rt.embedding is not None
        ticket = rt.admit()
        try:
            ticket.start()
            vectors, tokens = rt.embedding.embed(req.inputs)
        finally:
            ticket.release()
        data: list[dict[str, Any]] = []
        for i, vec in enumerate(vectors):
            value: Any = vec
            if req.encoding_format == "base64":
                import base64

                import numpy as np

                value = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        return jsonify({"object": "list", "data": data, "model": req.model,
                        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    return app


class _UnsupportedType(Exception):
    pass


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def runtime_of(app: Flask) -> Runtime:
    rt: Runtime = app.extensions["surefoot"]
    return rt
