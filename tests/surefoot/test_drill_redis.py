"""`surefoot drill --faults redis_kill`: Redis SIGKILLed with a node quarantined and the fallback
revision forced open; nothing routed to either, both states back, no request failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_drill_redis_phase(tmp_path: Path) -> None:
    out = tmp_path / "drill"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "surefoot", "drill", "--rate", "4", "--duration", "3",
         "--no-embeddings", "--faults", "redis_kill", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    r = report["phases"]["redis_kill"]
    assert r["requests"] > 0
    assert r["failed"] == 0
    assert r["routed_to_quarantined_node"] == 0
    assert r["routed_to_forced_open_revision"] == 0
    assert r["redis_back_with_states_ms"] is not None
    assert "PASS  redis kill: 0 requests to the quarantined node or forced-open revision" in (
        proc.stdout)
