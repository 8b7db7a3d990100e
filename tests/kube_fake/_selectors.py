"""Label and field selectors, parsed the way the API server parses ``labelSelector`` and
``fieldSelector`` query parameters (https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/
and .../field-selectors/)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Predicate = Callable[[dict[str, Any]], bool]


class SelectorError(ValueError):
    """A selector the server cannot parse: answered with 400."""


def _split_top(text: str) -> list[str]:
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if current or parts:
        parts.append("".join(current).strip())
    return [p for p in parts if p]


_SET = re.compile(r"^([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)$")
_EQ = re.compile(r"^([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)$")
_EXISTS = re.compile(r"^(!?)([\w./-]+)$")


def label_selector(text: str | None) -> Callable[[dict[str, str]], bool]:
    """A predicate over a labels map."""
    if not text:
        return lambda labels: True
    checks: list[Callable[[dict[str, str]], bool]] = []
    for req in _split_top(text):
        if m := _SET.match(req):
            key, op = m.group(1), m.group(2)
            values = {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                checks.append(lambda lb, k=key, vs=values: lb.get(k) in vs)
            else:
                checks.append(lambda lb, k=key, vs=values: lb.get(k) not in vs)
        elif m := _EQ.match(req):
            key, op, value = m.group(1), m.group(2), m.group(3)
            if op == "!=":
                checks.append(lambda lb, k=key, v=value: lb.get(k) != v)
            else:
                checks.append(lambda lb, k=key, v=value: lb.get(k) == v)
        elif m := _EXISTS.match(req):
            neg, key = m.group(1) == "!", m.group(2)
            checks.append(lambda lb, k=key, n=neg: (k in lb) != n)
        else:
            raise SelectorError(f"unable to parse requirement: {req!r}")
    return lambda labels: all(c(labels) for c in checks)


def match_label_selector_object(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A ``metav1.LabelSelector`` object (matchLabels, matchExpressions). An empty selector
    matches everything, as a PodDisruptionBudget's does in policy/v1."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), set(expr.get("values") or [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# Field selectors the API server supports, per plural (metadata.name and metadata.namespace
# work for every resource).
_FIELDS: dict[str, dict[str, Callable[[dict[str, Any]], str]]] = {
    "pods": {
        "spec.nodeName": lambda o: str((o.get("spec") or {}).get("nodeName") or ""),
        "spec.restartPolicy": lambda o: str((o.get("spec") or {}).get("restartPolicy") or ""),
        "spec.schedulerName": lambda o: str((o.get("spec") or {}).get("schedulerName") or ""),
        "spec.serviceAccountName": lambda o: str(
            (o.get("spec") or {}).get("serviceAccountName") or ""
        ),
        "status.phase": lambda o: str((o.get("status") or {}).get("phase") or ""),
        "status.podIP": lambda o: str((o.get("status") or {}).get("podIP") or ""),
    },
    "nodes": {
        "spec.unschedulable": lambda o: str(
            bool((o.get("spec") or {}).get("unschedulable"))
        ).lower(),
    },
}


def field_selector(plural: str, text: str | None) -> Predicate:
    if not text:
        return lambda obj: True
    getters = {
        "metadata.name": lambda o: str(o["metadata"].get("name", "")),
        "metadata.namespace": lambda o: str(o["metadata"].get("namespace", "")),
        **_FIELDS.get(plural, {}),
    }
    checks: list[Predicate] = []
    for req in _split_top(text):
        m = re.match(r"^([\w.]+)\s*(==|=|!=)\s*(.*)$", req)
        if not m:
            raise SelectorError(f"invalid field selector: {req!r}")
        field, op, value = m.group(1), m.group(2), m.group(3).strip()
        getter = getters.get(field)
        if getter is None:
            raise SelectorError(f'field label not supported: "{field}"')
        if op == "!=":
            checks.append(lambda o, g=getter, v=value: g(o) != v)
        else:
            checks.append(lambda o, g=getter, v=value: g(o) == v)
    return lambda obj: all(c(obj) for c in checks)
