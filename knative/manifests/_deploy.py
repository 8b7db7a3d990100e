"""Putting the rendered manifests on a cluster (server-side apply) and reading back what runs.

Server-side apply (PATCH ``application/apply-patch+yaml`` with a field manager) is idempotent
and merges with what other managers own, such as the fields Knative itself fills in, or the
rest of ``knative-serving/config-features`` that we patch two flags into. Unknown fields are
rejected (``fieldValidation=Strict``) rather than silently pruned.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from knative.platforms import NotFound, PermanentPlatformError, PlatformError
from knative.platforms.kube import KnativePlatform, KubeSettings, map_api_error

log = logging.getLogger(__name__)

# (apiVersion, kind) -> (plural, namespaced) for every kind ``render`` produces.
KINDS: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "Service"): ("services", True),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("apps/v1", "DaemonSet"): ("daemonsets", True),
    ("batch/v1", "CronJob"): ("cronjobs", True),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
    ("rbac.authorization.k8s.io/v1", "Role"): ("roles", True),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("rolebindings", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("serving.knative.dev/v1", "Service"): ("services", True),
    ("serving.knative.dev/v1", "Configuration"): ("configurations", True),
    ("serving.knative.dev/v1", "Route"): ("routes", True),
    ("eventing.knative.dev/v1", "Broker"): ("brokers", True),
    ("eventing.knative.dev/v1", "Trigger"): ("triggers", True),
    ("sources.knative.dev/v1", "ApiServerSource"): ("apiserversources", True),
    ("sources.knative.dev/v1", "PingSource"): ("pingsources", True),
}


@dataclass(frozen=True)
class ApplyResult:
    kind: str
    name: str
    namespace: str | None
    action: str  # created | configured (| "would create/configure" on a dry run)

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind.lower()}/{where}{self.name} {self.action}"


def object_path(obj: dict[str, Any]) -> str:
    """The API path of one object (``/apis/<group>/<version>/namespaces/<ns>/<plural>/<name>``)."""
    key = (str(obj.get("apiVersion")), str(obj.get("kind")))
    if key not in KINDS:
        raise PermanentPlatformError(
            f"apply: kind {key[1]} of {key[0]} is not one Surefoot renders"
        )
    plural, namespaced = KINDS[key]
    meta = obj.get("metadata") or {}
    base = "/api/v1" if key[0] == "v1" else f"/apis/{key[0]}"
    if namespaced:
        if not meta.get("namespace"):
            raise PermanentPlatformError(f"apply: {key[1]} {meta.get('name')} has no namespace")
        base += f"/namespaces/{meta['namespace']}"
    return f"{base}/{plural}/{meta['name']}"


def apply_objects(
    api_client: Any,
    objects: list[dict[str, Any]],
    *,
    field_manager: str = "surefoot",
    dry_run: bool = False,
    force: bool = True,
    request_timeout: float = 30.0,
) -> list[ApplyResult]:
    """Server-side apply ``objects`` in order; stops at the first failure with a platform
    error naming the object."""
    results = []
    for obj in objects:
        path = object_path(obj)
        meta = obj.get("metadata") or {}
        query: list[tuple[str, str]] = [
            ("fieldManager", field_manager),
            ("fieldValidation", "Strict"),
        ]
        if force:
            query.append(("force", "true"))
        if dry_run:
            query.append(("dryRun", "All"))
        where = f"{meta['namespace']}/" if meta.get("namespace") else ""
        what = f"apply {obj['kind']} {where}{meta['name']}"
        try:
            params = api_client.param_serialize(
                method="PATCH",
                resource_path=path,
                query_params=query,
                header_params={
                    "Content-Type": "application/apply-patch+yaml",
                    "Accept": "application/json",
                },
                body=obj,
                auth_settings=["BearerToken"],
            )
            response = api_client.call_api(*params, _request_timeout=request_timeout)
            response.read()
            out = api_client.response_deserialize(response, {"200": "object", "201": "object"})
        except Exception as exc:
            raise map_api_error(exc, what) from exc
        action = "created" if out.status_code == 201 else "configured"
        if dry_run:
            action += " (dry run)"
        results.append(ApplyResult(obj["kind"], meta["name"], meta.get("namespace"), action))
        log.info("%s", results[-1])
    return results


def _live_traffic(api_client: Any, obj: dict[str, Any], request_timeout: float) -> Any:
    from kubernetes import client

    meta = obj["metadata"]
    what = f"read Route {meta['namespace']}/{meta['name']}"
    live: Any
    try:
        live = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            "serving.knative.dev", "v1", meta["namespace"], "routes", meta["name"],
            _request_timeout=request_timeout,
        )
    except Exception as exc:
        err = map_api_error(exc, what)
        if isinstance(err, NotFound):
            return None
        raise err from exc
    return (live.get("spec") or {}).get("traffic")


def keep_live_traffic(
    api_client: Any, objects: list[dict[str, Any]], *, request_timeout: float = 30.0
) -> list[dict[str, Any]]:
    """``objects`` with each Route's rendered traffic replaced by the split live on the
    cluster, when the live one names the same revisions: a re-deploy (server-side apply with
    force) would otherwise reset a rerouted split to the rendered 100/0. A Route that does not
    exist yet, or whose revisions changed (a new ``revision`` in the config), keeps the
    rendered split."""
    out = []
    for obj in objects:
        if obj.get("apiVersion") == "serving.knative.dev/v1" and obj.get("kind") == "Route":
            live = _live_traffic(api_client, obj, request_timeout)
            rendered = obj["spec"]["traffic"]
            if live and _revisions(live) == _revisions(rendered):
                obj = {**obj, "spec": {**obj["spec"], "traffic": live}}
                log.info("route %s keeps its live traffic split", obj["metadata"]["name"])
        out.append(obj)
    return out


def keep_live_secret(
    api_client: Any, objects: list[dict[str, Any]], name: str, *, request_timeout: float = 30.0
) -> list[dict[str, Any]]:
    """``objects`` with the rendered Secret ``name`` holding the values live on the cluster,
    when it exists there with every key: a re-deploy must not change the passwords and tokens
    that Redis and the running pods were started with."""
    from kubernetes import client

    from knative.manifests._secrets import SecretValues, secret_values_object

    out = []
    for obj in objects:
        if obj.get("kind") == "Secret" and obj["metadata"]["name"] == name:
            ns = obj["metadata"]["namespace"]
            try:
                live = client.CoreV1Api(api_client).read_namespaced_secret(
                    name, ns, _request_timeout=request_timeout)
            except Exception as exc:
                err = map_api_error(exc, f"read Secret {ns}/{name}")
                if not isinstance(err, NotFound):
                    raise err from exc
                live = None
            doc = api_client.sanitize_for_serialization(live) if live is not None else None
            values = SecretValues.from_objects([doc], name) if doc else None
            if values is not None:
                obj = secret_values_object(obj, values)
                log.info("secret %s keeps its live values", name)
        out.append(obj)
    return out


def _revisions(traffic: list[dict[str, Any]]) -> set[str]:
    return {str(t.get("revisionName")) for t in traffic}


def knative_status(
    settings: KubeSettings, platform: KnativePlatform | None = None
) -> dict[str, Any]:
    """What ``surefoot status --platform knative`` shows: the inference service's readiness and
    URL, the traffic it asks for and the traffic in effect, its replicas, and the nodes.

    Errors reading one part are reported under ``errors`` (e.g. a service account that may not
    list nodes) instead of failing the whole status; a missing service raises NotFound.
    """
    platform = platform or KnativePlatform.from_settings(settings)
    svc = platform.service(settings.service)
    status = svc.get("status") or {}
    conditions = status.get("conditions") or []
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    out: dict[str, Any] = {
        "platform": "knative",
        "namespace": platform.namespace,
        "service": settings.service,
        "url": status.get("url"),
        "ready": ready.get("status") == "True",
        "conditions": [
            {k: c.get(k) for k in ("type", "status", "reason", "message") if c.get(k) is not None}
            for c in conditions
        ],
        "latest_ready_revision": status.get("latestReadyRevisionName"),
        "traffic": [dataclasses.asdict(t) for t in platform.traffic(settings.service)],
        "traffic_status": [
            dataclasses.asdict(t) for t in platform.traffic_status(settings.service)
        ],
        "replicas": [],
        "nodes": [],
        "errors": [],
    }
    try:
        out["replicas"] = [dataclasses.asdict(r) for r in platform.replicas(settings.service)]
    except PlatformError as exc:
        out["errors"].append(str(exc))
    try:
        out["nodes"] = [dataclasses.asdict(n) for n in platform.nodes()]
    except PlatformError as exc:
        out["errors"].append(str(exc))
    return out


def format_knative_status(status: dict[str, Any]) -> str:
    """A terminal table of :func:`knative_status`."""
    lines = [
        f"service {status['namespace']}/{status['service']}: "
        f"{'ready' if status['ready'] else 'NOT ready'}  {status.get('url') or ''}".rstrip()
    ]
    for c in status["conditions"]:
        if c.get("status") != "True":
            lines.append(
                f"  {c['type']}={c.get('status')} {c.get('reason', '')} "
                f"{c.get('message', '')}".rstrip()
            )
    lines.append(format_traffic(status["traffic"], status["traffic_status"]))
    lines.append(f"{'REPLICA':<40} {'REVISION':<28} {'NODE':<20} {'READY':<6} PHASE")
    for r in status["replicas"]:
        lines.append(
            f"{r['name']:<40} {r['revision']:<28} {r['node'] or '-':<20} "
            f"{'yes' if r['ready'] else 'no':<6} {r['phase']}"
        )
    if status["nodes"]:
        lines.append(f"{'NODE':<30} {'READY':<6} SCHEDULABLE")
        for n in status["nodes"]:
            lines.append(
                f"{n['name']:<30} {'yes' if n['ready'] else 'no':<6} "
                f"{'no' if n['unschedulable'] else 'yes'}"
            )
    for e in status.get("errors") or []:
        lines.append(f"warning: {e}")
    return "\n".join(lines)


def format_traffic(wanted: list[dict[str, Any]], actual: list[dict[str, Any]]) -> str:
    """``TAG REVISION PERCENT IN-EFFECT`` rows."""
    effect = {t["revision"]: t["percent"] for t in actual}
    lines = [f"{'TAG':<12} {'REVISION':<36} {'PERCENT':>7} {'IN EFFECT':>9}"]
    for t in wanted:
        now = effect.get(t["revision"])
        lines.append(
            f"{t.get('tag') or '-':<12} {t['revision']:<36} {t['percent']:>7} "
            f"{'-' if now is None else now:>9}"
        )
    return "\n".join(lines)
