"""Knative's own admission and routing code (``serving-check``, ``eventing-check``, built from
Knative Serving v1.23 / Eventing v1.22 source) run over objects Surefoot writes.

Where the programs are: ``$SUREFOOT_KNATIVE_CHECK`` (a folder), else
``../shared/tools/knative-check`` beside the repository. Without them the tests that need them
are skipped with a reason saying where they were looked for, except under
``SUREFOOT_REQUIRE_KNATIVE_CHECK=1`` (CI), where a missing program fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO.parent / "shared" / "tools" / "knative-check"
PROGRAMS = ("serving-check", "eventing-check")


def tool_dir() -> Path:
    return Path(os.environ.get("SUREFOOT_KNATIVE_CHECK") or DEFAULT_DIR)


def program(name: str) -> Path:
    """The program's path; skips (or, when required, fails) the test if it is missing."""
    path = tool_dir() / name
    if path.is_file() and os.access(path, os.X_OK):
        return path
    reason = (
        f"Knative's checks: {name} is expected at {path} (set SUREFOOT_KNATIVE_CHECK to its "
        "folder; docs/knative.md, 'Tested without a cluster', says how to get them)"
    )
    if os.environ.get("SUREFOOT_REQUIRE_KNATIVE_CHECK") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def run(name: str, paths: list[Path]) -> dict[str, Any]:
    """The program's JSON report over ``paths`` (files or folders)."""
    done = subprocess.run(
        [str(program(name)), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode in (0, 1), f"{name} exit {done.returncode}: {done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def problems(report: dict[str, Any]) -> list[str]:
    """Every error and every webhook warning in a report, one line each."""
    out = []
    for f in report.get("findings") or []:
        where = f"{f.get('kind')}/{f.get('name')} ({f.get('origin') or 'input'}, {f.get('stage')})"
        out += [f"{where}: error: {e}" for e in f.get("errors") or []]
        out += [f"{where}: warning: {w}" for w in f.get("warnings") or []]
    return out


def summary(report: dict[str, Any]) -> str:
    return json.dumps({"checked": report.get("checked"), "rejected": report.get("rejected")})


def assert_accepted(paths: list[Path], *, serving_min: int = 1) -> dict[str, dict[str, Any]]:
    """Both programs accept everything in ``paths``, with no warning; the reports."""
    reports = {name: run(name, paths) for name in PROGRAMS}
    for name, report in reports.items():
        found = problems(report)
        assert found == [], f"{name}: {summary(report)}: " + " | ".join(found)
        assert report["rejected"] == 0
    assert reports["serving-check"]["checked"] >= serving_min
    return reports


def write_objects(path: Path, objects: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return path


def as_input(obj: dict[str, Any]) -> dict[str, Any]:
    """An object read back from an API server as a client would write it: no status, no
    server-set metadata."""
    meta = obj.get("metadata") or {}
    keep = {
        k: meta[k]
        for k in ("name", "namespace", "labels", "annotations", "ownerReferences")
        if meta.get(k)
    }
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": keep,
        "spec": obj.get("spec") or {},
    }
