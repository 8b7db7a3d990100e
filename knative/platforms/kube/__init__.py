"""The platform seam on a real cluster: Knative Serving and Kubernetes through the official
``kubernetes`` client, every API error mapped to the seam's own error types."""

from knative.platforms.kube._platform import (
    LATEST,
    KnativePlatform,
    KubeSettings,
    KubeSettingsError,
    api_client_for,
    map_api_error,
)

__all__ = [
    "LATEST",
    "KnativePlatform",
    "KubeSettings",
    "KubeSettingsError",
    "api_client_for",
    "map_api_error",
]
