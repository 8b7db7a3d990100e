"""Traffic steering of a KServe InferenceService through ``canaryTrafficPercent``.

KServe owns the Knative Service behind an InferenceService and reconciles its traffic block
back, so reroute_traffic must not patch it; KServe's own knob is the predictor's
``canaryTrafficPercent``: the share of traffic for the latest ready revision, the rest going to
the previously rolled-out one. 0 sends everything to the previous revision; raising it step by
step promotes the latest again. The reroute and the stepped restore of reroute_traffic through
that knob live here too (``reroute_canary``, ``restore_canary``).
"""

from __future__ import annotations

from typing import Any, Protocol

from events import Event, TrafficRerouted, TrafficRestored
from functions._context import ACTED, DEFERRED, NOOP, Context, Outcome
from functions._errors import PermanentFunctionError
from functions._state import defer, locked
from knative import (
    Conflict,
    NotFound,
    PermanentPlatformError,
    PlatformError,
    TemporaryPlatformError,
    TooManyRequests,
    Unauthorized,
)

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


class Steps(Protocol):
    """The restore's shared pieces, from reroute_traffic."""

    def epoch(self, ctx: Context) -> int: ...

    def wait_healthy(self, ctx: Context, epoch: int) -> tuple[bool, str]: ...

    def restore_member(self, ctx: Context) -> str: ...


def _mapped(exc: Exception, what: str) -> PlatformError:
    status = getattr(exc, "status", None)
    if not isinstance(status, int) or not status:
        return TemporaryPlatformError(f"{what}: cannot reach the Kubernetes API: {exc}")
    message = f"{what}: HTTP {status}: {getattr(exc, 'reason', '') or exc}"
    if status in (401, 403):
        return Unauthorized(message)
    if status == 404:
        return NotFound(message)
    if status == 409:
        return Conflict(message)
    if status == 429:
        return TooManyRequests(message)
    if status >= 500 or status == 408:
        return TemporaryPlatformError(message)
    return PermanentPlatformError(message)


class KServeCanary:
    """:class:`functions.CanaryControl` on the kubernetes client (``api_client``)."""

    def __init__(self, api_client: Any, namespace: str, request_timeout: float = 10.0) -> None:
        from kubernetes import client

        self._custom = client.CustomObjectsApi(api_client)
        self.namespace = namespace
        self._timeout = request_timeout

    def canary_percent(self, isvc: str) -> int | None:
        what = f"read InferenceService {self.namespace}/{isvc}"
        try:
            obj = self._custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, isvc, _request_timeout=self._timeout)
        except Exception as exc:  # ApiException, urllib3 and socket errors
            raise _mapped(exc, what) from exc
        doc: dict[str, Any] = obj if isinstance(obj, dict) else {}
        value = ((doc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
        return int(value) if value is not None else None

    def set_canary_percent(self, isvc: str, percent: int) -> None:
        if not 0 <= percent <= 100:
            raise PermanentPlatformError(f"canaryTrafficPercent {percent} is not within 0..100")
        what = f"set canaryTrafficPercent of InferenceService {self.namespace}/{isvc}"
        body = {"spec": {"predictor": {"canaryTrafficPercent": percent}}}
        try:
            self._custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, isvc, body,
                _content_type="application/merge-patch+json", _request_timeout=self._timeout)
        except Exception as exc:
            raise _mapped(exc, what) from exc


# --- reroute_traffic through the canary ----------------------------------------------------


def saved_canary_key(ctx: Context) -> str:
    return ctx.key("kserve", ctx.settings.kserve_isvc, "saved")


def canary_of(ctx: Context) -> Any:
    if ctx.canary is None:
        raise PermanentFunctionError(
            f"kserve_isvc is {ctx.settings.kserve_isvc!r} but the context has no canary control"
        )
    return ctx.canary


def reroute_canary(ctx: Context, name: str, reason: str, cause_event_id: str | None) -> Outcome:
    """Reroute an InferenceService: ``canaryTrafficPercent`` 0 (the saved value in Redis)."""
    s = ctx.settings
    canary = canary_of(ctx)
    with locked(ctx, f"traffic:{s.service}"):
        before = canary.canary_percent(s.kserve_isvc)
        current = 100 if before is None else int(before)
        if current == 0:
            return Outcome(name, NOOP, f"InferenceService {s.kserve_isvc} canary already at 0%")
        ctx.redis.set(saved_canary_key(ctx), str(current), nx=True)
        canary.set_canary_percent(s.kserve_isvc, 0)
    reply = ctx.event(name, TrafficRerouted(
        service=s.service, namespace=s.namespace, from_revision=s.primary_revision,
        to_revision=s.fallback_revision, percent=current,
        reason=f"{reason}; InferenceService {s.kserve_isvc} canaryTrafficPercent "
               f"{current} -> 0", cause_event_id=cause_event_id))
    return Outcome(name, ACTED, f"canaryTrafficPercent of {s.kserve_isvc} {current} -> 0",
                   reply=reply)


def restore_canary(ctx: Context, name: str, reason: str, epoch: int, steps: Steps) -> Outcome:
    """Raise ``canaryTrafficPercent`` back in ``restore_steps``, health-checked before each."""
    s = ctx.settings
    canary = canary_of(ctx)
    raw = ctx.redis.get(saved_canary_key(ctx))
    before = canary.canary_percent(s.kserve_isvc)
    if raw is None and before != 0:
        return Outcome(name, NOOP, f"InferenceService {s.kserve_isvc} was not rerouted; "
                                   "nothing to restore")
    normal = int(raw) if raw is not None else 100
    last: Event | None = None
    for i, step in enumerate(s.restore_steps, start=1):
        if i > 1:
            ctx.sleep(s.restore_step_wait_s)
        if steps.epoch(ctx) != epoch:
            return Outcome(name, NOOP, "restore superseded by a newer breaker event", reply=last)
        healthy, detail = steps.wait_healthy(ctx, epoch)
        if not healthy:
            with locked(ctx, f"traffic:{s.service}"):
                canary.set_canary_percent(s.kserve_isvc, 0)
            defer(ctx, steps.restore_member(ctx), ctx.clock() + s.restore_step_wait_s)
            return Outcome(name, DEFERRED, f"restore paused before step {i} ({detail})",
                           reply=last)
        want = normal if step >= 100 else round(normal * step / 100)
        with locked(ctx, f"traffic:{s.service}"):
            now = canary.canary_percent(s.kserve_isvc)
            have = 100 if now is None else int(now)
            want = max(want, have)  # never lower the primary's share during a restore
            if have != want:
                canary.set_canary_percent(s.kserve_isvc, want)
        event = ctx.event(name, TrafficRestored(
            service=s.service, namespace=s.namespace, revision=s.primary_revision, percent=want,
            step=i, reason=f"{reason}; InferenceService {s.kserve_isvc} canaryTrafficPercent "
                           f"{want}"))
        if last is not None:
            ctx.emit(last)
        last = event
    ctx.redis.delete(saved_canary_key(ctx))
    return Outcome(name, ACTED, f"canaryTrafficPercent of {s.kserve_isvc} back to {normal}",
                   reply=last)
