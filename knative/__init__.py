"""Serving on Knative, in sub-packages of one job each.

- :mod:`knative.platforms`: the platform seam (this package's own exports), with the Knative
  implementation in :mod:`knative.platforms.kube` and the one-machine one in
  :mod:`knative.platforms.local`;
- :mod:`knative.serving`: the replica (the OpenAI API over one model instance);
- :mod:`knative.gateway`: the OpenAI API in front of the revisions;
- :mod:`knative.breakers`: circuit breakers shared through Redis;
- :mod:`knative.manifests`: the cluster's manifests (render, deploy).

Every caller needs the seam; nothing else is imported here, so a replica never loads the
gateway's or the cluster's machinery and the gateway never loads torch.
"""

from knative.platforms import (
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
