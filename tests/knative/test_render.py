"""Rendered manifests are valid: Knative objects against the real CRD schemas (strict: unknown
fields rejected), core objects with kubernetes-validate in strict mode, traffic summing to 100;
and they say what the design needs (scale, anti-affinity, GPUs, probes, budgets, RBAC)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from knative.manifests import (
    FUNCTION_ROUTES,
    RenderConfig,
    RenderConfigError,
    all_objects,
    config_from_mapping,
    kustomization,
    render,
)
from tests.kube_fake import _schemas

# The oldest Kubernetes minor Knative 1.2x supports, and the newest schema shipped.
K8S_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
KNATIVE_GROUPS = ("serving.knative.dev", "eventing.knative.dev", "sources.knative.dev")

VARIANTS = {
    "default": {},
    "cpu-only": {"gpus": 0, "fallback_gpus": 0},
    "gpu-fallback-pvc": {
        "fallback_gpus": 1,
        "checkpoint_volume": "pvc",
        "checkpoint_storage_class": "nfs",
    },
    "external-redis": {"redis_url": "redis://redis.example:6379/0"},
    "own-pod-source": {"pod_source": "surefoot"},
    "kubernetes": {"shape": "kubernetes"},
    "kubernetes-pvc-cpu": {"shape": "kubernetes", "checkpoint_volume": "pvc", "gpus": 0},
    "standby": {"standby": 2, "fallback_standby": 1, "fallback_max_scale": 5, "gpu_budget": 5},
    "kubernetes-standby": {"shape": "kubernetes", "standby": 2, "fallback_standby": 1,
                           "fallback_max_scale": 0},
}


def _config(**kw: Any) -> RenderConfig:
    return config_from_mapping({"model": "gemma-3-270m", **kw})


def _objects(**kw: Any) -> list[dict[str, Any]]:
    return all_objects(render(_config(**kw)))


def _is_knative(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].split("/")[0] in KNATIVE_GROUPS


def _find(
    objects: list[dict[str, Any]], kind: str, name: str | None = None, api: str | None = None
) -> dict[str, Any]:
    hits = [
        o
        for o in objects
        if o["kind"] == kind
        and (name is None or o["metadata"]["name"] == name)
        and (api is None or o["apiVersion"] == api)
    ]
    assert len(hits) == 1, f"{kind} {name}: {len(hits)} found"
    return hits[0]


# ---------------------------------------------------------------- validity
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_knative_objects_pass_the_crd_schemas_strictly(variant: str) -> None:
    knative = [o for o in _objects(**VARIANTS[variant]) if _is_knative(o)]
    if VARIANTS[variant].get("shape") == "kubernetes":
        assert knative == []
        return
    assert {o["kind"] for o in knative} >= {
        "Service",
        "Configuration",
        "Broker",
        "Trigger",
        "PingSource",
    }
    for obj in knative:
        assert _schemas.has_schema(obj["apiVersion"], obj["kind"]), obj["kind"]
        unknown, invalid = _schemas.schema_errors(obj)
        assert (unknown, invalid) == ([], []), f"{obj['kind']} {obj['metadata']['name']}"


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_core_objects_pass_kubernetes_validate_strict(variant: str) -> None:
    core = [o for o in _objects(**VARIANTS[variant]) if not _is_knative(o)]
    assert core
    for obj in core:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_strict_checks_do_catch_mistakes() -> None:
    """Guards against a validator that accepts anything."""
    ksvc = _find(_objects(), "Route", "surefoot-llm")
    odd = {**ksvc, "spec": {**ksvc["spec"], "trafic": []}}
    assert _schemas.schema_errors(odd)[0] == ["spec.trafic"]
    typo = {**ksvc, "spec": {**ksvc["spec"], "traffic": [{"revisionName": "x", "percent": "100"}]}}
    assert _schemas.schema_errors(typo)[1]
    dep = _find(_objects(), "Deployment", "surefoot-redis")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {**dep, "spec": {**dep["spec"], "replica": 1}}, K8S_VERSIONS[0], strict=True
        )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_names_are_unique_and_namespaced(variant: str) -> None:
    config = _config(**VARIANTS[variant])
    objects = all_objects(render(config))
    keys = [
        (o["apiVersion"], o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"])
        for o in objects
    ]
    assert len(keys) == len(set(keys))
    for obj in objects:
        name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace")
        assert len(name) <= 63
        if obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert ns is None
        elif obj["kind"] == "ConfigMap" and name == "config-features":
            assert ns == "knative-serving"
        else:
            assert ns == config.namespace, obj["kind"]


def test_traffic_sums_to_100_and_names_both_revisions() -> None:
    for split in ({"primary": 100, "fallback": 0}, {"primary": 30, "fallback": 70}):
        ksvc = _find(_objects(traffic=split), "Route", "surefoot-llm")
        traffic = ksvc["spec"]["traffic"]
        assert sum(t["percent"] for t in traffic) == 100
        assert [(t["revisionName"], t["tag"], t["percent"]) for t in traffic] == [
            ("surefoot-llm-v1", "primary", split["primary"]),
            ("surefoot-llm-fallback-v1", "fallback", split["fallback"]),
        ]


def test_kustomization_lists_every_file() -> None:
    files = render(_config())
    assert kustomization(files)["resources"] == [name for name, _ in files]
    assert len({name for name, _ in files}) == len(files)


# ---------------------------------------------------------------- what the objects say
def test_inference_service_shape() -> None:
    objects = _objects()
    ksvc = _find(objects, "Configuration", "surefoot-llm")
    # rollout-duration has no effect on pinned revision targets: it is not rendered
    assert "annotations" not in ksvc["metadata"]
    route = _find(objects, "Route", "surefoot-llm")
    assert [t["revisionName"] for t in route["spec"]["traffic"]] == [
        "surefoot-llm-v1",
        "surefoot-llm-fallback-v1",
    ]
    tmpl = ksvc["spec"]["template"]
    assert tmpl["metadata"]["name"] == "surefoot-llm-v1"  # our own revision name
    ann = tmpl["metadata"]["annotations"]
    # 3 replicas serve and 1 warm standby: a lost pod leaves 3 ready while it is replaced
    assert ann["autoscaling.knative.dev/min-scale"] == "4"
    assert ann["surefoot.dev/standby"] == "1"
    assert ann["autoscaling.knative.dev/max-scale"] == "6"
    assert ann["autoscaling.knative.dev/target"] == "4"
    spec = tmpl["spec"]
    assert spec["containerConcurrency"] == 8
    assert spec["timeoutSeconds"] == 300
    assert spec["responseStartTimeoutSeconds"] == 120
    (term,) = spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == {
        "serving.knative.dev/revision": "surefoot-llm-v1"
    }
    (c,) = spec["containers"]
    assert c["command"] == ["surefoot", "serve"]
    assert c["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["SUREFOOT_MODEL"] == "gemma-3-270m"
    assert env["SUREFOOT_REVISION"] == "surefoot-llm-v1"
    assert env["SUREFOOT_NODE"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["SUREFOOT_N_GPU_LAYERS"] == "-1"
    fallback = _find(objects, "Configuration", "surefoot-llm-fallback")
    ftmpl = fallback["spec"]["template"]
    assert ftmpl["metadata"]["name"] == "surefoot-llm-fallback-v1"
    assert ftmpl["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] == "1"
    assert "nvidia.com/gpu" not in ftmpl["spec"]["containers"][0]["resources"]["limits"]


def test_config_features_enable_what_the_pod_specs_use() -> None:
    flags = _find(_objects(), "ConfigMap", "config-features")["data"]
    assert flags["kubernetes.podspec-affinity"] == "enabled"
    assert flags["kubernetes.podspec-fieldref"] == "enabled"
    assert flags["kubernetes.podspec-tolerations"] == "enabled"
    assert flags["kubernetes.podspec-volumes-emptydir"] == "enabled"
    assert "kubernetes.podspec-persistent-volume-claim" not in flags
    flags = _find(_objects(gpus=0, checkpoint_volume="pvc"), "ConfigMap", "config-features")["data"]
    assert "kubernetes.podspec-tolerations" not in flags
    assert flags["kubernetes.podspec-persistent-volume-claim"] == "enabled"
    assert flags["kubernetes.podspec-persistent-volume-write"] == "enabled"


def test_cpu_only_has_no_gpu_limits_or_gpu_source() -> None:
    objects = _objects(gpus=0)
    ksvc = _find(objects, "Configuration", "surefoot-llm")
    assert (
        "nvidia.com/gpu"
        not in ksvc["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    assert not [o for o in objects if o["kind"] == "DaemonSet"]


def test_budget_selects_the_primary_pods() -> None:
    pdb = _find(_objects(), "PodDisruptionBudget", "surefoot-llm")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"serving.knative.dev/revision": "surefoot-llm-v1"}},
    }


def test_eventing_delivery_and_routes() -> None:
    objects = _objects()
    broker = _find(objects, "Broker", "surefoot")
    delivery = broker["spec"]["delivery"]
    assert delivery["retry"] == 5
    assert delivery["backoffPolicy"] == "exponential"
    assert delivery["backoffDelay"] == "PT0.5S"
    assert delivery["deadLetterSink"] == {
        "ref": {
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "name": "surefoot-functions",
        },
        "uri": "/dead-letter",
    }
    triggers = [o for o in objects if o["kind"] == "Trigger"]
    routed = {
        (t["spec"]["subscriber"].get("uri", "/"), t["spec"]["filter"]["attributes"]["type"])
        for t in triggers
    }
    assert routed == {(p, t) for p, ts in FUNCTION_ROUTES.items() for t in ts}
    assert all(
        t["spec"]["broker"] == "surefoot" and t["spec"]["delivery"] == delivery for t in triggers
    )
    ping = _find(objects, "PingSource", "surefoot-checkpoint-timer")
    assert ping["spec"]["schedule"] == "*/5 * * * *"
    api = _find(objects, "ApiServerSource", "surefoot-lifecycle")
    assert [r["kind"] for r in api["spec"]["resources"]] == ["Pod", "Node"]
    assert api["spec"]["serviceAccountName"] == "surefoot-sources"
    gpu = _find(objects, "DaemonSet", "surefoot-gpu-source")
    assert gpu["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "surefoot",
        "source",
        "gpu",
    ]


def test_routed_event_types_exist_in_the_catalog() -> None:
    import events._catalog as catalog

    known = {
        v.TYPE
        for v in vars(catalog).values()
        if isinstance(v, type) and isinstance(getattr(v, "TYPE", None), str)
    }
    ours = {t for ts in FUNCTION_ROUTES.values() for t in ts if t.startswith("dev.surefoot.")}
    assert ours <= known, ours - known


def _rules(objects: list[dict[str, Any]], kind: str, name: str) -> set[tuple[str, str, str]]:
    role = _find(objects, kind, name)
    return {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_rbac_is_least_privilege_per_component() -> None:
    objects = _objects()
    functions = _rules(objects, "Role", "surefoot-functions") | _rules(
        objects, "ClusterRole", "surefoot-surefoot-functions"
    )
    assert ("serving.knative.dev", "services", "patch") in functions
    assert ("", "pods/eviction", "create") in functions
    assert ("", "nodes", "patch") in functions
    assert ("", "pods", "list") in functions
    assert not {v for _, _, v in functions} & {
        "delete",
        "deletecollection",
        "*",
        "escalate",
        "bind",
    }
    gateway = _rules(objects, "Role", "surefoot-gateway")
    assert {v for _, _, v in gateway} == {"get", "list", "watch"}
    sources = _rules(objects, "ClusterRole", "surefoot-surefoot-sources")
    assert sources == {("", r, v) for r in ("pods", "nodes") for v in ("get", "list", "watch")}
    bindings = {o["metadata"]["name"]: o for o in objects if o["kind"].endswith("Binding")}
    for b in bindings.values():
        (subject,) = b["subjects"]
        assert subject["kind"] == "ServiceAccount"
        assert subject["namespace"] == "surefoot"
    replica_sa = _find(objects, "ServiceAccount", "surefoot-replica")
    assert replica_sa["automountServiceAccountToken"] is False


def test_components_run_the_right_commands() -> None:
    objects = _objects(pod_source="surefoot")
    gateway = _find(objects, "Service", "surefoot-gateway", "serving.knative.dev/v1")
    assert gateway["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "surefoot",
        "gateway",
    ]
    functions = _find(objects, "Service", "surefoot-functions", "serving.knative.dev/v1")
    assert functions["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "surefoot",
        "functions",
    ]
    assert functions["spec"]["template"]["spec"]["serviceAccountName"] == "surefoot-functions"
    pods = _find(objects, "Deployment", "surefoot-pod-source")
    assert pods["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "surefoot",
        "source",
        "pods",
    ]


def test_external_redis_is_referenced_not_deployed() -> None:
    objects = _objects(redis_url="rediss://cache.example:6380/1")
    assert not [o for o in objects if "redis" in o["metadata"]["name"]]
    ksvc = _find(objects, "Configuration", "surefoot-llm")
    env = {
        e["name"]: e.get("value") for e in ksvc["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["SUREFOOT_REDIS_URL"] == "rediss://cache.example:6380/1"


def test_kubernetes_shape() -> None:
    objects = _objects(shape="kubernetes")
    dep = _find(objects, "Deployment", "surefoot-llm")
    assert dep["spec"]["replicas"] == 4  # 3 replicas and 1 standby
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    (term,) = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["labelSelector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    cron = _find(objects, "CronJob", "surefoot-checkpoint")
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pdb = _find(objects, "PodDisruptionBudget", "surefoot-llm")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    assert _find(objects, "Deployment", "surefoot-llm-fallback")["spec"]["replicas"] == 1


def test_snapshot_script_in_the_cronjob_compiles() -> None:
    cron = _find(_objects(shape="kubernetes"), "CronJob", "surefoot-checkpoint")
    cmd = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["python", "-c"]
    compile(cmd[2], "<cronjob>", "exec")


# ---------------------------------------------------------------- bad config
@pytest.mark.parametrize(
    ("raw", "fields"),
    [
        ({}, ["model"]),
        ({"model": "  "}, ["model"]),
        ({"model": "m", "min_scale": -1}, ["min_scale"]),
        ({"model": "m", "fallback_max_scale": -2}, ["fallback_max_scale"]),
        ({"model": "m", "gpus": "one"}, ["gpus"]),
        ({"model": "m", "gpus": True}, ["gpus"]),
        ({"model": "m", "gpus": 1.5}, ["gpus"]),
        ({"model": "m", "traffic": {"primary": 60, "fallback": 30}}, ["traffic"]),
        (
            {"model": "m", "traffic": {"primary": 150, "fallback": -50}},
            ["traffic.primary", "traffic.fallback"],
        ),
        ({"model": "m", "traffic": {"primary": "all"}}, ["traffic.primary"]),
        ({"model": "m", "traffic": {"canary": 10}}, ["traffic.canary"]),
        ({"model": "m", "max_scale": 2}, ["max_scale"]),
        ({"model": "m", "modle": "x"}, ["modle"]),
        ({"model": "m", "name": "Bad_Name"}, ["name"]),
        ({"model": "m", "shape": "nomad"}, ["shape"]),
        ({"model": "m", "replica_memory": "lots"}, ["replica_memory"]),
        ({"model": "m", "images": {"replica": ""}}, ["images.replica"]),
        ({"model": "m", "images": "x"}, ["images"]),
        ({"model": "m", "rollout_duration": "2 minutes"}, ["rollout_duration"]),
        ({"model": "m", "checkpoint_schedule": "hourly"}, ["checkpoint_schedule"]),
        ({"model": "m", "redis_url": "http://x"}, ["redis_url"]),
        ({"model": "m", "response_start_timeout_seconds": 900}, ["response_start_timeout_seconds"]),
        ({"model": "m", "name": "a" * 40, "revision": "b" * 20}, ["revision"]),
        (["model"], ["config"]),
        (
            {"gpus": "one", "min_scale": -3, "traffic": {"primary": 50, "fallback": 0}},
            ["gpus", "min_scale", "traffic", "model"],
        ),
    ],
)
def test_bad_config_names_every_bad_field(raw: Any, fields: list[str]) -> None:
    with pytest.raises(RenderConfigError) as err:
        config_from_mapping(raw)
    reported = [e.split(":")[0] for e in err.value.errors]
    assert sorted(set(reported)) == sorted(fields), err.value.errors
    assert all(f in str(err.value) for f in fields)


# ---------------------------------------------------------------- what Knative's webhook needs
def _knative_pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in objects
        if o["apiVersion"] == "serving.knative.dev/v1" and o["kind"] in ("Service", "Configuration")
    ]


@pytest.mark.parametrize("variant", sorted(v for v in VARIANTS if "kubernetes" not in v))
def test_knative_pod_specs_pass_the_field_mask_and_are_secure(variant: str) -> None:
    specs = _knative_pod_specs(_objects(**VARIANTS[variant]))
    assert len(specs) == 4  # two inference Configurations, the gateway, the functions
    for name, spec in specs:
        assert spec.get("automountServiceAccountToken") in (None, False), name
        for c in spec["containers"]:
            assert c["securityContext"] == {
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            }, name


def test_the_route_names_revisions_of_two_configurations() -> None:
    objects = _objects()
    assert not [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "surefoot-llm"
    ]
    route = _find(objects, "Route", "surefoot-llm")
    for t in route["spec"]["traffic"]:
        owner = next(
            o
            for o in objects
            if o["kind"] == "Configuration"
            and o["spec"]["template"]["metadata"]["name"] == t["revisionName"]
        )
        assert t["revisionName"].startswith(owner["metadata"]["name"] + "-")


def test_functions_get_the_fallbacks_scale_bounds() -> None:
    ksvc = _find(
        _objects(fallback_min_scale=2, fallback_max_scale=5), "Service", "surefoot-functions"
    )
    env = {
        e["name"]: e.get("value") for e in ksvc["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert (env["SUREFOOT_FALLBACK_MIN_SCALE"], env["SUREFOOT_FALLBACK_MAX_SCALE"]) == ("2", "5")
    from functions import FunctionSettings

    s = FunctionSettings.from_env({k: v for k, v in env.items() if v is not None})
    assert (s.fallback_min_scale, s.fallback_max_scale) == (2, 5)
