"""The credentials of a rendered system: Redis passwords per user, the admin and internal
tokens, and the Redis ACL built from them.

Nothing on the cluster may write the breakers but the gateway and the functions, and nothing
but Surefoot's own pods may reach Redis at all (the NetworkPolicy is in ``_cluster``). The
render therefore makes one Secret (or references one the operator made) and every component
takes its password or token from it by ``secretKeyRef``; a Redis URL carries its password
through Kubernetes' ``$(VAR)`` expansion of an earlier variable, so no credential is written
into a pod spec. The values are random unless given: re-rendering into the same folder, or
re-deploying, keeps the ones already there (``from_objects``), so running pods keep working.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from knative.manifests._config import RenderConfig
from knative.manifests._objects import Obj, meta

# Secret key -> what holds it
KEYS = {
    "redis-gateway-password": "the gateway's Redis user",
    "redis-functions-password": "the functions' Redis user",
    "redis-replica-password": "the replicas' (read-only) Redis user",
    "admin-token": "the replicas' and the functions host's admin endpoints",
    "gateway-admin-token": "the gateway's admin endpoints",
    "internal-token": "the gateway's stream resumes on the replicas",
}
PASSWORD_VAR = "SUREFOOT_REDIS_PASSWORD"  # pod-local: only to expand into the Redis URL
BREAKER_KEYS = "surefoot:breaker:*"
ALL_KEYS = "surefoot:*"


@dataclass(frozen=True)
class SecretValues:
    """One value per key of :data:`KEYS` (the field names are the keys with ``_``)."""

    redis_gateway_password: str
    redis_functions_password: str
    redis_replica_password: str
    admin_token: str
    gateway_admin_token: str
    internal_token: str

    @classmethod
    def generate(cls) -> SecretValues:
        """Fresh random values: 32 hex digits each (safe inside a URL as they are)."""
        return cls(**{f.name: secrets.token_hex(16) for f in fields(cls)})

    @classmethod
    def from_objects(cls, objects: list[Obj], name: str) -> SecretValues | None:
        """The values of the Secret ``name`` among ``objects`` (rendered YAML read back, or the
        live Secret), when it holds every key; else None."""
        for obj in objects:
            if obj.get("kind") == "Secret" and obj.get("metadata", {}).get("name") == name:
                values = _decoded(obj)
                if all(values.get(k) for k in KEYS):
                    return cls(**{k.replace("-", "_"): values[k] for k in KEYS})
        return None

    def data(self) -> dict[str, str]:
        return {k: getattr(self, k.replace("-", "_")) for k in KEYS}


def _decoded(obj: Obj) -> dict[str, str]:
    out = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()
           if isinstance(v, str)}
    out.update({k: str(v) for k, v in (obj.get("stringData") or {}).items()})
    return out


def secret_object(c: RenderConfig, values: SecretValues) -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": meta(c, c.secret_name, "credentials"), "stringData": values.data()}


def secret_values_object(obj: Obj, values: SecretValues) -> Obj:
    """The rendered Secret ``obj`` holding ``values`` instead."""
    return {**obj, "stringData": values.data()}


def secret_env(c: RenderConfig, name: str, key: str) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": c.secret_name, "key": key}}}


def redis_env(c: RenderConfig, user: str) -> list[Obj]:
    """``SUREFOOT_REDIS_URL`` for ``user`` (gateway, functions or replica): with the rendered
    Redis, its password from the Secret expanded into the URL; an external Redis's URL as
    given, or from the Secret key ``redis_url_secret`` names."""
    if c.redis_url_secret:
        secret, key = c.redis_url_secret.split("/", 1)
        return [{"name": "SUREFOOT_REDIS_URL",
                 "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]
    if c.redis_url:
        return [{"name": "SUREFOOT_REDIS_URL", "value": c.redis_url}]
    host = f"{c.name}-redis.{c.namespace}.svc.cluster.local:6379"
    return [secret_env(c, PASSWORD_VAR, f"redis-{user}-password"),
            {"name": "SUREFOOT_REDIS_URL", "value": f"redis://{user}:$({PASSWORD_VAR})@{host}/0"}]


# The ACL: no default user; a probe that may only PING; the replicas read the breakers; the
# gateway reads and writes them; the functions own every Surefoot key (breakers and their
# event claims). Administrative and dangerous commands are nobody's.
_ACL_RULES = {
    "replica": f"~{BREAKER_KEYS} &{BREAKER_KEYS} -@all +@read +@connection +@pubsub "
               "+evalsha +eval +script|load -@dangerous",
    "gateway": f"~{BREAKER_KEYS} &{BREAKER_KEYS} +@all -@admin -@dangerous",
    "functions": f"~{ALL_KEYS} &{ALL_KEYS} +@all -@admin -@dangerous",
}
ACL_USERS = tuple(_ACL_RULES)
ACL_FILE = "/tmp/users.acl"


def acl_script(data_dir: str = "/data", acl_file: str = ACL_FILE) -> str:
    """The shell that writes the ACL file from the passwords in the environment (each user's
    in ``REDIS_<USER>_PASSWORD``), then starts Redis on it with append-only persistence in
    ``data_dir``. ``printf '%s'`` writes each line as it is, whatever a password holds."""
    lines = ["user default off", "user probe on nopass -@all +ping"]
    lines += [f"user {u} on >${{REDIS_{u.upper()}_PASSWORD}} resetchannels {r}"
              for u, r in _ACL_RULES.items()]
    quoted = " ".join(f'"{line}"' for line in lines)
    return (f"umask 077 && printf '%s\\n' {quoted} > {acl_file} && exec redis-server "
            f"--aclfile {acl_file} --appendonly yes --appendfsync everysec --dir {data_dir}")


def acl_env(c: RenderConfig) -> list[Obj]:
    return [secret_env(c, f"REDIS_{u.upper()}_PASSWORD", f"redis-{u}-password")
            for u in ACL_USERS]


def read_secret_file(path: Path, name: str) -> SecretValues | None:
    """The values of the Secret ``name`` in a rendered file (``secrets.yaml`` of an earlier
    render), so that rendering again keeps them; None when there is none to read."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError):
        return None
    return SecretValues.from_objects(docs, name)
