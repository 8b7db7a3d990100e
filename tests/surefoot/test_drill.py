"""`surefoot drill` end to end on the local platform: real replicas, gateway, broker,
functions and Redis; a short run (well under three minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.fixture
def isolated_env(tmp_path):
    # no `surefoot up` of the machine's user is found: the drill starts its own system
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_short_drill_keeps_continuity_and_writes_its_report(tmp_path, isolated_env):
    out = tmp_path / "drill"
    proc = subprocess.run(
        [sys.executable, "-m", "surefoot", "drill", "--rate", "4", "--duration", "6",
         "--no-embeddings", "--out", str(out)],
        env=isolated_env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["continuity"] == {"failed": 0, "total": report["requests"]["total"],
                                    "pass": True}
    assert report["requests"]["total"] >= 40
    delete = report["phases"]["pod_delete"]
    assert delete["failed"] == 0
    assert delete["replacement"]
    assert delete["recovery_s"] > 0
    evict = report["phases"]["node_evict"]
    assert evict["replacement"]
    assert evict["replacement_node"] != evict["node"]
    phases = evict["phases_s"]
    assert 0 <= phases["scheduled"] <= phases["process_started"] <= phases["ready"]
    assert phases["checkpoint_restored"] is not None  # came back from a checkpoint
    assert phases["first_token"] >= phases["ready"]
    gpu = report["phases"]["gpu_fault"]
    for signal in ("breaker_opened_ms", "gateway_stopped_routing_ms", "node_quarantined_ms"):
        assert gpu.get(signal) is not None, (signal, gpu, proc.stdout[-3000:])
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "PASS  continuity" in proc.stdout


def test_drill_rejects_bad_flags_with_one_line(isolated_env):
    for flags, words in ((["--faults", "meteor"], "unknown meteor"),
                         (["--rate", "0"], "--rate"),
                         (["--duration", "0"], "--duration"),
                         (["--streams", "-1"], "--streams"),
                         (["--hold", "0"], "--hold"),
                         (["--max-tokens", "0"], "--max-tokens")):
        proc = subprocess.run([sys.executable, "-m", "surefoot", "drill", *flags],
                              env=isolated_env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr
        assert "Traceback" not in proc.stderr


def test_drill_attaching_to_a_missing_system_says_so(tmp_path, isolated_env):
    proc = subprocess.run(
        [sys.executable, "-m", "surefoot", "drill", "--state-dir", str(tmp_path / "none")],
        env=isolated_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "no running `surefoot up`" in proc.stderr


def test_drill_abrupt_and_compound_phases(tmp_path, isolated_env):
    """SIGKILL and SIGSTOP of a replica under concurrent streams, then faults piled up without
    repair: no stream broken, no request failed while some replica was ready."""
    out = tmp_path / "drill"
    proc = subprocess.run(
        [sys.executable, "-m", "surefoot", "drill", "--rate", "3", "--duration", "3",
         "--no-embeddings", "--faults", "replica_kill,replica_freeze,compound", "--hold", "4",
         "--out", str(out)],
        env=isolated_env, capture_output=True, text=True, timeout=400)
    report = json.loads((out / "report.json").read_text())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    kill, freeze = report["phases"]["replica_kill"], report["phases"]["replica_freeze"]
    assert kill["victim"]
    assert kill["broken"] == 0
    assert freeze["victim"]
    assert freeze["broken"] == 0
    assert {"resumed_broken", "resumed_stalled", "resumed_first_event"} <= set(freeze)
    assert "stalled, " in proc.stdout
    assert " before a first event" in proc.stdout
    compound = report["phases"]["compound"]
    assert [s["step"] for s in compound["steps"]] == [
        "gpu_fault_fallback_node", "evict_primary_node", "gpu_fault_primary_node",
        "kill_replica"]
    assert all("skipped" not in s["did"] for s in compound["steps"])
    assert compound["failed_while_ready"] == 0
    assert all(s["capacity"] for s in compound["steps"])
    assert "PASS  compound: 0 failed while a replica was ready" in proc.stdout
