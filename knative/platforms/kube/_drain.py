"""Draining a node through the Eviction API, as ``kubectl drain`` does, so that
PodDisruptionBudgets hold: a 429 is "not now" and is retried with exponential backoff until
the drain timeout; a 500 for a pod under several budgets cannot succeed and is a permanent
error. Time (``sleep``, ``clock``) is injected so tests never wait."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from knative.platforms import EvictionReport, PermanentPlatformError
from knative.platforms.kube._errors import map_api_error, status_message

log = logging.getLogger(__name__)

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"

Pod = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class DrainTiming:
    sleep: Callable[[float], None]
    clock: Callable[[], float]
    backoff_initial: float
    backoff_max: float
    request_timeout: float


class Drain:
    """One drain of one node: which pods to evict, the eviction calls and their retries."""

    def __init__(self, core: Any, namespace: str, timing: DrainTiming) -> None:
        self._core = core
        self._namespace = namespace
        self._t = timing

    def label(self, ns: str, name: str) -> str:
        return name if ns == self._namespace else f"{ns}/{name}"

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self._t.request_timeout, **kwargs)
        except Exception as exc:
            raise map_api_error(exc, what) from exc

    def _pods(self, node: str) -> tuple[list[str], list[Pod]]:
        """(skipped DaemonSet and mirror pods, pods to evict) on ``node``."""
        self._call(f"evict pods from node {node}", self._core.read_node, node)
        pods = self._call(
            f"list pods on node {node}",
            self._core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={node}",
        ).items
        skipped: list[str] = []
        pending: list[Pod] = []
        for p in pods:
            owners = p.metadata.owner_references or []
            ann = p.metadata.annotations or {}
            daemon = any(o.kind == "DaemonSet" and o.controller for o in owners)
            if daemon or MIRROR_ANNOTATION in ann:
                skipped.append(self.label(p.metadata.namespace, p.metadata.name))
            else:
                pending.append((p.metadata.namespace, p.metadata.name))
        return skipped, pending

    def run(self, node: str, timeout: float) -> EvictionReport:
        """Evict every pod (429: retried with backoff), then wait until each evicted pod is
        gone, as ``kubectl drain`` does; all within ``timeout``."""
        t = self._t
        start = t.clock()
        deadline = start + timeout
        skipped, pending = self._pods(node)
        gone = _Outcome()
        accepted = self._evict_all(node, pending, deadline, gone)
        evicted = self._wait_gone(accepted, deadline, gone)
        report = EvictionReport(
            node=node,
            evicted=tuple(evicted),
            skipped=tuple(skipped),
            refused=tuple(gone.refused),
            seconds=t.clock() - start,
            messages=tuple(gone.messages),
        )
        log.info(
            "drained node %s: %d evicted, %d skipped, %d refused in %.1fs",
            node, len(report.evicted), len(report.skipped), len(report.refused), report.seconds,
        )
        return report

    def _evict_all(
        self, node: str, pending: list[Pod], deadline: float, out: _Outcome
    ) -> list[tuple[Pod, str]]:
        """Eviction requests until every pod is accepted or refused, or the deadline passes:
        the accepted pods with their uid."""
        t = self._t
        accepted: list[tuple[Pod, str]] = []
        delay = t.backoff_initial
        while pending:
            blocked: list[Pod] = []
            wait = delay
            for ns, name in pending:
                outcome, retry_after, message = self._evict_pod(node, ns, name)
                if outcome == "accepted":
                    accepted.append(((ns, name), message))
                elif outcome == "gone":
                    out.gone.append(self.label(ns, name))
                elif outcome == "refused":
                    out.refuse(self.label(ns, name), message)
                else:
                    blocked.append((ns, name))
                    wait = max(wait, retry_after or 0.0)
            pending = blocked
            now = t.clock()
            if not pending or now >= deadline:
                break
            t.sleep(min(wait, t.backoff_max, deadline - now))
            delay = min(delay * 2, t.backoff_max)
        for ns, name in pending:
            out.refuse(self.label(ns, name), "a disruption budget allowed no eviction in time")
        return accepted

    def _still_there(self, pod: Pod, uid: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        ns, name = pod
        try:
            obj = self._core.read_namespaced_pod(name, ns, _request_timeout=self._t.request_timeout)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise map_api_error(exc, f"read pod {ns}/{name}") from exc
        except Exception as exc:
            raise map_api_error(exc, f"read pod {ns}/{name}") from exc
        return bool(not uid or obj.metadata.uid == uid)

    def _wait_gone(
        self, accepted: list[tuple[Pod, str]], deadline: float, out: _Outcome
    ) -> list[str]:
        """The accepted pods once they are gone (deleted, or replaced under the same name);
        those still terminating at the deadline are refused."""
        t = self._t
        waiting = list(accepted)
        delay = t.backoff_initial
        while waiting:
            waiting = [(p, uid) for p, uid in waiting if self._still_there(p, uid)]
            now = t.clock()
            if not waiting or now >= deadline:
                break
            t.sleep(min(delay, t.backoff_max, deadline - now))
            delay = min(delay * 2, t.backoff_max)
        for p, _ in waiting:
            out.refuse(self.label(*p), "evicted but still terminating when the drain timed out")
        left = {p for p, _ in waiting}
        return [self.label(*p) for p, _ in accepted if p not in left] + out.gone

    def _evict_pod(self, node: str, ns: str, name: str) -> tuple[str, float | None, str]:
        """("accepted", None, uid) | ("blocked", retry-after, "") | ("refused", None, why)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        what = f"evict pod {ns}/{name} from node {node}"
        try:
            pod = self._core.read_namespaced_pod(name, ns, _request_timeout=self._t.request_timeout)
            uid = str(pod.metadata.uid or "")
            body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=ns))
            self._core.create_namespaced_pod_eviction(
                name, ns, body, _request_timeout=self._t.request_timeout
            )
        except ApiException as exc:
            return self._refused(what, exc)
        except Exception as exc:
            raise map_api_error(exc, what) from exc
        return "accepted", None, uid

    @staticmethod
    def _refused(what: str, exc: Any) -> tuple[str, float | None, str]:
        if exc.status == 404:
            return "gone", None, ""  # already gone
        if exc.status == 429:
            headers = exc.headers or {}
            try:
                retry_after: float | None = float(headers.get("Retry-After", ""))
            except (TypeError, ValueError):
                retry_after = None
            log.info("%s: not now (%s)", what, status_message(exc))
            return "blocked", retry_after, ""
        if exc.status == 403:
            # The eviction API's own refusal (e.g. a budget's disruptions are negative, too
            # many pods pending): not worth retrying, and not a permission problem to report.
            message = f"{what}: HTTP 403: {status_message(exc)}"
            log.warning("%s", message)
            return "refused", None, message
        if exc.status == 500 and "more than one PodDisruptionBudget" in status_message(exc):
            raise PermanentPlatformError(
                f"{what}: more than one PodDisruptionBudget selects this pod, and the "
                "Eviction API refuses such pods; make the budgets' selectors disjoint"
            ) from exc
        raise map_api_error(exc, what) from exc


class _Outcome:
    """The pods a drain could not evict, and why."""

    def __init__(self) -> None:
        self.refused: list[str] = []
        self.messages: list[str] = []
        self.gone: list[str] = []  # gone before their eviction was asked for

    def refuse(self, label: str, message: str) -> None:
        self.refused.append(label)
        self.messages.append(f"{label}: {message}")
