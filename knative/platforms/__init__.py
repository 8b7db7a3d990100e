"""The platform seam: the one interface to "the cluster" that functions, the gateway and the
drill are written against. Its implementations are sub-packages of their own, imported only
by whoever runs on them: :mod:`knative.platforms.kube` (Knative on Kubernetes) and
:mod:`knative.platforms.local` (real processes on simulated nodes, for ``surefoot up``).
"""

from knative.platforms._seam import (
    Conflict,
    EvictionReport,
    Node,
    NotFound,
    PermanentPlatformError,
    Platform,
    PlatformError,
    Replica,
    Target,
    TemporaryPlatformError,
    TooManyRequests,
    Unauthorized,
    validate_traffic,
)

__all__ = [
    "Conflict",
    "EvictionReport",
    "Node",
    "NotFound",
    "PermanentPlatformError",
    "Platform",
    "PlatformError",
    "Replica",
    "Target",
    "TemporaryPlatformError",
    "TooManyRequests",
    "Unauthorized",
    "validate_traffic",
]
