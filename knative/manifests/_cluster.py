"""The objects both shapes stand on: the namespace, the credentials, Redis (unless the config
names one) behind its ACL and NetworkPolicy, the checkpoint volume claim, the
``config-features`` flags Knative's pod specs need, and the least-privilege RBAC of every
component."""

from __future__ import annotations

from knative.manifests._config import RenderConfig
from knative.manifests._objects import (
    PART_OF,
    Files,
    Obj,
    core_service,
    meta,
    resources,
    role,
    rule,
    service_account,
)
from knative.manifests._secrets import SecretValues, acl_env, acl_script, secret_object

# the pods that reach Redis, by their surefoot.dev/role (replicas are primary or fallback)
REDIS_ROLES = ("gateway", "functions", "primary", "fallback")


def _redis(c: RenderConfig) -> list[Obj]:
    """Redis with an ACL (no default user; the passwords from the Secret), append-only
    persistence on a volume of its own, and a NetworkPolicy that admits only Surefoot's
    gateway, functions and replicas."""
    name = f"{c.name}-redis"
    labels = {"app.kubernetes.io/name": name, PART_OF: c.name}
    container = {
        "name": "redis",
        "image": "redis:7-alpine",
        "command": ["sh", "-c", acl_script("/data")],
        "env": acl_env(c),
        "ports": [{"name": "redis", "containerPort": 6379}],
        "readinessProbe": {"exec": {"command": [
            "sh", "-c", "redis-cli --user probe --pass probe --no-auth-warning ping | "
            "grep -q PONG"]}, "periodSeconds": 5},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": resources("100m", "128Mi", "512Mi"),
        "securityContext": {"runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 1000,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(c, name, "redis"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one writer of the append-only file
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"automountServiceAccountToken": False,
                         "securityContext": {"fsGroup": 1000},
                         "containers": [container],
                         "volumes": [{"name": "data", "persistentVolumeClaim": {
                             "claimName": f"{name}-data"}}]},
            },
        },
    }
    claim: Obj = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": meta(c, f"{name}-data", "redis"),
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": c.redis_size}}},
    }
    if c.redis_storage_class:
        claim["spec"]["storageClassName"] = c.redis_storage_class
    service = core_service(c, name, "redis", {
        "selector": labels, "ports": [{"name": "redis", "port": 6379, "targetPort": 6379}],
    })
    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": meta(c, name, "redis"),
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [
                    {"podSelector": {"matchExpressions": [
                        {"key": "surefoot.dev/role", "operator": "In",
                         "values": list(REDIS_ROLES)},
                        {"key": PART_OF, "operator": "In", "values": [c.name]}]}},
                    # the plain-Kubernetes gateway's pods, labelled by name
                    {"podSelector": {"matchLabels": {
                        "app.kubernetes.io/name": f"{c.name}-gateway", PART_OF: c.name}}},
                ],
                "ports": [{"protocol": "TCP", "port": 6379}],
            }],
        },
    }
    return [claim, deployment, service, policy]


def _checkpoint_claim(c: RenderConfig) -> Obj:
    pvc: Obj = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(c, f"{c.name}-checkpoints", "checkpoints"),
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": {"requests": {"storage": c.checkpoint_size}},
        },
    }
    if c.checkpoint_storage_class:
        pvc["spec"]["storageClassName"] = c.checkpoint_storage_class
    return pvc


def common(c: RenderConfig, values: SecretValues | None) -> Files:
    """Namespace, the credentials (unless ``c.secret`` names the operator's own), Redis and
    the checkpoint claim, as files in apply order."""
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": meta(c, c.namespace, "namespace", namespaced=False)}
    files: Files = [("namespace.yaml", [namespace])]
    if not c.secret:
        files.append(("secrets.yaml", [secret_object(c, values or SecretValues.generate())]))
    if c.runs_redis:
        files.append(("redis.yaml", _redis(c)))
    if c.checkpoint_volume == "pvc":
        files.append(("checkpoints.yaml", [_checkpoint_claim(c)]))
    return files


def config_features(c: RenderConfig) -> Obj:
    """Knative Serving's feature flags for what our pod specs use."""
    flags = {"kubernetes.podspec-affinity": "enabled", "kubernetes.podspec-fieldref": "enabled"}
    if c.gpus or c.fallback_gpus:
        flags["kubernetes.podspec-tolerations"] = "enabled"
    if c.checkpoint_volume == "emptydir":
        # on by default upstream, not everywhere
        flags["kubernetes.podspec-volumes-emptydir"] = "enabled"
    if c.checkpoint_volume == "pvc":
        flags["kubernetes.podspec-persistent-volume-claim"] = "enabled"
        flags["kubernetes.podspec-persistent-volume-write"] = "enabled"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "config-features", "namespace": "knative-serving"},
        "data": flags,
    }


def knative_rbac(c: RenderConfig, gpu: bool) -> list[Obj]:
    """Least privilege per component on the Knative shape."""
    out: list[Obj] = [
        service_account(c, "replica", automount=False),
        service_account(c, "gateway", automount=True),
        service_account(c, "functions", automount=True),
        service_account(c, "sources", automount=True),
    ]
    out += role(c, "gateway", [
        rule(["serving.knative.dev"], ["services", "routes", "revisions"],
             ["get", "list", "watch"]),
        rule([""], ["pods"], ["get", "list", "watch"]),
    ])
    out += role(c, "functions", [
        rule(["serving.knative.dev"], ["services", "routes"], ["get", "patch"]),
        rule(["serving.knative.dev"], ["revisions"], ["get", "list", "patch"]),
        # the durable home of the operator's forced breakers: this one ConfigMap, made by
        # the functions on their first write (create cannot be limited to a name)
        {**rule([""], ["configmaps"], ["get", "update"]),
         "resourceNames": [f"{c.llm}-forced-breakers"]},
        rule([""], ["configmaps"], ["create"]),
    ])
    out += role(c, "functions", [
        rule([""], ["nodes"], ["get", "list", "patch"]),
        rule([""], ["pods"], ["get", "list"]),
        rule([""], ["pods/eviction"], ["create"]),
    ], cluster=True)
    out += role(c, "sources", [rule([""], ["pods", "nodes"], ["get", "list", "watch"])],
                cluster=True)
    if gpu:
        out.append(service_account(c, "gpu-source", automount=False))
    return out


def kubernetes_rbac(c: RenderConfig) -> list[Obj]:
    out = [service_account(c, "replica", automount=False),
           service_account(c, "gateway", automount=True)]
    return out + role(c, "gateway", [rule([""], ["pods"], ["get", "list", "watch"])])
