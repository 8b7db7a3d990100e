"""The platform seam on a real cluster: Knative Serving and Kubernetes through the official
``kubernetes`` client, every API error mapped to the seam's own error types."""

from knative.platforms.kube._configmap import ConfigMapHome
from knative.platforms.kube._errors import map_api_error
from knative.platforms.kube._platform import LATEST, KnativePlatform
from knative.platforms.kube._settings import KubeSettings, KubeSettingsError, api_client_for

__all__ = [
    "LATEST",
    "ConfigMapHome",
    "KnativePlatform",
    "KubeSettings",
    "KubeSettingsError",
    "api_client_for",
    "map_api_error",
]
