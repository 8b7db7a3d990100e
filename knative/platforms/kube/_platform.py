"""The platform seam on a real cluster: Knative Serving and Kubernetes through the official
``kubernetes`` client.

Functions and the drill call :class:`KnativePlatform` through the :class:`~knative.Platform`
protocol and never see the client: every API error comes out as one of the platform's error
types (temporary ones worth a retry, permanent ones not), with a message that says what was
being done and what the API server answered.

Choices that follow from how Knative and Kubernetes behave:

- The "service" the seam names is the object that holds the traffic block: a Knative Service,
  or (the rendered shape, see docs/knative.md) a standalone Route over two Configurations,
  used when no Knative Service has that name. Which one it is, is learned once per name.
- Traffic is one merge patch of the whole ``spec.traffic`` list (a JSON merge patch replaces
  lists whole, so there is no half-applied split); the split is checked to sum to 100 first,
  because Knative's webhook rejects anything else.
- Scale bounds of an existing revision: a revision's template is immutable (a changed template
  is a new revision, and with our own revision names a new name), so ``set_scale`` writes the
  ``autoscaling.knative.dev/{min,max}-scale`` annotations on the Revision. Since Serving v1.21
  the revision reconciler copies them onto the PodAutoscaler on every reconcile, so the
  Revision is the place to write (a direct PodAutoscaler patch is reverted).
- A Knative Service owned by a KServe InferenceService is left alone: KServe reconciles its
  traffic back, so ``set_traffic`` refuses it (KServe is steered by ``canaryTrafficPercent``).
- Eviction goes through ``policy/v1`` Eviction so PodDisruptionBudgets hold (see ``_drain``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from knative.platforms import (
    Conflict,
    EvictionReport,
    Node,
    NotFound,
    PermanentPlatformError,
    Replica,
    Target,
    validate_traffic,
)
from knative.platforms.kube._drain import Drain, DrainTiming
from knative.platforms.kube._errors import map_api_error
from knative.platforms.kube._settings import KubeSettings, api_client_for

log = logging.getLogger(__name__)

SERVING = ("serving.knative.dev", "v1")
LATEST = "@latest"  # a traffic target that follows the latest ready revision (kn's spelling)
MIN_SCALE = "autoscaling.knative.dev/min-scale"
MAX_SCALE = "autoscaling.knative.dev/max-scale"
REVISION_LABEL = "serving.knative.dev/revision"
SERVICE_LABEL = "serving.knative.dev/service"


def _ready(pod_or_node: Any) -> bool:
    for cond in (pod_or_node.status.conditions if pod_or_node.status else None) or []:
        if cond.type == "Ready":
            return bool(cond.status == "True")
    return False


class KnativePlatform:
    """:class:`~knative.Platform` on a Knative cluster, through the kubernetes client.

    ``sleep`` and ``clock`` are injectable so drains and retries are testable without waiting.
    """

    def __init__(
        self,
        api_client: Any,
        namespace: str = "default",
        *,
        replica_port: int = 8012,
        request_timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        conflict_retries: int = 5,
    ) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.replica_port = replica_port
        self._timeout = request_timeout
        self._sleep = sleep
        self._clock = clock
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._conflict_retries = conflict_retries
        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._plural: dict[str, str] = {}  # name -> "services" or "routes"

    @classmethod
    def from_settings(cls, settings: KubeSettings, **kwargs: Any) -> KnativePlatform:
        api, namespace = api_client_for(settings)
        return cls(
            api,
            namespace,
            replica_port=settings.replica_port,
            request_timeout=settings.request_timeout,
            **kwargs,
        )

    # ------------------------------------------------------------------ plumbing
    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self._timeout, **kwargs)
        except Exception as exc:  # the client raises ApiException, urllib3 and socket errors
            raise map_api_error(exc, what) from exc

    def _get(self, plural: str, name: str) -> dict[str, Any]:
        kind = "Knative Service" if plural == "services" else "Knative Route"
        obj: dict[str, Any] = self._call(
            f"read {kind} {self.namespace}/{name}",
            self._custom.get_namespaced_custom_object,
            *SERVING,
            self.namespace,
            plural,
            name,
        )
        return obj

    def _ksvc(self, service: str) -> dict[str, Any]:
        """The object holding ``service``'s traffic: its Knative Service, else a standalone
        Route of that name."""
        plural = self._plural.get(service)
        if plural is not None:
            return self._get(plural, service)
        try:
            obj = self._get("services", service)
            plural = "services"
        except NotFound as no_service:
            try:
                obj = self._get("routes", service)
            except NotFound:
                raise no_service from None
            plural = "routes"
        self._plural[service] = plural
        return obj

    def service(self, service: str) -> dict[str, Any]:
        """The Knative Service object as the API returns it (spec and status)."""
        return self._ksvc(service)

    # ------------------------------------------------------------------ traffic
    @staticmethod
    def _targets(entries: list[dict[str, Any]]) -> list[Target]:
        out = []
        for e in entries:
            if e.get("revisionName"):
                rev = str(e["revisionName"])
            elif e.get("latestRevision", True):
                rev = LATEST
            else:
                rev = str(e.get("configurationName") or LATEST)
            out.append(Target(revision=rev, percent=int(e.get("percent") or 0), tag=e.get("tag")))
        return out

    def traffic(self, service: str) -> list[Target]:
        """The split the service asks for (``spec.traffic``); when it names none, Knative sends
        everything to the latest ready revision."""
        svc = self._ksvc(service)
        entries = (svc.get("spec") or {}).get("traffic") or []
        if entries:
            return self._targets(entries)
        status = svc.get("status") or {}
        if status.get("traffic"):
            return self._targets(status["traffic"])
        return [Target(revision=status.get("latestReadyRevisionName") or LATEST, percent=100)]

    def traffic_status(self, service: str) -> list[Target]:
        """The split Knative has put in effect (``status.traffic``): it lags ``traffic()`` while
        a named revision does not exist yet or is not ready."""
        svc = self._ksvc(service)
        return self._targets((svc.get("status") or {}).get("traffic") or [])

    def set_traffic(self, service: str, targets: list[Target]) -> None:
        validate_traffic(targets)
        errors = []
        tags = [t.tag for t in targets if t.tag]
        if len(set(tags)) != len(tags):
            errors.append(f"traffic: tags must be unique, got {tags}")
        for t in targets:
            if not t.revision:
                errors.append("traffic: every target needs a revision")
        if errors:
            raise PermanentPlatformError("; ".join(errors))
        owners = (self._ksvc(service).get("metadata") or {}).get("ownerReferences") or []
        kserve = next(
            (o for o in owners if str(o.get("apiVersion", "")).startswith("serving.kserve.io/")),
            None,
        )
        if kserve is not None:
            raise PermanentPlatformError(
                f"set traffic of Knative Service {self.namespace}/{service}: it is managed by "
                f"KServe {kserve.get('kind')} {kserve.get('name')!r}, which reverts direct "
                "traffic patches; "
                "steer it through the InferenceService's canaryTrafficPercent instead"
            )
        entries = []
        for t in targets:
            entry: dict[str, Any] = (
                {"latestRevision": True} if t.revision == LATEST else {"revisionName": t.revision}
            )
            entry["percent"] = t.percent
            if t.tag:
                entry["tag"] = t.tag
            entries.append(entry)
        self._call(
            f"set traffic of Knative Service {self.namespace}/{service}",
            self._custom.patch_namespaced_custom_object,
            *SERVING,
            self.namespace,
            self._plural.get(service, "services"),
            service,
            {"spec": {"traffic": entries}},
            _content_type="application/merge-patch+json",
        )
        log.info(
            "traffic of %s/%s set to %s",
            self.namespace,
            service,
            ", ".join(f"{t.tag or t.revision}={t.percent}" for t in targets),
        )

    # ------------------------------------------------------------------ scale
    def set_scale(self, service: str, revision: str, min_scale: int, max_scale: int) -> None:
        """Scale bounds of one revision of ``service`` (``max_scale`` 0 = unbounded)."""
        errors = []
        if min_scale < 0:
            errors.append(f"min_scale: must not be negative, got {min_scale}")
        if max_scale < 0:
            errors.append(f"max_scale: must not be negative, got {max_scale}")
        if max_scale and max_scale < min_scale:
            errors.append(f"max_scale: {max_scale} is below min_scale {min_scale}")
        if errors:
            raise PermanentPlatformError("; ".join(errors))
        what = f"set scale of revision {self.namespace}/{revision}"
        rev = self._call(
            what,
            self._custom.get_namespaced_custom_object,
            *SERVING,
            self.namespace,
            "revisions",
            revision,
        )
        labels = (rev.get("metadata") or {}).get("labels") or {}
        if labels.get(SERVICE_LABEL) != service and revision not in {
            t.revision for t in self.traffic(service)
        }:
            raise NotFound(
                f"{what}: revision {revision!r} is neither owned by nor routed from "
                f"service {service!r}"
            )
        patch = {
            "metadata": {"annotations": {MIN_SCALE: str(min_scale), MAX_SCALE: str(max_scale)}}
        }
        self._call(
            what,
            self._custom.patch_namespaced_custom_object,
            *SERVING,
            self.namespace,
            "revisions",
            revision,
            patch,
            _content_type="application/merge-patch+json",
        )
        log.info("scale of %s/%s set to %d..%d", self.namespace, revision, min_scale, max_scale)

    # ------------------------------------------------------------------ replicas
    def _replica(self, pod: Any) -> Replica:
        labels = pod.metadata.labels or {}
        ip = pod.status.pod_ip if pod.status else None
        phase = (
            "Terminating"
            if pod.metadata.deletion_timestamp
            else ((pod.status.phase if pod.status else None) or "Pending")
        )
        return Replica(
            name=pod.metadata.name,
            node=pod.spec.node_name if pod.spec else None,
            revision=labels.get(REVISION_LABEL, ""),
            url=f"http://{ip}:{self.replica_port}" if ip else None,
            ready=_ready(pod) and phase == "Running",
            phase=phase,
        )

    def replicas(self, service: str) -> list[Replica]:
        """Pods of the service's revisions: its own (service label) and every revision its
        traffic names (a fallback revision may come from another Configuration)."""
        svc = self._ksvc(service)
        status = svc.get("status") or {}
        revisions = {
            e.get("revisionName")
            for e in ((svc.get("spec") or {}).get("traffic") or []) + (status.get("traffic") or [])
        }
        revisions.add(status.get("latestCreatedRevisionName"))
        revisions.discard(None)
        what = f"list pods of Knative Service {self.namespace}/{service}"
        pods = {
            p.metadata.name: p
            for p in self._call(
                what,
                self._core.list_namespaced_pod,
                self.namespace,
                label_selector=f"{SERVICE_LABEL}={service}",
            ).items
        }
        if revisions:
            selector = f"{REVISION_LABEL} in ({','.join(sorted(str(r) for r in revisions))})"
            for p in self._call(
                what, self._core.list_namespaced_pod, self.namespace, label_selector=selector
            ).items:
                pods[p.metadata.name] = p
        return [self._replica(pods[name]) for name in sorted(pods)]

    def delete_replica(self, name: str) -> None:
        self._call(
            f"delete pod {self.namespace}/{name}",
            self._core.delete_namespaced_pod,
            name,
            self.namespace,
        )
        log.info("deleted pod %s/%s", self.namespace, name)

    # ------------------------------------------------------------------ nodes
    def nodes(self) -> list[Node]:
        items = self._call("list nodes", self._core.list_node).items
        return [
            Node(
                name=n.metadata.name,
                ready=_ready(n),
                unschedulable=bool(n.spec.unschedulable) if n.spec else False,
                labels=dict(n.metadata.labels or {}),
            )
            for n in items
        ]

    def _patch_node(self, what: str, name: str, body: dict[str, Any]) -> Any:
        return self._call(
            what, self._core.patch_node, name, body, _content_type="application/merge-patch+json"
        )

    def cordon(self, node: str) -> None:
        self._patch_node(f"cordon node {node}", node, {"spec": {"unschedulable": True}})
        log.info("cordoned node %s", node)

    def uncordon(self, node: str) -> None:
        self._patch_node(f"uncordon node {node}", node, {"spec": {"unschedulable": None}})
        log.info("uncordoned node %s", node)

    def label(self, node: str, key: str, value: str | None) -> None:
        if not key:
            raise PermanentPlatformError("label: key must not be empty")
        what = (
            f"label node {node} {key}={value}"
            if value is not None
            else f"unlabel node {node} {key}"
        )
        self._patch_node(what, node, {"metadata": {"labels": {key: value}}})

    def _update_taints(
        self, node: str, what: str, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]
    ) -> None:
        """Read-modify-write of ``spec.taints`` guarded by resourceVersion; a 409 re-reads."""
        for attempt in range(self._conflict_retries + 1):
            obj = self._call(what, self._core.read_node, node)
            taints = [
                self.api_client.sanitize_for_serialization(t) for t in (obj.spec.taints or [])
            ]
            new = change([dict(t) for t in taints])
            if new == taints:
                return
            body = {
                "metadata": {"resourceVersion": obj.metadata.resource_version},
                "spec": {"taints": new},
            }
            try:
                self._patch_node(what, node, body)
                return
            except Conflict:
                if attempt == self._conflict_retries:
                    raise
                log.info("%s: node changed underneath, re-reading", what)
        raise AssertionError("unreachable")

    def taint(self, node: str, key: str, value: str = "", effect: str = "NoSchedule") -> None:
        """Add or replace the taint ``key`` (keeps every other taint)."""
        if effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise PermanentPlatformError(
                f"taint: effect {effect!r} is not NoSchedule, PreferNoSchedule or NoExecute"
            )
        wanted = (
            {"key": key, "value": value, "effect": effect}
            if value
            else {"key": key, "effect": effect}
        )
        self._update_taints(
            node,
            f"taint node {node} {key}:{effect}",
            lambda ts: (
                [t for t in ts if not (t.get("key") == key and t.get("effect") == effect)]
                + [wanted]
            ),
        )

    def untaint(self, node: str, key: str) -> None:
        self._update_taints(
            node, f"untaint node {node} {key}", lambda ts: [t for t in ts if t.get("key") != key]
        )

    # ------------------------------------------------------------------ eviction
    def evict(self, node: str, timeout: float = 120.0) -> EvictionReport:
        """Drain ``node`` through the Eviction API: every pod on it except DaemonSet-owned and
        mirror (static) pods, across namespaces. A 429 (a disruption budget says not now) is
        retried with exponential backoff until ``timeout``; what is still refused then is in
        the report. The node should be cordoned first, or evicted pods may land on it again."""
        timing = DrainTiming(
            self._sleep, self._clock, self._backoff_initial, self._backoff_max, self._timeout
        )
        return Drain(self._core, self.namespace, timing).run(node, timeout)
