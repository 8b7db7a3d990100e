"""The cluster's manifests: rendered from one small config file (``surefoot render``) and
applied by server-side apply (``surefoot deploy``), with the Knative status read back."""

from knative.manifests._config import (
    Images,
    RenderConfig,
    RenderConfigError,
    Traffic,
    config_from_mapping,
    load_config,
)
from knative.manifests._deploy import (
    ApplyResult,
    apply_objects,
    format_knative_status,
    format_traffic,
    keep_live_secret,
    keep_live_traffic,
    knative_status,
    object_path,
)
from knative.manifests._eventing import FUNCTION_ROUTES
from knative.manifests._render import all_objects, kustomization, render, to_stream, write
from knative.manifests._secrets import SecretValues, read_secret_file

__all__ = [
    "FUNCTION_ROUTES",
    "ApplyResult",
    "Images",
    "RenderConfig",
    "RenderConfigError",
    "SecretValues",
    "Traffic",
    "all_objects",
    "apply_objects",
    "config_from_mapping",
    "format_knative_status",
    "format_traffic",
    "keep_live_secret",
    "keep_live_traffic",
    "knative_status",
    "kustomization",
    "load_config",
    "object_path",
    "read_secret_file",
    "render",
    "to_stream",
    "write",
]
