"""The replica's state behind its HTTP API: models, admission, lifecycle phases and drain.

The routes, the probes, the checkpoints and the server's SIGTERM handler all act on one
:class:`Runtime` through its public methods, so the rules of readiness, admission and drain
live in one place: readiness is false until a model is loaded, while draining, while the
node is quarantined and while the replica is a standby; a replica that is not ready, or is
full, refuses work with a retryable 503 (:class:`Unavailable`).

Readiness is per model: completions are served as soon as the LLM is loaded, embeddings once
their model is (a request to a model still loading gets a 503 with ``Retry-After``, which a
router takes as "try another replica").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from knative.serving import _openai as oa
from knative.serving._admission import Admission, Ticket
from knative.serving._backends import (
    EmbeddingBackend,
    GenerationBackend,
    LlamaCppBackend,
    ModelLoadError,
)
from knative.serving._embedding import SentenceTransformerBackend
from knative.serving._settings import ServeSettings

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The replica cannot take this request now (HTTP 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: int = 1, code: str = "unavailable") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.code = code


class Metrics:
    """The replica's Prometheus metrics, in a registry of its own (one per app)."""

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

    def watch_engine(self, stats: Callable[[], dict[str, Any]]) -> None:
        """Publish the batching engine's counters (``stats`` is read at every scrape)."""
        self.registry.register(_EngineCollector(stats))

    def publish_admission(self, inflight: int, running: int) -> None:
        self.inflight.set(inflight)
        self.queue_depth.set(max(0, inflight - running))


class _EngineCollector:
    """Slots in use, requests waiting for one, steps by sequences advanced, prompt tokens
    computed and reused: what a batching engine reports (nothing without one)."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self._stats = stats

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        s = self._stats()
        if not s:
            return
        yield GaugeMetricFamily("surefoot_engine_active_slots", "Slots holding a live sequence",
                                value=s["active"])
        yield GaugeMetricFamily("surefoot_engine_waiting_requests",
                                "Requests waiting for a free slot", value=s["waiting"])
        yield CounterMetricFamily("surefoot_engine_decodes", "llama_decode calls",
                                  value=s["decodes"])
        yield CounterMetricFamily("surefoot_engine_prompt_tokens_computed",
                                  "Prompt tokens the engine decoded",
                                  value=s["prompt_tokens_computed"])
        yield CounterMetricFamily("surefoot_engine_prompt_tokens_reused",
                                  "Prompt tokens taken from a cached prefix",
                                  value=s["prompt_tokens_reused"])
        yield GaugeMetricFamily("surefoot_engine_host_cache_bytes",
                                "Bytes of prompt cells kept in host memory",
                                value=s["host_cache_bytes"])
        yield CounterMetricFamily("surefoot_engine_host_cache_hits",
                                  "Prompts started from the host cache",
                                  value=s["host_cache_hits"])
        yield CounterMetricFamily("surefoot_engine_padding_rows",
                                  "Rows that pad a prompt chunk to the length of the others "
                                  "read in its call", value=s["padding_rows"])
        counts = s["step_seqs"]
        buckets, total = [], 0
        for seqs, n in enumerate(counts):
            total += n
            buckets.append((str(float(seqs)), total))
        buckets[-1] = ("+Inf", total)
        yield HistogramMetricFamily(
            "surefoot_engine_step_sequences", "Sequences advanced by each engine step",
            buckets=buckets, sum_value=float(sum(i * n for i, n in enumerate(counts))))


@dataclass
class Runtime:
    """The replica's mutable state: models, admission, lifecycle phases, drain hooks."""

    settings: ServeSettings
    generation: GenerationBackend | None
    embedding: EmbeddingBackend | None
    metrics: Metrics = field(default_factory=Metrics)
    loaded: threading.Event = field(default_factory=threading.Event)
    load_error: str | None = None
    draining: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    drain_hooks: list[Callable[[], None]] = field(default_factory=list)
    quarantine_check: Callable[[], str | None] | None = None
    # a standby is loaded but serves nothing until it adopts the identity of a lost replica
    standby: bool = False
    admission: Admission = field(init=False)
    _ready_models: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.admission = Admission(self.settings.queue_capacity, self.metrics.publish_admission)
        self.standby = self.standby or self.settings.standby
        stats = getattr(self.generation, "engine_stats", None)
        if callable(stats):
            self.metrics.watch_engine(stats)

    # --- models ----------------------------------------------------------------------------
    def mark_loaded(self) -> None:
        """Every model is in: readiness may turn true."""
        for model in self.served_models():
            self.mark_model_ready(model)
        self.phases["model_loaded"] = time.time()
        self.loaded.set()
        self._publish_ready()

    def mark_model_ready(self, model: str) -> None:
        """``model`` is loaded: its requests are served from now on (readiness may turn true
        before the other models are in)."""
        self._ready_models.add(model)
        self.phases[f"ready:{model}"] = time.time()
        self._publish_ready()

    def model_ready(self, model: str) -> bool:
        return model in self._ready_models

    def models_readiness(self) -> dict[str, bool]:
        """Each served model and whether it is loaded."""
        return {m: m in self._ready_models for m in self.served_models()}

    def adopted(self) -> None:
        """A standby has taken over a replica's identity: it serves from now on."""
        self.standby = False
        self.phases["adopted"] = time.time()
        self._publish_ready()

    def _publish_ready(self) -> None:
        self.metrics.ready.set(1 if self.not_ready_reason() is None else 0)

    def served_models(self) -> list[str]:
        return self.generation_models() + self.embedding_models()

    def generation_models(self) -> list[str]:
        return [self.generation.model_id] if self.generation is not None else []

    def embedding_models(self) -> list[str]:
        return [self.embedding.model_id] if self.embedding is not None else []

    def generation_for(self, model: str) -> GenerationBackend:
        """The generation backend serving ``model``; :class:`oa.ModelNotFound` otherwise."""
        if self.generation is None or model != self.generation.model_id:
            raise oa.ModelNotFound(model, self.generation_models())
        self._check_model_ready(model)
        return self.generation

    def embedding_for(self, model: str) -> EmbeddingBackend:
        """The embedding backend serving ``model``; :class:`oa.ModelNotFound` otherwise."""
        if self.embedding is None or model != self.embedding.model_id:
            raise oa.ModelNotFound(model, self.embedding_models())
        self._check_model_ready(model)
        return self.embedding

    def _check_model_ready(self, model: str) -> None:
        if model not in self._ready_models and self.load_error is None:
            self.metrics.rejected.labels("model_loading").inc()
            raise Unavailable(f"model {model!r} is still loading on this replica",
                              retry_after=1, code="model_loading")

    def models_created(self) -> int:
        """The ``created`` time of the served models (when they loaded)."""
        return int(self.phases.get("model_loaded", time.time()))

    # --- readiness -------------------------------------------------------------------------
    def not_ready_reason(self, model: str | None = None) -> str | None:
        """Why the replica (or, with ``model``, that model) cannot serve now; None: it can."""
        if self.load_error:
            return f"model load failed: {self.load_error}"
        if model is not None and model not in self.served_models():
            return f"model {model!r} is not served here"
        loading = model not in self._ready_models if model else not self._ready_models
        if loading:
            return "loading model"
        if self.draining:
            return "draining"
        if self.standby:
            return "standby"
        if self.quarantine_check is not None:
            reason = self.quarantine_check()
            if reason:
                return f"quarantined: {reason}"
        return None

    # --- admission -------------------------------------------------------------------------
    def admit(self) -> Ticket:
        """A ticket for one request; :class:`Unavailable` when not ready or full."""
        reason = self.not_ready_reason()
        if reason:
            code = "draining" if self.draining else "not_ready"
            self.metrics.rejected.labels(code).inc()
            raise Unavailable(f"replica not ready: {reason}", retry_after=1, code=code)
        ticket = self.admission.try_admit()
        if ticket is None:
            self.metrics.rejected.labels("queue_full").inc()
            raise Unavailable(
                f"admission queue full ({self.admission.capacity} requests)",
                retry_after=1, code="queue_full",
            )
        return ticket

    @property
    def inflight(self) -> int:
        return self.admission.inflight

    # --- drain -----------------------------------------------------------------------------
    def begin_drain(self) -> None:
        if not self.draining:
            log.info("draining: readiness false, refusing new requests, %d in flight",
                     self.admission.inflight)
        self.draining = True
        self._publish_ready()

    def wait_idle(self, timeout: float) -> bool:
        return self.admission.wait_idle(timeout)

    def drain(self, grace: float) -> bool:
        """Refuse new work, wait up to ``grace`` for in-flight requests, then run the drain
        hooks (a checkpoint snapshot; each bounds its own time). True if all requests finished.
        """
        self.begin_drain()
        idle = self.wait_idle(grace)
        if not idle:
            log.warning("grace period of %.1f s ran out with %d requests in flight",
                        grace, self.admission.inflight)
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
            "inflight": self.admission.inflight, "models": self.served_models(),
            "models_ready": self.models_readiness(), "standby": self.standby,
            "phases": self.phases,
        }


