"""How to reach the cluster: the Kubernetes access settings (``SUREFOOT_*`` variables read by
``envreader``) and the kubernetes client they make."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from envreader import EnvError, read_settings
from knative.platforms import PermanentPlatformError

_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class KubeSettingsError(ValueError):
    """A Kubernetes access setting that cannot work; the message names it."""


@dataclass(frozen=True)
class KubeSettings:
    """How to reach the cluster and which objects are Surefoot's.

    Every field has a ``SUREFOOT_*`` variable (``SUREFOOT_NAMESPACE``, ``SUREFOOT_SERVICE``,
    ``SUREFOOT_KUBECONFIG``, ``SUREFOOT_KUBE_CONTEXT``, ...); an empty ``kubeconfig`` means the
    client's default (``$KUBECONFIG`` or ``~/.kube/config``), or the in-cluster service account
    when running in a pod.
    """

    namespace: str = ""  # "" = the kubeconfig context's namespace, else "default"
    service: str = "surefoot-llm"
    kubeconfig: str = ""
    kube_context: str = ""
    in_cluster: bool = False
    request_timeout: float = 10.0
    replica_port: int = 8012  # the queue-proxy port of a Knative pod
    drain_timeout: float = 120.0

    def validate(self) -> KubeSettings:
        errors = []
        if not self.service:
            errors.append("service: is required")
        if self.request_timeout <= 0:
            errors.append(f"request_timeout: must be positive, got {self.request_timeout}")
        if not 0 < self.replica_port < 65536:
            errors.append(f"replica_port: {self.replica_port} is not a TCP port")
        if self.drain_timeout < 0:
            errors.append(f"drain_timeout: must not be negative, got {self.drain_timeout}")
        if errors:
            raise KubeSettingsError("; ".join(errors))
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> KubeSettings:
        """Settings from ``SUREFOOT_<FIELD>`` variables, then ``overrides`` (those not None).
        Inside a pod (``KUBERNETES_SERVICE_HOST`` set, no kubeconfig) it uses the in-cluster
        service account. A variable that does not convert (a bool that is not
        1/true/yes/on or 0/false/no/off, a number that is not one) is an error naming it."""
        try:
            values = read_settings(cls, "SUREFOOT_", env, overrides)
        except EnvError as exc:
            raise KubeSettingsError(str(exc)) from None
        if (
            "in_cluster" not in values
            and not values.get("kubeconfig")
            and env.get("KUBERNETES_SERVICE_HOST")
            and not env.get("KUBECONFIG")
        ):
            values["in_cluster"] = True
        return replace(cls(), **values).validate()


def _in_cluster_namespace() -> str:
    try:
        with open(_SA_NAMESPACE) as f:
            return f.read().strip()
    except OSError:
        return ""


def _context_namespace(config: Any, settings: KubeSettings) -> str:
    path = settings.kubeconfig or None
    contexts, active = config.list_kube_config_contexts(config_file=path)
    if settings.kube_context:
        active = next((c for c in contexts if c["name"] == settings.kube_context), active)
    return str(((active or {}).get("context") or {}).get("namespace", ""))


def api_client_for(settings: KubeSettings) -> tuple[Any, str]:
    """A ``kubernetes.client.ApiClient`` and the namespace to use, from the settings."""
    from kubernetes import client
    from kubernetes import config as kube_config

    config: Any = kube_config  # untyped
    cfg = client.Configuration()
    namespace = settings.namespace
    try:
        if settings.in_cluster:
            config.load_incluster_config(client_configuration=cfg)
            namespace = namespace or _in_cluster_namespace()
        else:
            config.load_kube_config(
                config_file=settings.kubeconfig or None,
                context=settings.kube_context or None,
                client_configuration=cfg,
            )
            namespace = namespace or _context_namespace(config, settings)
    except (config.ConfigException, OSError, TypeError, ValueError) as exc:
        where = "in-cluster service account" if settings.in_cluster else (
            settings.kubeconfig or "the default kubeconfig"
        )
        raise PermanentPlatformError(
            f"cannot load Kubernetes credentials from {where}: {exc}"
        ) from exc
    return client.ApiClient(cfg), namespace or "default"
