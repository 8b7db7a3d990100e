"""The tree's contract: which package may import which, public names only across packages,
and the size limits the code keeps.

Read from the source with ``ast`` (imports inside functions included), so a lazy import cannot
slip past, and checked on every test run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("envreader", "events", "checkpoint_store", "knative", "functions", "surefoot")

# unit -> the units it may import (besides itself). A unit is a top-level package, or a
# sub-package of ``knative`` (its sub-packages are units of their own).
ALLOWED: dict[str, set[str]] = {
    "envreader": set(),
    "events": {"envreader"},
    "checkpoint_store": {"envreader"},
    "knative": {"knative.platforms"},
    "knative.platforms": set(),
    "knative.platforms.kube": {"envreader", "knative.platforms"},
    "knative.platforms.local": {"envreader", "events", "checkpoint_store", "knative.platforms"},
    "knative.breakers": {"envreader", "events"},
    "knative.serving": {"envreader", "checkpoint_store", "knative.breakers"},
    "knative.gateway": {"envreader", "events", "knative", "knative.platforms",
                        "knative.breakers"},
    "knative.manifests": {"envreader", "events", "functions", "knative", "knative.platforms",
                          "knative.platforms.kube", "knative.serving"},
    "functions": {"envreader", "events", "checkpoint_store", "knative", "knative.platforms",
                  "knative.breakers", "knative.platforms.kube", "knative.platforms.local"},
    "surefoot": {"*"},
}
UNITS = sorted(ALLOWED, key=len, reverse=True)

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _unit(module: str) -> str | None:
    for unit in UNITS:
        if module == unit or module.startswith(unit + "."):
            return unit
    return None


def _modules() -> list[tuple[str, Path]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out.append((".".join(parts), path))
    return out


def _imports(module: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import of ours in the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            found.append((node.lineno, target, [a.name for a in node.names]))
    return [f for f in found if f[1].split(".")[0] in PACKAGES]


def _violations(modules: list[tuple[str, Path]]) -> list[str]:
    problems = []
    for module, path in modules:
        mine = _unit(module)
        assert mine is not None, f"{module}: not in any unit of the contract"
        for line, target, names in _imports(module, path):
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
            where = f"{shown}:{line}"
            theirs = _unit(target)
            if theirs is None:
                problems.append(f"{where}: {target} is in no unit of the contract")
                continue
            if theirs != mine and "*" not in ALLOWED[mine] and theirs not in ALLOWED[mine]:
                problems.append(f"{where}: {mine} may not import {theirs} ({target})")
            if theirs != mine:
                rest = target[len(theirs):].lstrip(".").split(".") if target != theirs else []
                private = [p for p in rest if p.startswith("_")]
                private += [n for n in names if n.startswith("_") and n != "__version__"]
                if private:
                    problems.append(f"{where}: private name of {theirs}: {target} {names}")
    return problems


def test_imports_follow_the_layers_and_use_public_names_only() -> None:
    assert _violations(_modules()) == []


def test_the_contract_catches_an_upward_or_private_import(tmp_path: Path) -> None:
    bad = tmp_path / "m.py"
    bad.write_text(
        "from functions import Thing\n"
        "def lazy():\n    from knative.gateway._gateway import X\n"
        "from knative.breakers import _private\n"
        "from knative.breakers._states import OPEN\n"
    )
    problems = _violations([("knative.breakers._m", bad)])
    assert len(problems) == 3
    assert "knative.breakers may not import functions" in problems[0]
    assert "knative.breakers may not import knative.gateway" in problems[1]
    assert "private name of knative.gateway" in problems[2]
    problems = _violations([("surefoot._m", bad)])
    assert sorted(p.split(": ", 1)[1].split(":")[0] for p in problems) == [
        "private name of knative.breakers", "private name of knative.breakers",
        "private name of knative.gateway"]


def test_no_module_or_function_over_the_size_limits() -> None:
    problems = []
    for _, path in _modules():
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            problems.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    problems.append(f"{rel}:{node.lineno} {node.name}: {size} lines")
    assert problems == []


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("knative.gateway", ("torch", "knative.serving", "sentence_transformers")),
        ("knative.breakers", ("torch", "knative.serving", "kubernetes")),
        ("knative", ("torch", "kubernetes", "flask", "redis")),
        ("functions", ("torch", "knative.serving")),
    ],
)
def test_a_process_pays_only_for_what_it_imports(module: str, absent: tuple[str, ...]) -> None:
    code = (f"import sys, {module}\n"
            f"print(','.join(m for m in {absent!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