def build_backends(
    settings: ServeSettings,
) -> tuple[GenerationBackend | None, EmbeddingBackend | None]:
    """The backends ``settings`` configure, not loaded yet."""
    gen = LlamaCppBackend(
        settings.model, model_id=settings.model_id or None, n_ctx=settings.n_ctx,
        n_threads=settings.n_threads or None, n_gpu_layers=settings.n_gpu_layers,
        queue_timeout=settings.queue_timeout, chat_format=settings.chat_format,
        slots=settings.slots, batch_invariant=settings.batch_invariant,
        flash_attn=settings.flash_attn, gather_ms=settings.gather_ms,
        prompt_cache_mb=settings.prompt_cache_mb,
    ) if settings.model else None
    emb = SentenceTransformerBackend(
        settings.embedding_model, cuda=settings.cuda, queue_timeout=settings.queue_timeout,
        n_threads=settings.n_threads or None,
        runner=gen.shared_thread() if gen is not None else None,
    ) if settings.embedding_model else None
    return gen, emb


def load_models(runtime: Runtime, before: Callable[[], object] | None = None,
                after: Callable[[], object] | None = None) -> None:
    """Load every model of the runtime, recording phases and load seconds; ``before`` runs
    first (restore a checkpoint), ``after`` once the LLM is in (put its engine state back).
    The LLM serves as soon as it and its state are in; the embedding model when it is in."""
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
            if backend is runtime.generation and after is not None:
                after()
            runtime.mark_model_ready(backend.model_id)
        runtime.phases["model_loaded"] = time.time()
        runtime.loaded.set()
    except ModelLoadError as exc:
        runtime.load_error = str(exc)
        log.error("model load failed: %s", exc)
        raise
