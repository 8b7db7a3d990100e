"""The gateway's Prometheus metrics, one registry per gateway (several gateways in one process,
as in tests, do not share counters), in the exposition format of ``prometheus_client``.

- ``surefoot_gateway_events_total{event}``: what happened on the request path (retries,
  fallbacks, broken or stalled streams, upstream failures by kind, budget exhausted, ...);
- ``surefoot_gateway_resumes_total{cause}``: generations sent to another replica, by cause:
  ``broken`` (reset, end or error event mid-stream), ``stalled`` (no event for the stall
  timeout) and ``first_event`` (a try with no first event within the first-event timeout; the
  request goes on in the usual failover order); also counted as the events ``resume_<cause>``;
- ``surefoot_gateway_resumed_tokens_total``: token ids replayed to the replica that goes on
  (also the event ``resumed_tokens``);
- ``surefoot_gateway_resume_pause_seconds``: for each resume of a broken or stalled
  generation, the time from the last event before the break to the first event after it;
- ``surefoot_gateway_active_requests``, ``surefoot_gateway_active_retries``,
  ``surefoot_gateway_waiting_requests``: read from the in-flight counts at scrape time;
- ``surefoot_gateway_breaker_state{key,state}`` (1 per breaker in this process's view) and
  ``surefoot_gateway_breakers_degraded``, when the gateway has breakers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from knative.breakers import BreakerRegistry
from knative.gateway._inflight import InFlight

_EVENTS = "surefoot_gateway_events"
CAUSES = ("broken", "stalled", "first_event")


class _LiveCollector:
    """Gauges read when scraped: the in-flight counts and the breakers' view."""

    def __init__(self, inflight: InFlight, breakers: BreakerRegistry | None) -> None:
        self._inflight = inflight
        self._breakers = breakers

    def describe(self) -> Iterator[Metric]:
        yield from self._families(live=False)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(live=True)

    def _families(self, live: bool) -> Iterator[Metric]:
        inflight = self._inflight
        active = GaugeMetricFamily("surefoot_gateway_active_requests",
                                   "Requests in progress in this gateway process")
        retries = GaugeMetricFamily("surefoot_gateway_active_retries",
                                    "Requests in progress that are retrying (the retry budget)")
        waiting = GaugeMetricFamily("surefoot_gateway_waiting_requests",
                                    "Requests waiting for a ready replica (the wait queue)")
        if live:
            active.add_metric([], inflight.active)
            retries.add_metric([], inflight.retrying)
            waiting.add_metric([], inflight.waiting)
        yield active
        yield retries
        yield waiting
        b = self._breakers
        if b is None:
            return
        state = GaugeMetricFamily("surefoot_gateway_breaker_state",
                                  "1 for each breaker's state in this process's view",
                                  labels=["key", "state"])
        degraded = GaugeMetricFamily("surefoot_gateway_breakers_degraded",
                                     "1 while the breaker store cannot be reached")
        if live:
            for key, st in sorted(b.view().items()):
                state.add_metric([key, st.state], 1)
            degraded.add_metric([], int(b.degraded))
        yield state
        yield degraded


class GatewayMetrics:
    """Counters of one gateway, and its gauges read at scrape time."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, inflight: InFlight, breakers: BreakerRegistry | None) -> None:
        self.registry = CollectorRegistry()
        self._events = Counter(_EVENTS, "Gateway events by kind", ["event"],
                               registry=self.registry)
        self._pause = Histogram(
            "surefoot_gateway_resume_pause_seconds",
            "Last event before a stream broke to the first event after its resume",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30), registry=self.registry)
        self._resumes = Counter("surefoot_gateway_resumes", "Generations sent to another "
                                "replica mid-way or before their first event, by cause",
                                ["cause"], registry=self.registry)
        for cause in CAUSES:
            self._resumes.labels(cause=cause)
        self._resumed_tokens = Counter("surefoot_gateway_resumed_tokens",
                                       "Token ids replayed to the replica that goes on",
                                       registry=self.registry)
        self.registry.register(_LiveCollector(inflight, breakers))

    def observe_resume_pause(self, seconds: float) -> None:
        self._pause.observe(seconds)

    def resumed(self, cause: str, tokens: int = 0) -> None:
        """One generation sent to another replica for ``cause``, replaying ``tokens`` ids."""
        self._resumes.labels(cause=cause).inc()
        self.inc(f"resume_{cause}")
        if tokens:
            self._resumed_tokens.inc(tokens)
            self.inc("resumed_tokens", tokens)

    def resumes(self, cause: str) -> int:
        v = self.registry.get_sample_value("surefoot_gateway_resumes_total", {"cause": cause})
        return int(v or 0)

    def inc(self, event: str, n: int = 1) -> None:
        self._events.labels(event=event).inc(n)

    def get(self, event: str) -> int:
        """How many times ``event`` was counted (0 if never)."""
        v = self.registry.get_sample_value(f"{_EVENTS}_total", {"event": event})
        return int(v or 0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
