"""The object store behind the fake API server: resources, writes, watches' event history,
evictions and the one Knative controller behaviour Surefoot relies on.

Every public method takes the store's lock; HTTP handling lives in ``_server``.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import re
import secrets
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from tests.kube_fake import _knative, _patch, _schemas
from tests.kube_fake._selectors import field_selector, label_selector, match_label_selector_object


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    custom: bool = False  # served from a CustomResourceDefinition
    status_subresource: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """``plural.group`` as kubectl spells it (``pods``, ``services.serving.knative.dev``)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def _r(api_version: str, plural: str, kind: str, **kw: Any) -> Resource:
    group, _, version = api_version.rpartition("/")
    return Resource(group, version, plural, kind, **kw)


RESOURCES: tuple[Resource, ...] = (
    _r("v1", "namespaces", "Namespace", namespaced=False),
    _r("v1", "nodes", "Node", namespaced=False),
    _r("v1", "pods", "Pod"),
    _r("v1", "services", "Service"),
    _r("v1", "configmaps", "ConfigMap", status_subresource=False),
    _r("v1", "secrets", "Secret", status_subresource=False),
    _r("v1", "serviceaccounts", "ServiceAccount", status_subresource=False),
    _r("v1", "persistentvolumeclaims", "PersistentVolumeClaim"),
    _r("v1", "events", "Event", status_subresource=False),
    _r("apps/v1", "deployments", "Deployment"),
    _r("apps/v1", "daemonsets", "DaemonSet"),
    _r("apps/v1", "replicasets", "ReplicaSet"),
    _r("apps/v1", "statefulsets", "StatefulSet"),
    _r("batch/v1", "cronjobs", "CronJob"),
    _r("batch/v1", "jobs", "Job"),
    _r("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    _r("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy", status_subresource=False),
    _r("rbac.authorization.k8s.io/v1", "roles", "Role", status_subresource=False),
    _r("rbac.authorization.k8s.io/v1", "rolebindings", "RoleBinding", status_subresource=False),
    _r(
        "rbac.authorization.k8s.io/v1",
        "clusterroles",
        "ClusterRole",
        namespaced=False,
        status_subresource=False,
    ),
    _r(
        "rbac.authorization.k8s.io/v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        namespaced=False,
        status_subresource=False,
    ),
    _r("serving.knative.dev/v1", "services", "Service", custom=True),
    _r("serving.knative.dev/v1", "configurations", "Configuration", custom=True),
    _r("serving.knative.dev/v1", "revisions", "Revision", custom=True),
    _r("serving.knative.dev/v1", "routes", "Route", custom=True),
    _r("autoscaling.internal.knative.dev/v1alpha1", "podautoscalers", "PodAutoscaler", custom=True),
    _r("eventing.knative.dev/v1", "brokers", "Broker", custom=True),
    _r("eventing.knative.dev/v1", "triggers", "Trigger", custom=True),
    _r("sources.knative.dev/v1", "apiserversources", "ApiServerSource", custom=True),
    _r("sources.knative.dev/v1", "pingsources", "PingSource", custom=True),
)

_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_KEY = {r.key: r for r in RESOURCES}
_BY_KIND = {(r.api_version, r.kind): r for r in RESOURCES}

KSVC = _BY_KEY["services.serving.knative.dev"]
REVISION = _BY_KEY["revisions.serving.knative.dev"]
PODAUTOSCALER = _BY_KEY["podautoscalers.autoscaling.internal.knative.dev"]
CONFIGURATION = _BY_KEY["configurations.serving.knative.dev"]
ROUTE = _BY_KEY["routes.serving.knative.dev"]


def resource_for_path(group: str, version: str, plural: str) -> Resource | None:
    return _BY_PATH.get((group, version, plural))


def resource_named(name: str) -> Resource:
    """By ``plural[.group]`` (``pods``, ``services.serving.knative.dev``) or ``Kind``."""
    if name in _BY_KEY:
        return _BY_KEY[name]
    for r in RESOURCES:
        if r.kind == name and not r.custom:
            return r
    raise KeyError(f"unknown resource {name!r}")


def resource_for_kind(api_version: str, kind: str) -> Resource | None:
    return _BY_KIND.get((api_version, kind))


class ApiError(Exception):
    """An API answer other than success, rendered as a ``Status`` object."""

    REASONS: ClassVar[dict[int, str]] = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        410: "Gone",
        415: "UnsupportedMediaType",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
    }

    def __init__(
        self,
        code: int,
        message: str,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or self.REASONS.get(code, "Unknown")
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclass(frozen=True)
class Event:
    rv: int
    resource: Resource
    type: str  # ADDED | MODIFIED | DELETED
    obj: dict[str, Any]
    prev: dict[str, Any] | None


_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_NO_STATUS_ON_CREATE = {"pods", "nodes"}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_status(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "status"}


class State:
    """The fake cluster's objects. ``history`` bounds the watch event log; watches that ask for a
    resourceVersion older than what it still holds get 410 Gone."""

    def __init__(self, history: int = 1000) -> None:
        self.cond = threading.Condition(threading.RLock())
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = 1
        self.events: deque[Event] = deque(maxlen=history)
        self.floor = 1  # watches from a resourceVersion below this one get 410 Gone
        self.watch_epoch = 0  # bumped by end_watches(): open watches close
        self.closing = False
        # True: an accepted eviction leaves the pod terminating (deletionTimestamp) until the
        # test deletes it, as a kubelet stopping it would
        self.graceful_eviction = False
        self._applied: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for ns in ("default", "kube-system", "knative-serving", "knative-eventing"):
            self.put_direct(_BY_KEY["namespaces"], {"metadata": {"name": ns}})

    # ------------------------------------------------------------------ basics
    def _k(self, res: Resource, ns: str | None, name: str) -> tuple[str, str, str]:
        return (res.key, (ns or "") if res.namespaced else "", name)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _record(
        self, kind: str, res: Resource, obj: dict[str, Any], prev: dict[str, Any] | None
    ) -> None:
        if len(self.events) == self.events.maxlen:
            self.floor = self.events[0].rv
        self.events.append(Event(self.rv, res, kind, copy.deepcopy(obj), prev))
        self.cond.notify_all()

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: any watch from an older
        resourceVersion now gets 410 Gone."""
        with self.cond:
            self.events.clear()
            self.floor = self.rv
            self.cond.notify_all()

    def end_watches(self) -> None:
        with self.cond:
            self.watch_epoch += 1
            self.cond.notify_all()

    def _require_namespace(self, res: Resource, ns: str | None) -> None:
        if res.namespaced and (_BY_KEY["namespaces"].key, "", ns or "") not in self.objects:
            raise ApiError(
                404,
                f'namespaces "{ns}" not found',
                details={"name": ns, "kind": "namespaces"},
            )

    def _not_found(self, res: Resource, name: str) -> ApiError:
        what = res.key
        return ApiError(
            404,
            f'{what} "{name}" not found',
            details={"name": name, "group": res.group, "kind": res.plural},
        )

    def get(self, res: Resource, ns: str | None, name: str) -> dict[str, Any]:
        with self.cond:
            obj = self.objects.get(self._k(res, ns, name))
            if obj is None:
                raise self._not_found(res, name)
            return copy.deepcopy(obj)

    def find(self, res: Resource, ns: str | None, name: str) -> dict[str, Any] | None:
        with self.cond:
            obj = self.objects.get(self._k(res, ns, name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(
        self,
        res: Resource,
        ns: str | None,
        labels: str | None = None,
        fields: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        lsel = label_selector(labels)
        fsel = field_selector(res.plural, fields)
        with self.cond:
            items = [
                copy.deepcopy(o)
                for (key, ons, _), o in sorted(self.objects.items())
                if key == res.key
                and (ns is None or not res.namespaced or ons == ns)
                and lsel(o["metadata"].get("labels") or {})
                and fsel(o)
            ]
            return items, str(self.rv)

    # ------------------------------------------------------------------ validation
    def _validate(
        self, res: Resource, obj: dict[str, Any], field_validation: str
    ) -> tuple[dict[str, Any], list[str]]:
        """ObjectMeta checks for every kind; the CRD schema for custom kinds with one. Returns
        the (pruned) object and warnings."""
        name = obj["metadata"].get("name", "")
        if not name or len(name) > 253 or not _NAME.match(name):
            raise ApiError(
                422,
                f'{res.kind} "{name}" is invalid: metadata.name: Invalid value: "{name}": a '
                "lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.'",
                details={"name": name, "kind": res.kind},
            )
        for field in ("labels", "annotations"):
            for k, v in (obj["metadata"].get(field) or {}).items():
                if not isinstance(v, str):
                    raise ApiError(
                        400,
                        f"metadata.{field}[{k}]: value must be a string, got {type(v).__name__}",
                    )
        warnings: list[str] = []
        if res.custom and _schemas.has_schema(res.api_version, res.kind):
            unknown, invalid = _schemas.schema_errors(obj)
            if invalid:
                raise ApiError(
                    422,
                    f'{res.kind}.{res.group} "{name}" is invalid: ' + "; ".join(invalid),
                    details={
                        "name": name,
                        "group": res.group,
                        "kind": res.kind,
                        "causes": [{"reason": "FieldValueInvalid", "message": m} for m in invalid],
                    },
                )
            if unknown:
                if field_validation == "Strict":
                    raise ApiError(
                        400,
                        f'{res.kind} in version "{res.version}" cannot be handled as a '
                        f"{res.kind}: strict decoding error: "
                        + ", ".join(f'unknown field "{u}"' for u in unknown),
                    )
                obj, removed = _schemas.prune(obj)
                if field_validation != "Ignore":
                    warnings += [f'unknown field "{u}"' for u in removed]
        if res.key in (KSVC.key, ROUTE.key):
            self._knative_webhook(obj)
        if res.key in (KSVC.key, CONFIGURATION.key):
            errors = _knative.template_errors(res.kind, obj)
            if errors:
                raise ApiError(
                    400,
                    'admission webhook "validation.webhook.serving.knative.dev" denied the '
                    "request: validation failed: " + "; ".join(errors),
                )
        return obj, warnings

    @staticmethod
    def _knative_webhook(obj: dict[str, Any]) -> None:
        """The part of Knative's admission webhook Surefoot depends on (route_validation.go):
        traffic percents within 0..100 that sum to 100, unique tags, one target kind each."""
        traffic = (obj.get("spec") or {}).get("traffic")
        if not traffic:
            return
        errors = []
        total = 0
        tags: set[str] = set()
        for i, t in enumerate(traffic):
            pct = t.get("percent", 0)
            if not 0 <= pct <= 100:
                errors.append(f"expected 0 <= {pct} <= 100: spec.traffic[{i}].percent")
            total += pct
            if t.get("revisionName") and t.get("latestRevision"):
                errors.append(f"may not set revisionName with latestRevision: spec.traffic[{i}]")
            if not t.get("revisionName") and not t.get("latestRevision"):
                errors.append(
                    f"expected exactly one, got neither: spec.traffic[{i}].revisionName, "
                    f"spec.traffic[{i}].latestRevision"
                )
            tag = t.get("tag")
            if tag:
                if tag in tags:
                    errors.append(f"Multiple definitions for {tag!r}: spec.traffic[{i}].tag")
                tags.add(tag)
        if total != 100:
            errors.append(f"Traffic targets sum to {total}, want 100: spec.traffic")
        if errors:
            raise ApiError(
                400,
                'admission webhook "validation.webhook.serving.knative.dev" denied the request: '
                "validation failed: " + "; ".join(errors),
            )

    # ------------------------------------------------------------------ writes
    def create(
        self,
        res: Resource,
        ns: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        field_validation: str = "Warn",
    ) -> tuple[dict[str, Any], list[str]]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be an object")
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if obj.get("kind") not in (None, res.kind) or obj.get("apiVersion") not in (
            None,
            res.api_version,
        ):
            raise ApiError(
                400,
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({res.api_version})",
            )
        obj["apiVersion"], obj["kind"] = res.api_version, res.kind
        if res.namespaced:
            if meta.get("namespace") not in (None, ns):
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            else:
                raise ApiError(
                    422,
                    f"{res.kind} is invalid: metadata.name: Required value: name or "
                    "generateName is required",
                )
        if (res.status_subresource and res.custom) or res.plural in _NO_STATUS_ON_CREATE:
            obj = _strip_status(obj)
        if res.plural == "pods" and not res.group:
            obj.setdefault("status", {}).setdefault("phase", "Pending")
        with self.cond:
            self._require_namespace(res, ns)
            key = self._k(res, ns, meta["name"])
            if key in self.objects:
                raise ApiError(
                    409,
                    f'{res.key} "{meta["name"]}" already exists',
                    reason="AlreadyExists",
                    details={"name": meta["name"], "group": res.group, "kind": res.plural},
                )
            obj, warnings = self._validate(res, obj, field_validation)
            meta = obj["metadata"]
            if dry_run:
                meta.setdefault("uid", str(uuid.uuid4()))
                return obj, warnings
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = _now()
            meta["generation"] = 1
            meta["resourceVersion"] = self._next_rv()
            self.objects[key] = obj
            self._record("ADDED", res, obj, None)
            self._after_write(res, obj)
            return copy.deepcopy(obj), warnings

    def _update(
        self,
        res: Resource,
        old: dict[str, Any],
        new: dict[str, Any],
        *,
        subresource: str | None,
        dry_run: bool,
        field_validation: str,
    ) -> tuple[dict[str, Any], list[str]]:
        """Store ``new`` in place of ``old`` after the checks every update gets."""
        meta = new.setdefault("metadata", {})
        name = old["metadata"]["name"]
        if meta.get("name", name) != name:
            raise ApiError(
                400,
                f"the name of the object ({meta.get('name')}) does not match the name on "
                f"the URL ({name})",
            )
        rv = meta.get("resourceVersion")
        if rv not in (None, "") and rv != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {res.key} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
                details={"name": name, "group": res.group, "kind": res.plural},
            )
        new["apiVersion"], new["kind"] = res.api_version, res.kind
        for k in ("uid", "creationTimestamp", "namespace", "name", "generation"):
            if k in old["metadata"]:
                meta[k] = old["metadata"][k]
            else:
                meta.pop(k, None)
        if res.status_subresource:
            if subresource == "status":
                new = {**copy.deepcopy(old), "status": new.get("status", {})}
                meta = new["metadata"]
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        new, warnings = self._validate(res, new, field_validation)
        meta = new["metadata"]
        if _strip_status({**new, "metadata": {}}) != _strip_status({**old, "metadata": {}}):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if dry_run:
            return new, warnings
        if new == old:
            return copy.deepcopy(old), warnings  # no-op writes keep their resourceVersion
        meta["resourceVersion"] = self._next_rv()
        self.objects[self._k(res, meta.get("namespace"), name)] = new
        self._record("MODIFIED", res, new, copy.deepcopy(old))
        self._after_write(res, new)
        return copy.deepcopy(new), warnings

    def replace(
        self,
        res: Resource,
        ns: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Warn",
    ) -> tuple[dict[str, Any], list[str]]:
        if not isinstance(body, dict):
            raise ApiError(400, "the body of the request must be an object")
        with self.cond:
            old = self.objects.get(self._k(res, ns, name))
            if old is None:
                raise self._not_found(res, name)
            if res.custom and not (body.get("metadata") or {}).get("resourceVersion"):
                raise ApiError(
                    422,
                    f'{res.kind}.{res.group} "{name}" is invalid: metadata.resourceVersion: '
                    "Invalid value: 0x0: must be specified for an update",
                )
            return self._update(
                res,
                old,
                copy.deepcopy(body),
                subresource=subresource,
                dry_run=dry_run,
                field_validation=field_validation,
            )

    def patch(
        self,
        res: Resource,
        ns: str | None,
        name: str,
        content_type: str,
        body: Any,
        *,
        subresource: str | None = None,
        field_manager: str | None = None,
        force: bool = False,
        dry_run: bool = False,
        field_validation: str = "Warn",
    ) -> tuple[dict[str, Any], list[str], bool]:
        """Returns ``(object, warnings, created)``; only an apply may create."""
        ctype = content_type.split(";")[0].strip().lower()
        with self.cond:
            old = self.objects.get(self._k(res, ns, name))
            if ctype == "application/apply-patch+yaml":
                return self._apply(
                    res, ns, name, old, body, field_manager, dry_run, field_validation
                )
            if old is None:
                raise self._not_found(res, name)
            try:
                if ctype == "application/merge-patch+json":
                    new = _patch.merge_patch(old, body)
                elif ctype == "application/json-patch+json":
                    new = _patch.json_patch(old, body)
                elif ctype == "application/strategic-merge-patch+json":
                    if res.custom:
                        raise ApiError(
                            415,
                            "the body of the request was in an unknown format - accepted media "
                            "types include: application/json-patch+json, "
                            "application/merge-patch+json, application/apply-patch+yaml",
                        )
                    new = _patch.strategic_merge_patch(old, body)
                else:
                    raise ApiError(
                        415,
                        f"the body of the request was in an unknown format ({content_type}) - "
                        "accepted media types include: application/json-patch+json, "
                        "application/merge-patch+json, application/apply-patch+yaml"
                        + ("" if res.custom else ", application/strategic-merge-patch+json"),
                    )
            except _patch.PatchError as exc:
                raise ApiError(exc.code, str(exc)) from None
            if not isinstance(new, dict):
                raise ApiError(422, "the patched object is not an object")
            obj, warnings = self._update(
                res,
                old,
                new,
                subresource=subresource,
                dry_run=dry_run,
                field_validation=field_validation,
            )
            return obj, warnings, False

    def _apply(
        self,
        res: Resource,
        ns: str | None,
        name: str,
        old: dict[str, Any] | None,
        body: Any,
        field_manager: str | None,
        dry_run: bool,
        field_validation: str,
    ) -> tuple[dict[str, Any], list[str], bool]:
        if not field_manager:
            raise ApiError(400, "PATCH, application/apply-patch+yaml: fieldManager is required")
        if not isinstance(body, dict):
            raise ApiError(400, "the apply configuration must be an object")
        if body.get("apiVersion") != res.api_version or body.get("kind") != res.kind:
            raise ApiError(
                400,
                f"apply: apiVersion and kind must be {res.api_version} {res.kind}, got "
                f"{body.get('apiVersion')} {body.get('kind')}",
            )
        meta = body.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise ApiError(
                400, f"apply: metadata.name {meta.get('name')!r} does not match {name!r}"
            )
        applied = copy.deepcopy(body)
        applied.setdefault("metadata", {})["name"] = name
        key = (*self._k(res, ns, name), field_manager)
        if old is None:
            obj, warnings = self.create(
                res, ns, applied, dry_run=dry_run, field_validation=field_validation
            )
            if not dry_run:
                self._applied[key] = applied
            return obj, warnings, True
        new = _patch.apply_merge(old, applied, self._applied.get(key))
        obj, warnings = self._update(
            res, old, new, subresource=None, dry_run=dry_run, field_validation=field_validation
        )
        if not dry_run:
            self._applied[key] = applied
        return obj, warnings, False

    def delete(
        self, res: Resource, ns: str | None, name: str, *, dry_run: bool = False
    ) -> dict[str, Any]:
        with self.cond:
            key = self._k(res, ns, name)
            old = self.objects.get(key)
            if old is None:
                raise self._not_found(res, name)
            if dry_run:
                return copy.deepcopy(old)
            del self.objects[key]
            for akey in [a for a in self._applied if a[:3] == key]:
                del self._applied[akey]
            self._next_rv()
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self._record("DELETED", res, gone, old)
            self._after_write(res, gone, deleted=True)
            return gone

    def put_direct(self, res: Resource, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or overwrite an object as a controller would (no validation, status kept).
        Test hooks use it."""
        with self.cond:
            obj = copy.deepcopy(obj)
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            meta = obj.setdefault("metadata", {})
            if not res.namespaced:
                meta.pop("namespace", None)
            key = self._k(res, meta.get("namespace"), meta["name"])
            old = self.objects.get(key)
            if old is None:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta.setdefault("generation", 1)
            else:
                for k in ("uid", "creationTimestamp", "generation"):
                    meta[k] = old["metadata"][k]
            meta["resourceVersion"] = self._next_rv()
            self.objects[key] = obj
            self._record("ADDED" if old is None else "MODIFIED", res, obj, old)
            self._after_write(res, obj)
            return copy.deepcopy(obj)

    # ------------------------------------------------------------------ controllers
    def _after_write(self, res: Resource, obj: dict[str, Any], deleted: bool = False) -> None:
        ns = obj["metadata"].get("namespace")
        if res.key in (REVISION.key, PODAUTOSCALER.key) and not deleted:
            self._sync_podautoscaler(ns, obj["metadata"]["name"])
        for kind in (KSVC, ROUTE):
            if res.key not in (kind.key, REVISION.key):
                continue
            names = (
                [obj["metadata"]["name"]]
                if res.key == kind.key and not deleted
                else [k[2] for k in self.objects if k[0] == kind.key and k[1] == ns]
            )
            for name in names:
                self._reconcile_ksvc(ns, name, kind)

    def _sync_podautoscaler(self, ns: str | None, name: str) -> None:
        """The revision reconciler: the Revision's autoscaling annotations onto its PA."""
        rev = self.objects.get(self._k(REVISION, ns, name))
        pa = self.objects.get(self._k(PODAUTOSCALER, ns, name))
        if rev is None or pa is None:
            return
        new = _knative.with_revision_scale(pa, rev)
        if new is None:
            return
        new["metadata"]["resourceVersion"] = self._next_rv()
        self.objects[self._k(PODAUTOSCALER, ns, name)] = new
        self._record("MODIFIED", PODAUTOSCALER, new, pa)

    def _reconcile_ksvc(self, ns: str | None, name: str, kind: Resource = KSVC) -> None:
        """Knative's route reconciler, reduced to what Surefoot relies on: ``status.traffic``
        follows ``spec.traffic`` once every revision it names exists (and, for a Service,
        belongs to it); until then the old status stays and RoutesReady is False with reason
        RevisionMissing (or RevisionNotOwned). A standalone Route may name any revision."""
        key = self._k(kind, ns, name)
        svc = self.objects.get(key)
        if svc is None:
            return
        spec = svc.get("spec") or {}
        revs = {k[2]: o for k, o in self.objects.items() if k[0] == REVISION.key and k[1] == ns}
        latest = self._latest_revision(kind, name, spec, revs)
        status = copy.deepcopy(svc.get("status") or {})
        traffic, missing, foreign = self._resolve_traffic(kind, ns, name, spec, revs, latest)
        routes_ready = _routes_ready(name, missing, foreign)
        if not missing and not foreign:
            status["traffic"] = traffic
        ready_ok = not missing and not foreign and (latest is not None or kind is ROUTE)
        conditions = [{"type": "Ready", "status": "True" if ready_ok else "False"}, routes_ready]
        if kind is KSVC:
            configs = {"type": "ConfigurationsReady", "status": "True" if latest else "Unknown"}
            conditions.insert(0, configs)
        status.update(
            {
                "observedGeneration": svc["metadata"].get("generation", 1),
                "url": f"http://{name}.{ns}.example.com",
                "address": {"url": f"http://{name}.{ns}.svc.cluster.local"},
                "conditions": conditions,
            }
        )
        if latest:
            status["latestCreatedRevisionName"] = latest
            status["latestReadyRevisionName"] = latest
        if status != svc.get("status"):
            new = copy.deepcopy(svc)
            new["status"] = status
            new["metadata"]["resourceVersion"] = self._next_rv()
            self.objects[key] = new
            self._record("MODIFIED", kind, new, svc)

    @staticmethod
    def _latest_revision(
        kind: Resource, name: str, spec: dict[str, Any], revs: dict[str, dict[str, Any]]
    ) -> str | None:
        if kind is not KSVC:
            return None
        template_name = ((spec.get("template") or {}).get("metadata") or {}).get("name")
        if template_name in revs:
            return str(template_name)
        own = sorted(
            (o for o in revs.values() if not _knative.not_owned(o, name)),
            key=lambda o: int(o["metadata"]["resourceVersion"]),
        )
        return str(own[-1]["metadata"]["name"]) if own else None

    @staticmethod
    def _resolve_traffic(
        kind: Resource, ns: str | None, name: str, spec: dict[str, Any],
        revs: dict[str, dict[str, Any]], latest: str | None,
    ) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        """(status.traffic, missing revisions, revisions not owned by the Service)."""
        wanted = spec.get("traffic") or [{"latestRevision": True, "percent": 100}]
        missing: list[str] = []
        foreign: list[str] = []
        traffic = []
        for t in wanted:
            rev = latest if t.get("latestRevision") else t.get("revisionName")
            if not rev or rev not in revs:
                missing.append(rev or "(latest)")
                continue
            if kind is KSVC and _knative.not_owned(revs[rev], name):
                foreign.append(rev)
                continue
            entry = {
                "revisionName": rev,
                "latestRevision": bool(t.get("latestRevision")),
                "percent": t.get("percent", 0),
            }
            if t.get("tag"):
                entry["tag"] = t["tag"]
                entry["url"] = f"http://{t['tag']}-{name}.{ns}.example.com"
            traffic.append(entry)
        return traffic, missing, foreign

    # ------------------------------------------------------------------ eviction
    def evict(self, ns: str, name: str, body: Any, *, dry_run: bool = False) -> dict[str, Any]:
        """The pods/eviction subresource (policy/v1), as the API server's eviction REST
        handler behaves: PodDisruptionBudgets gate it; 429 when the budget allows no
        disruption now; 500 when more than one budget selects the pod."""
        pods = _BY_KEY["pods"]
        if not isinstance(body, dict) or body.get("kind") not in (None, "Eviction"):
            raise ApiError(400, "the body must be a policy/v1 Eviction")
        if (body.get("metadata") or {}).get("name") not in (None, name):
            raise ApiError(400, "name in URL does not match name in Eviction object")
        with self.cond:
            pod = self.objects.get(self._k(pods, ns, name))
            if pod is None:
                raise self._not_found(pods, name)
            phase = (pod.get("status") or {}).get("phase")
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            if phase not in ("Succeeded", "Failed", "Pending") and not terminating:
                labels = pod["metadata"].get("labels") or {}
                pdbs = [
                    o
                    for (key, ons, _), o in self.objects.items()
                    if key == "poddisruptionbudgets.policy"
                    and ons == ns
                    and match_label_selector_object((o.get("spec") or {}).get("selector"), labels)
                ]
                if len(pdbs) > 1:
                    raise ApiError(
                        500,
                        "This pod has more than one PodDisruptionBudget, which the eviction "
                        "subresource does not support.",
                    )
                if pdbs:
                    self._check_budget(ns, pdbs[0], pod)
            if not dry_run and self.graceful_eviction:
                # the kubelet has yet to stop it: terminating until a test deletes it
                pod = copy.deepcopy(pod)
                pod["metadata"]["deletionTimestamp"] = _now()
                self.put_direct(pods, pod)
            elif not dry_run:
                self.delete(pods, ns, name)
            return {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "code": 201,
            }

    def _check_budget(self, ns: str, pdb: dict[str, Any], pod: dict[str, Any]) -> None:
        spec = pdb.get("spec") or {}
        selected = [
            o
            for (key, ons, _), o in self.objects.items()
            if key == "pods"
            and ons == ns
            and not o["metadata"].get("deletionTimestamp")
            and (o.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and match_label_selector_object(spec.get("selector"), o["metadata"].get("labels") or {})
        ]
        expected = len(selected)
        healthy = sum(1 for o in selected if pod_ready(o))

        def amount(value: Any) -> int:
            if isinstance(value, str) and value.endswith("%"):
                return math.ceil(expected * int(value[:-1]) / 100)
            return int(value)

        if "minAvailable" in spec:
            desired = amount(spec["minAvailable"])
        elif "maxUnavailable" in spec:
            desired = max(0, expected - amount(spec["maxUnavailable"]))
        else:
            desired = 0
        allowed = max(0, healthy - desired)
        pdb_name = pdb["metadata"]["name"]
        # Policy IfHealthyBudget (the default): an unready pod may go while the budget holds.
        if not pod_ready(pod) and healthy >= desired:
            return
        if allowed <= 0:
            raise ApiError(
                429,
                "Cannot evict pod as it would violate the pod's disruption budget.",
                details={
                    "causes": [
                        {
                            "reason": "DisruptionBudget",
                            "message": f"The disruption budget {pdb_name} needs {desired} "
                            f"healthy pods and has {healthy} currently",
                        }
                    ]
                },
            )


def pod_ready(pod: dict[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def _routes_ready(name: str, missing: list[str], foreign: list[str]) -> dict[str, Any]:
    if missing:
        return {
            "type": "RoutesReady",
            "status": "False",
            "reason": "RevisionMissing",
            "message": "Revision "
            + ", ".join(repr(m) for m in missing)
            + " referenced in traffic not found.",
        }
    if foreign:
        return {
            "type": "RoutesReady",
            "status": "False",
            "reason": "RevisionNotOwned",
            "message": f'Revision "{foreign[0]}" does not belong to Service "{name}"',
        }
    return {"type": "RoutesReady", "status": "True"}
