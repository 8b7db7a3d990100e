"""The rendered Redis's access rules, run for real: the container's own start script (the ACL
written from the Secret's passwords) on a real redis-server, then each component's user doing
what it does and refused what it must not. Also: the credentials survive a re-render and a
re-deploy, and the objects carry them only by reference."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from knative.breakers import BreakerRegistrySettings, BreakerStore, EmbeddedRedis
from knative.manifests import SecretValues, all_objects, config_from_mapping, render

VALUES = SecretValues.generate()


def _objects(**kw: Any) -> list[dict[str, Any]]:
    return all_objects(render(config_from_mapping({"model": "m", **kw}), VALUES))


def _find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The rendered Redis container's command, run here: its script, its env from the Secret."""
    container = _find(_objects(), "Deployment", "surefoot-redis")["spec"]["template"]["spec"][
        "containers"][0]
    data = tmp_path_factory.mktemp("redis")
    script = container["command"][2].replace("/tmp/users.acl", str(data / "users.acl")).replace(
        "--dir /data", f"--dir {data}")
    bin_dir = Path(EmbeddedRedis().command()[0]).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for e in container["env"]:
        env[e["name"]] = VALUES.data()[e["valueFrom"]["secretKeyRef"]["key"]]
    port = _free_port()
    proc = subprocess.Popen(["sh", "-c", f"{script} --port {port} --bind 127.0.0.1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis(port=port, username="probe", password="x").ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the rendered Redis did not start") from None
            time.sleep(0.05)
    yield port
    proc.kill()
    proc.wait(10)


def _url(port: int, user: str) -> str:
    return f"redis://{user}:{VALUES.data()[f'redis-{user}-password']}@127.0.0.1:{port}/0"


def _store(port: int, user: str) -> BreakerStore:
    return BreakerStore.from_url(BreakerRegistrySettings(redis_url=_url(port, user)))


def test_no_default_user_and_the_probe_only_pings(acl_redis: int) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis).get("surefoot:breaker:x")
    probe = redis.Redis(port=acl_redis, username="probe", password="anything")
    assert probe.ping()
    with pytest.raises(redis.exceptions.NoPermissionError):
        probe.get("surefoot:breaker:x")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=acl_redis, username="gateway", password="wrong").ping()


def test_gateway_writes_breakers_replica_only_reads_them(acl_redis: int) -> None:
    gateway = _store(acl_redis, "gateway")
    gateway.force_open("revision:r1", "test")
    assert gateway.status("revision:r1").state == "forced_open"
    replica = _store(acl_redis, "replica")
    assert replica.status("revision:r1").state == "forced_open"
    with pytest.raises(Exception, match=r"(?i)noperm|permission|can't run this command"):
        replica.act("revision:r1", "force_closed", "a replica may not")
    assert gateway.status("revision:r1").state == "forced_open"
    pubsub = redis.Redis.from_url(_url(acl_redis, "replica")).pubsub()
    pubsub.subscribe(gateway.channel)  # a replica follows the transitions
    pubsub.close()


def test_no_one_may_flush_or_reconfigure(acl_redis: int) -> None:
    for user in ("gateway", "functions", "replica"):
        client = redis.Redis.from_url(_url(acl_redis, user))
        for command in (("FLUSHALL",), ("CONFIG", "GET", "dir"), ("ACL", "LIST"),
                        ("KEYS", "*"), ("SET", "other:key", "1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    functions = redis.Redis.from_url(_url(acl_redis, "functions"))
    assert functions.set("surefoot:fn:claim", "1")  # the functions' event claims
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(_url(acl_redis, "gateway")).set("surefoot:fn:claim", "1")


def test_rendered_redis_is_persistent_and_fenced() -> None:
    objects = _objects()
    deployment = _find(objects, "Deployment", "surefoot-redis")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--appendonly yes" in pod["containers"][0]["command"][2]
    claim = pod["volumes"][0]["persistentVolumeClaim"]["claimName"]
    assert _find(objects, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == [
        "ReadWriteOnce"]
    policy = _find(objects, "NetworkPolicy", "surefoot-redis")
    assert policy["spec"]["podSelector"]["matchLabels"] == deployment["spec"]["selector"][
        "matchLabels"]
    roles = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]
    # every pod that talks to Redis carries one of the admitted roles
    for obj in objects:
        spec = obj.get("spec", {}).get("template", {})
        for c in spec.get("spec", {}).get("containers", []):
            if any(e["name"] == "SUREFOOT_REDIS_URL" for e in c.get("env", [])):
                labels = spec["metadata"]["labels"]
                assert labels.get("surefoot.dev/role") in roles["values"] or labels.get(
                    "app.kubernetes.io/name") == "surefoot-gateway", obj["metadata"]["name"]


def test_credentials_only_by_reference() -> None:
    objects = _objects()
    text = yaml.safe_dump_all([o for o in objects if o["kind"] != "Secret"])
    for value in VALUES.data().values():
        assert value not in text
    secret = _find(objects, "Secret", "surefoot-secrets")
    assert SecretValues.from_objects([secret], "surefoot-secrets") == VALUES
    # the operator's own Secret: referenced, not rendered
    own = _objects(secret="ops-credentials")
    assert not [o for o in own if o["kind"] == "Secret"]
    assert "ops-credentials" in yaml.safe_dump_all(own)


def test_external_redis_url_from_a_secret() -> None:
    objects = _objects(redis_url_secret="managed-redis/url")
    assert not [o for o in objects if "redis" in o["metadata"]["name"]]
    gateway = _find(objects, "Service", "surefoot-gateway")
    env = {e["name"]: e for e in gateway["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SUREFOOT_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "managed-redis", "key": "url"}


@pytest.mark.parametrize(("raw", "field"), [
    ({"redis_url_secret": "no-key"}, "redis_url_secret"),
    ({"redis_url_secret": "a/b", "redis_url": "redis://x"}, "redis_url_secret"),
    ({"secret": "Bad_Name"}, "secret"),
    ({"redis_size": "lots"}, "redis_size"),
])
def test_bad_credential_fields_are_named(raw: dict[str, Any], field: str) -> None:
    from knative.manifests import RenderConfigError

    with pytest.raises(RenderConfigError) as info:
        config_from_mapping({"model": "m", **raw})
    assert any(e.startswith(f"{field}:") for e in info.value.errors)
