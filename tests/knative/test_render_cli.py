"""``surefoot render``, ``deploy`` and ``traffic`` end to end: files written, a YAML stream,
bad input exiting 2 with one line and nothing written, and the cluster side against the fake
API server through a kubeconfig."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from knative.manifests import (
    SecretValues,
    all_objects,
    apply_objects,
    config_from_mapping,
    format_knative_status,
    knative_status,
    object_path,
    render,
)
from knative.platforms import NotFound, PermanentPlatformError
from knative.platforms.kube import KnativePlatform, KubeSettings
from surefoot.cli import main
from tests.kube_fake import FakeKubeServer
from tests.kube_fake._state import resource_named


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./surefoot.yaml unless a test writes one
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "SUREFOOT_NAMESPACE", "SUREFOOT_SERVICE"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- render
def test_render_writes_the_default_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "render", "--out", str(tmp_path / "out"))
    assert code == 0
    assert err == ""
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    kust = yaml.safe_load((tmp_path / "out/kustomization.yaml").read_text())
    assert sorted(kust["resources"] + ["kustomization.yaml"]) == files
    docs = [
        d
        for name in kust["resources"]
        for d in yaml.safe_load_all((tmp_path / "out" / name).read_text())
    ]
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    assert ("serving.knative.dev/v1", "Service") in kinds
    assert ("policy/v1", "PodDisruptionBudget") in kinds
    assert "wrote" in out


def test_render_to_stdout_is_one_stream(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "render")
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    config = config_from_mapping({"model": "gemma-3-270m"})
    # the credentials are random: the stream is the render with the values it drew
    values = SecretValues.from_objects(docs, config.secret_name)
    assert values is not None
    expected = all_objects(render(config, values))
    assert docs == expected


def test_render_reads_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "surefoot.yaml").write_text(
        "model: /models/llama.gguf\nnamespace: llm\ngpus: 2\ntraffic: {primary: 90, fallback: 10}\n"
    )
    code, out, _ = _run(capsys, "render", "--out", "-")  # ./surefoot.yaml by default
    assert code == 0
    docs = list(yaml.safe_load_all(out))
    route = next(d for d in docs if d["kind"] == "Route")
    ksvc = next(
        d for d in docs if d["kind"] == "Configuration" and d["metadata"]["name"] == "surefoot-llm"
    )
    assert ksvc["metadata"]["namespace"] == "llm"
    assert [t["percent"] for t in route["spec"]["traffic"]] == [90, 10]
    c = ksvc["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    code, out, _ = _run(capsys, "render", "-f", "surefoot.yaml", "--shape", "kubernetes")
    assert code == 0
    assert "kind: CronJob" in out
    assert "serving.knative.dev" not in out


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("namespace: x\n", "model"),
        ("model: m\nmin_scale: -1\n", "min_scale"),
        ("model: m\ngpus: one\n", "gpus"),
        ("model: m\ntraffic: {primary: 70, fallback: 20}\n", "traffic"),
        ("model: m\ntraffic: {primary: 70, fallback: 20\n", "not valid YAML"),
        ("- model\n", "config"),
        ("model: m\nmodle: n\n", "modle"),
    ],
)
def test_bad_config_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "render", "-f", str(cfg), "--out", str(out_dir))
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("surefoot render: ")
    assert field in err
    assert str(cfg) in err
    assert "Traceback" not in err
    assert not out_dir.exists()
    code, out, err = _run(capsys, "render", "-f", str(cfg))
    assert code == 2
    assert out == ""


def test_missing_config_file_and_bad_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "render", "-f", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "cannot read config file" in err
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(capsys, "render", "--out", str(tmp_path / "afile"))
    assert code == 2
    assert "not a directory" in err


# ---------------------------------------------------------------- deploy
@pytest.fixture
def kubeconfig(kube: FakeKubeServer, tmp_path: Path) -> str:
    return kube.write_kubeconfig(tmp_path / "kubeconfig")


def test_deploy_applies_every_object(
    kube: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.state.put_direct(
        resource_named("configmaps"),
        {
            "metadata": {"name": "config-features", "namespace": "knative-serving"},
            "data": {"_example": "keep me"},
        },
    )
    code, out, err = _run(capsys, "deploy", "--kubeconfig", kubeconfig)
    assert code == 0, err
    objects = all_objects(render(config_from_mapping({"model": "gemma-3-270m"})))
    assert f"{len(objects)} objects applied" in out
    applies = [r for r in kube.requests if r.method == "PATCH"]
    assert len(applies) == len(objects)
    assert all(r.content_type == "application/apply-patch+yaml" for r in applies)
    assert all(
        r.query["fieldManager"] == "surefoot" and r.query["fieldValidation"] == "Strict"
        for r in applies
    )
    ksvc = kube.get("routes.serving.knative.dev", "surefoot-llm", "surefoot")
    assert ksvc["spec"]["traffic"][0]["revisionName"] == "surefoot-llm-v1"
    flags = kube.get("configmaps", "config-features", "knative-serving")["data"]
    assert flags["_example"] == "keep me"
    assert flags["kubernetes.podspec-affinity"] == "enabled"
    assert kube.get("poddisruptionbudgets.policy", "surefoot-llm", "surefoot")
    # applying again changes nothing
    before = {k: o["metadata"]["resourceVersion"] for k, o in kube.state.objects.items()}
    code, out, _ = _run(capsys, "deploy", "--kubeconfig", kubeconfig)
    assert code == 0
    assert "configured" in out
    assert "created" not in out
    after = {k: o["metadata"]["resourceVersion"] for k, o in kube.state.objects.items()}
    assert after == before


def test_deploy_dry_run_stores_nothing(
    kube: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # as on a real server, a dry run cannot create the namespace its other objects need
    code, _, err = _run(capsys, "deploy", "--kubeconfig", kubeconfig, "--dry-run")
    assert code == 1
    assert 'namespaces "surefoot" not found' in err
    kube.ensure_namespace("surefoot")
    before = dict(kube.state.objects)
    code, out, _ = _run(
        capsys, "deploy", "--kubeconfig", kubeconfig, "--dry-run", "--shape", "kubernetes"
    )
    assert code == 0
    assert "dry run" in out
    assert kube.state.objects == before
    assert all(r.query.get("dryRun") == "All" for r in kube.requests if r.method == "PATCH")


def test_deploy_failure_exits_1_with_the_api_message(
    kube: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.fail_next(
        "/apis/rbac.authorization.k8s.io", 403, message='clusterroles is forbidden: User "dev"'
    )
    code, _out, err = _run(capsys, "deploy", "--kubeconfig", kubeconfig)
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "forbidden" in err
    assert "RBAC" in err
    assert "apply " in err


def test_deploy_with_bad_config_or_kubeconfig_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.yaml").write_text("model: m\nmax_scale: -4\n")
    code, _, err = _run(capsys, "deploy", "-f", str(tmp_path / "bad.yaml"))
    assert code == 2
    assert "max_scale" in err
    code, _, err = _run(capsys, "deploy", "--kubeconfig", str(tmp_path / "none"))
    assert code == 2
    assert "cannot load Kubernetes credentials" in err


def test_apply_objects_rejects_unknown_kinds(kube: FakeKubeServer) -> None:
    with pytest.raises(PermanentPlatformError, match="Widget"):
        apply_objects(
            kube.api_client(), [{"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "x"}}]
        )
    assert (
        object_path(
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "metadata": {"name": "a", "namespace": "n"},
            }
        )
        == "/apis/serving.knative.dev/v1/namespaces/n/services/a"
    )


def test_deployed_knative_objects_pass_the_fake_servers_schema_check(kube: FakeKubeServer) -> None:
    """The fake rejects (400) unknown fields under Strict and answers 422 on schema errors:
    a clean apply of every variant is a second, independent check of the manifests."""
    kube.ensure_namespace("surefoot")
    for raw in (
        {"model": "m"},
        {"model": "m", "gpus": 0, "checkpoint_volume": "pvc", "pod_source": "surefoot"},
    ):
        apply_objects(
            kube.api_client(), all_objects(render(config_from_mapping(raw))), dry_run=True
        )


# ---------------------------------------------------------------- traffic and status
@pytest.fixture
def deployed(
    kube: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> FakeKubeServer:
    assert _run(capsys, "deploy", "--kubeconfig", kubeconfig)[0] == 0
    kube.add_revision("surefoot-llm-v1", namespace="surefoot", configuration="surefoot-llm")
    kube.add_revision(
        "surefoot-llm-fallback-v1", namespace="surefoot", configuration="surefoot-llm-fallback"
    )
    return kube


def test_traffic_show_and_set(
    deployed: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--kubeconfig", kubeconfig, "--namespace", "surefoot", "--service", "surefoot-llm"]
    code, out, _ = _run(capsys, "traffic", *args)
    assert code == 0
    assert "primary" in out
    assert "surefoot-llm-fallback-v1" in out
    code, out, _ = _run(capsys, "traffic", "set", "primary=0", "fallback=100", *args, "--json")
    assert code == 0
    shown = json.loads(out)
    assert [(t["tag"], t["percent"]) for t in shown["traffic"]] == [
        ("primary", 0),
        ("fallback", 100),
    ]
    assert [(t["revision"], t["percent"]) for t in shown["traffic_status"]] == [
        ("surefoot-llm-v1", 0),
        ("surefoot-llm-fallback-v1", 100),
    ]
    spec = deployed.get("routes.serving.knative.dev", "surefoot-llm", "surefoot")["spec"][
        "traffic"
    ]
    assert [t["percent"] for t in spec] == [0, 100]
    code, _, _ = _run(capsys, "traffic", "set", "surefoot-llm-v1=100", "fallback=0", *args)
    assert code == 0


@pytest.mark.parametrize(
    ("words", "fragment"),
    [
        (["set", "primary=50"], "sum to 50"),
        (["set", "primary=x"], "not an integer"),
        (["set", "primary"], "NAME=PERCENT"),
        (["set", "primary=150", "fallback=-50"], "within 0..100"),
        (["set", "primary=50", "primary=50"], "given twice"),
        (["set"], "at least one"),
        (["move"], "unknown action"),
    ],
)
def test_traffic_bad_input_exits_2(
    deployed: FakeKubeServer,
    kubeconfig: str,
    capsys: pytest.CaptureFixture[str],
    words: list[str],
    fragment: str,
) -> None:
    before = deployed.get("routes.serving.knative.dev", "surefoot-llm", "surefoot")["metadata"][
        "resourceVersion"
    ]
    code, _out, err = _run(
        capsys, "traffic", *words, "--kubeconfig", kubeconfig, "--namespace", "surefoot"
    )
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1
    after = deployed.get("routes.serving.knative.dev", "surefoot-llm", "surefoot")["metadata"][
        "resourceVersion"
    ]
    assert after == before


def test_traffic_defaults_to_the_configs_namespace_and_service(
    deployed: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = _run(capsys, "traffic", "--kubeconfig", kubeconfig)
    assert code == 0, err
    assert "service surefoot/surefoot-llm" in out
    (tmp_path / "surefoot.yaml").write_text("model: m\nnamespace: elsewhere\n")
    code, _, err = _run(capsys, "traffic", "--kubeconfig", kubeconfig)
    assert code == 1
    assert "elsewhere/surefoot-llm" in err


def test_traffic_on_missing_service_exits_1(
    kube: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, "traffic", "--kubeconfig", kubeconfig, "--service", "ghost")
    assert code == 1
    assert "ghost" in err
    assert "404" in err


def test_knative_status(deployed: FakeKubeServer, kubeconfig: str) -> None:
    labels = {
        "serving.knative.dev/service": "surefoot-llm",
        "serving.knative.dev/revision": "surefoot-llm-v1",
    }
    deployed.add_node("gpu-1")
    deployed.add_pod("surefoot-llm-v1-a", namespace="surefoot", node="gpu-1", labels=labels)
    settings = KubeSettings(kubeconfig=kubeconfig, namespace="surefoot", service="surefoot-llm")
    status = knative_status(settings)
    assert status["ready"] is True
    assert status["url"]
    assert [t["tag"] for t in status["traffic"]] == ["primary", "fallback"]
    assert [r["name"] for r in status["replicas"]] == ["surefoot-llm-v1-a"]
    assert [n["name"] for n in status["nodes"]] == ["gpu-1"]
    json.dumps(status)  # serialisable for --json
    deployed.fail_next("/api/v1/nodes", 403)
    status = knative_status(settings)
    assert status["nodes"] == []
    assert "RBAC" in status["errors"][0]
    text = format_knative_status(status)
    assert "surefoot-llm-v1-a" in text
    assert "warning:" in text
    with pytest.raises(NotFound):
        knative_status(KubeSettings(kubeconfig=kubeconfig, namespace="surefoot", service="ghost"))


def test_knative_status_reports_missing_revision(deployed: FakeKubeServer, kubeconfig: str) -> None:
    platform = KnativePlatform.from_settings(
        KubeSettings(kubeconfig=kubeconfig, namespace="surefoot")
    )
    api = deployed.api_client()
    body: dict[str, Any] = {
        "spec": {"traffic": [{"revisionName": "surefoot-llm-v9", "percent": 100}]}
    }
    from kubernetes import client

    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        "serving.knative.dev", "v1", "surefoot", "routes", "surefoot-llm", body
    )
    status = knative_status(KubeSettings(namespace="surefoot", service="surefoot-llm"), platform)
    assert status["ready"] is False
    assert any(c.get("reason") == "RevisionMissing" for c in status["conditions"])
    assert "RevisionMissing" in format_knative_status(status)


def test_redeploy_keeps_the_live_split_unless_asked(
    deployed: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--kubeconfig", kubeconfig, "--namespace", "surefoot", "--service", "surefoot-llm"]
    assert _run(capsys, "traffic", "set", "primary=0", "fallback=100", *args)[0] == 0

    def split() -> list[int]:
        route = deployed.get("routes.serving.knative.dev", "surefoot-llm", "surefoot")
        return [t["percent"] for t in route["spec"]["traffic"]]

    assert _run(capsys, "deploy", "--kubeconfig", kubeconfig)[0] == 0
    assert split() == [0, 100]
    assert _run(capsys, "deploy", "--kubeconfig", kubeconfig, "--reset-traffic")[0] == 0
    assert split() == [100, 0]


def test_rendering_again_keeps_the_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"

    def values() -> SecretValues | None:
        docs = list(yaml.safe_load_all((out / "secrets.yaml").read_text()))
        return SecretValues.from_objects(docs, "surefoot-secrets")

    assert _run(capsys, "render", "--out", str(out))[0] == 0
    first = values()
    assert first is not None
    assert _run(capsys, "render", "--out", str(out))[0] == 0
    assert values() == first
    (out / "secrets.yaml").unlink()  # gone: fresh ones are drawn
    assert _run(capsys, "render", "--out", str(out))[0] == 0
    assert values() not in (None, first)


def test_redeploy_keeps_the_live_credentials(
    deployed: FakeKubeServer, kubeconfig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def live() -> dict[str, str]:
        secret = deployed.get("secrets", "surefoot-secrets", "surefoot")
        return dict(secret.get("stringData") or secret.get("data") or {})

    first = live()
    assert first
    assert _run(capsys, "deploy", "--kubeconfig", kubeconfig)[0] == 0
    assert live() == first
