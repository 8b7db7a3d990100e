"""The application objects around inference: the gateway and the functions host (Knative
Services, or a Deployment and Service on plain Kubernetes) and, on plain Kubernetes, the
CronJob that asks every primary replica for a checkpoint."""

from __future__ import annotations

from knative.manifests._config import RenderConfig
from knative.manifests._objects import (
    APP_PORT,
    PART_OF,
    Obj,
    core_service,
    deployment,
    env,
    http_probes,
    knative_service,
    meta,
    resources,
    secure_context,
)
from knative.manifests._secrets import redis_env, secret_env


def _app_template(
    c: RenderConfig, component: str, command: list[str], values: dict[str, str | None],
    min_scale: int, secret_envs: list[Obj],
) -> Obj:
    # No automountServiceAccountToken: Knative's field mask allows only ``false``; the token
    # comes from the ServiceAccount's own automount setting.
    return {
        "metadata": {
            "labels": {PART_OF: c.name, "surefoot.dev/role": component},
            "annotations": {"autoscaling.knative.dev/min-scale": str(min_scale)},
        },
        "spec": {
            "serviceAccountName": c.sa(component),
            "containers": [
                {
                    "name": component,
                    "image": c.images.app,
                    "imagePullPolicy": "IfNotPresent",
                    "command": command,
                    "ports": [{"name": "http1", "containerPort": APP_PORT}],
                    "env": [*secret_envs, *env({"SUREFOOT_PORT": str(APP_PORT), **values})],
                    **http_probes(APP_PORT),
                    "resources": resources("100m", "256Mi", "1Gi"),
                    "securityContext": secure_context(),
                }
            ],
        },
    }


def gateway_secrets(c: RenderConfig) -> list[Obj]:
    """The gateway's Redis URL and its two tokens, from the Secret."""
    return [*redis_env(c, "gateway"),
            secret_env(c, "SUREFOOT_GATEWAY_ADMIN_TOKEN", "gateway-admin-token"),
            secret_env(c, "SUREFOOT_GATEWAY_INTERNAL_TOKEN", "internal-token")]


def knative_gateway(c: RenderConfig) -> Obj:
    local = f"{c.llm}.{c.namespace}.svc.cluster.local"
    template = _app_template(
        c, "gateway", ["surefoot", "gateway"],
        {
            "SUREFOOT_PLATFORM": "knative",
            "SUREFOOT_NAMESPACE": c.namespace,
            "SUREFOOT_SERVICE": c.llm,
            "SUREFOOT_PRIMARY_URL": f"http://primary-{local}",
            "SUREFOOT_FALLBACK_URL": f"http://fallback-{local}",
        },
        c.gateway_min_scale, gateway_secrets(c),
    )
    template["spec"]["timeoutSeconds"] = c.timeout_seconds
    template["spec"]["responseStartTimeoutSeconds"] = c.response_start_timeout_seconds
    return knative_service(c, f"{c.name}-gateway", "gateway", template)


def knative_functions(c: RenderConfig) -> Obj:
    template = _app_template(
        c, "functions", ["surefoot", "functions"],
        {
            "SUREFOOT_PLATFORM": "knative",
            "SUREFOOT_NAMESPACE": c.namespace,
            "SUREFOOT_SERVICE": c.llm,
            "SUREFOOT_PRIMARY_REVISION": c.primary_revision,
            "SUREFOOT_FALLBACK_REVISION": c.fallback_revision,
            "SUREFOOT_FALLBACK_MIN_SCALE": str(c.fallback_min_scale),
            "SUREFOOT_FALLBACK_MAX_SCALE": str(c.fallback_max_scale),
            "SUREFOOT_FALLBACK_STANDBY": str(c.fallback_standby),
            "SUREFOOT_SINK": c.broker_url,
        },
        1, [*redis_env(c, "functions"), secret_env(c, "SUREFOOT_ADMIN_TOKEN", "admin-token")],
    )
    return knative_service(c, f"{c.name}-functions", "functions", template)


def kubernetes_gateway(c: RenderConfig) -> list[Obj]:
    labels = {"app.kubernetes.io/name": f"{c.name}-gateway", PART_OF: c.name}
    svc = f"{c.namespace}.svc.cluster.local:8080"
    container: Obj = {
        "name": "gateway",
        "image": c.images.app,
        "imagePullPolicy": "IfNotPresent",
        "command": ["surefoot", "gateway"],
        "ports": [{"name": "http", "containerPort": APP_PORT}],
        "env": [*gateway_secrets(c), *env(
            {
                "SUREFOOT_PORT": str(APP_PORT),
                "SUREFOOT_PLATFORM": "kubernetes",
                "SUREFOOT_NAMESPACE": c.namespace,
                "SUREFOOT_PRIMARY_URL": f"http://{c.llm}.{svc}",
                "SUREFOOT_FALLBACK_URL": f"http://{c.fallback_configuration}.{svc}",
            }
        )],
        **http_probes(APP_PORT),
        "resources": resources("100m", "256Mi", "1Gi"),
    }
    gateway = deployment(
        c, f"{c.name}-gateway", "gateway", labels, max(1, c.gateway_min_scale),
        {"serviceAccountName": c.sa("gateway"), "containers": [container]}, rolling=True,
    )
    service = core_service(c, f"{c.name}-gateway", "gateway", {
        "selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": APP_PORT}],
    })
    return [gateway, service]


_SNAPSHOT_SCRIPT = """\
import os, socket, sys, httpx
host, port = sys.argv[1], int(sys.argv[2])
headers = {"Authorization": "Bearer " + os.environ["SUREFOOT_ADMIN_TOKEN"]}
ips = sorted({a[4][0] for a in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})
failed = 0
for ip in ips:
    try:
        httpx.post(f"http://{ip}:{port}/admin/snapshot", headers=headers,
                   timeout=600).raise_for_status()
        print("snapshot ok", ip)
    except httpx.HTTPError as exc:
        failed += 1
        print("snapshot failed", ip, exc, file=sys.stderr)
sys.exit(1 if failed or not ips else 0)
"""


def checkpoint_cronjob(c: RenderConfig) -> Obj:
    container = {
        "name": "snapshot",
        "image": c.images.app,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", _SNAPSHOT_SCRIPT,
                    f"{c.llm}-pods.{c.namespace}.svc.cluster.local", "8080"],
        "env": [secret_env(c, "SUREFOOT_ADMIN_TOKEN", "admin-token")],
        "resources": resources("50m", "64Mi", "256Mi"),
    }
    pod = {
        "metadata": {"labels": {PART_OF: c.name, "surefoot.dev/role": "checkpoint"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [container],
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": meta(c, f"{c.name}-checkpoint", "checkpoints"),
        "spec": {
            "schedule": c.checkpoint_schedule,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 1,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "spec": {"backoffLimit": 1, "activeDeadlineSeconds": 900, "template": pod}
            },
        },
    }
