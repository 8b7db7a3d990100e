"""Knative Serving's rules the fake follows because Surefoot depends on them (Serving v1.21+,
as ``../shared/tools/knative-check`` runs them from Knative's source):

- the pod-spec field mask: ``automountServiceAccountToken`` may only be ``false``;
- bring-your-own revision names must start with ``<Service or Configuration name>-``;
- a Service-owned Route may only name revisions of its own Service (``RevisionNotOwned``),
  while a standalone Route may name any revision in its namespace;
- a Revision's ``autoscaling.knative.dev/*`` annotations are copied onto its PodAutoscaler on
  every reconcile, so a direct PodAutoscaler patch is reverted.
"""

from __future__ import annotations

from typing import Any

AUTOSCALING_PREFIX = "autoscaling.knative.dev/"
SERVICE_LABEL = "serving.knative.dev/service"
CONFIGURATION_LABEL = "serving.knative.dev/configuration"


def template_errors(kind: str, obj: dict[str, Any]) -> list[str]:
    """Field-mask and revision-name errors of a Service's or Configuration's template."""
    template = (obj.get("spec") or {}).get("template") or {}
    errors = []
    if (template.get("spec") or {}).get("automountServiceAccountToken") is True:
        errors.append(
            "must not set the field(s): spec.template.spec.automountServiceAccountToken"
        )
    name = obj["metadata"].get("name", "")
    rev = (template.get("metadata") or {}).get("name")
    if rev and not str(rev).startswith(f"{name}-"):
        errors.append(
            f'"{rev}" must have prefix "{name}-": spec.template.metadata.name ({kind})'
        )
    return errors


def not_owned(revision: dict[str, Any], service: str) -> bool:
    """A revision a Service-owned Route may not name."""
    return (revision["metadata"].get("labels") or {}).get(SERVICE_LABEL) != service


def scale_annotations(obj: dict[str, Any]) -> dict[str, str]:
    ann = obj["metadata"].get("annotations") or {}
    return {k: v for k, v in ann.items() if k.startswith(AUTOSCALING_PREFIX)}


def with_revision_scale(pa: dict[str, Any], revision: dict[str, Any]) -> dict[str, Any] | None:
    """The PodAutoscaler with the Revision's autoscaling annotations, or None if it has them."""
    wanted = scale_annotations(revision)
    if scale_annotations(pa) == wanted:
        return None
    ann = {
        k: v for k, v in (pa["metadata"].get("annotations") or {}).items()
        if not k.startswith(AUTOSCALING_PREFIX)
    }
    ann.update(wanted)
    new = dict(pa)
    new["metadata"] = {**pa["metadata"], "annotations": ann}
    return new
