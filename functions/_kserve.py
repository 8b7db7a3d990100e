"""Traffic steering of a KServe InferenceService through ``canaryTrafficPercent``.

KServe owns the Knative Service behind an InferenceService and reconciles its traffic block
back, so reroute_traffic must not patch it; KServe's own knob is the predictor's
``canaryTrafficPercent``: the share of traffic for the latest ready revision, the rest going to
the previously rolled-out one. 0 sends everything to the previous revision; raising it step by
step promotes the latest again.
"""

from __future__ import annotations

from typing import Any

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
