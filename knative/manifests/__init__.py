"""The cluster's manifests: rendered from one small config file (``surefoot render``) and
applied by server-side apply (``surefoot deploy``), with the Knative status read back."""

from knative.manifests._deploy import (
    ApplyResult,
    apply_objects,
    format_knative_status,
    format_traffic,
    knative_status,
)
from knative.manifests._render import (
    RenderConfig,
    RenderConfigError,
    all_objects,
    load_config,
    render,
    to_stream,
    write,
)

__all__ = [
    "ApplyResult",
    "RenderConfig",
    "RenderConfigError",
    "all_objects",
    "apply_objects",
    "format_knative_status",
    "format_traffic",
    "knative_status",
    "load_config",
    "render",
    "to_stream",
    "write",
]
