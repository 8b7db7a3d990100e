"""The platform seam on one machine: replicas as real processes on simulated nodes, and the
HTTP control API through which the other processes of ``surefoot up`` reach it."""

from knative.platforms.local._control import LocalPlatformClient, create_control_app
from knative.platforms.local._platform import LocalPlatform
from knative.platforms.local._records import LocalSettings, RevisionSpec

__all__ = [
    "LocalPlatform",
    "LocalPlatformClient",
    "LocalSettings",
    "RevisionSpec",
    "create_control_app",
]
