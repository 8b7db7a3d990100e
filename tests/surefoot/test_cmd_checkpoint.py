"""``surefoot checkpoint ...`` through ``surefoot.cli.main``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import safetensors.numpy
import torch

from checkpoint_store import CheckpointStore, FilesystemBackend
from surefoot.cli import main


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SUREFOOT_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("SUREFOOT_CHECKPOINT_KEEP", raising=False)
    monkeypatch.delenv("SUREFOOT_CHECKPOINT_SHA256", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    tensors = tmp_path / "t.safetensors"
    safetensors.numpy.save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(tensors))
    state = tmp_path / "state.json"
    state.write_text('{"tokens": 42}')
    blob = tmp_path / "llama.state"
    blob.write_bytes(b"\x00\x01state")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" * 100)
    return {"tensors": tensors, "state": state, "blob": blob, "model": model}


def snapshot(capsys, d: Path, inputs: dict[str, Path], revision: str = "r1") -> str:
    code, out, err = run(
        capsys,
        "checkpoint",
        "snapshot",
        "--dir",
        str(d),
        "--json",
        "--model-id",
        "gemma",
        "--revision",
        revision,
        "--tensors",
        str(inputs["tensors"]),
        "--state",
        str(inputs["state"]),
        "--blob",
        f"llama={inputs['blob']}",
        "--model-file",
        f"model.gguf={inputs['model']}",
    )
    assert code == 0, err
    return json.loads(out)["id"]


def test_full_cycle(capsys, tmp_path: Path, inputs: dict[str, Path]) -> None:
    d = tmp_path / "ckpt"
    first = snapshot(capsys, d, inputs)
    second = snapshot(capsys, d, inputs, revision="r2")

    code, out, _ = run(capsys, "checkpoint", "list", "--dir", str(d), "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [second, first]
    assert rows[0]["revision"] == "r2"
    assert rows[0]["blobs"] == 4
    code, out, _ = run(capsys, "checkpoint", "list", "--dir", str(d))
    assert code == 0
    assert first in out
    assert "gemma" in out

    code, out, _ = run(capsys, "checkpoint", "show", first, "--dir", str(d), "--json")
    body = json.loads(out)
    assert body["id"] == first
    assert {b["kind"] for b in body["blobs"]} == {
        "tensors",
        "state",
        "blob",
        "model_file",
    }
    code, out, _ = run(capsys, "checkpoint", "show", "latest", "--dir", str(d))
    assert code == 0
    assert second in out
    assert "xxh3_128=" in out

    code, out, _ = run(capsys, "checkpoint", "verify", "--dir", str(d), "--json")
    assert code == 0
    assert all(r["ok"] for r in json.loads(out))

    code, out, _ = run(capsys, "checkpoint", "restore", first, "--dir", str(d), "--json")
    body = json.loads(out)
    assert code == 0
    assert body["tensors"] == {"w": {"dtype": "torch.float32", "shape": [2, 3]}}
    assert body["state_keys"] == ["tokens"]
    assert body["blobs"] == {"llama": 7}
    code, out, _ = run(capsys, "checkpoint", "restore", "latest", "--dir", str(d))
    assert code == 0
    assert "would restore" in out

    to = tmp_path / "restored"
    code, out, _ = run(capsys, "checkpoint", "restore", first, "--dir", str(d), "--to", str(to))
    assert code == 0
    assert (to / "model_files" / "model.gguf").read_bytes() == inputs["model"].read_bytes()
    assert (to / "blobs" / "llama").read_bytes() == b"\x00\x01state"
    np.testing.assert_array_equal(
        safetensors.numpy.load_file(str(to / "tensors.safetensors"))["w"],
        np.arange(6, dtype=np.float32).reshape(2, 3),
    )

    dest = tmp_path / "backup"
    code, out, _ = run(capsys, "checkpoint", "backup", str(dest), "--dir", str(d), "--json")
    assert code == 0
    assert json.loads(out)["id"] == second
    assert CheckpointStore(FilesystemBackend(dest)).verify(second).ok

    code, out, _ = run(capsys, "checkpoint", "prune", "--keep", "1", "--dir", str(d), "--json")
    assert code == 0
    assert json.loads(out)["removed"] == [first]
    code, out, _ = run(capsys, "checkpoint", "list", "--dir", str(d), "--json")
    assert [r["id"] for r in json.loads(out)] == [second]


def test_default_dir_from_env(capsys, tmp_path: Path, inputs, monkeypatch) -> None:
    monkeypatch.setenv("SUREFOOT_CHECKPOINT_DIR", str(tmp_path / "fromenv"))
    cid = snapshot(capsys, tmp_path / "fromenv", inputs)
    code, out, _ = run(capsys, "checkpoint", "list", "--json")
    assert code == 0
    assert [r["id"] for r in json.loads(out)] == [cid]
    monkeypatch.delenv("SUREFOOT_CHECKPOINT_DIR")
    code, out, _ = run(capsys, "checkpoint", "snapshot", "--model-id", "m", "--revision", "r")
    assert code == 0
    assert (tmp_path / "cache" / "surefoot" / "checkpoints" / "checkpoints").is_dir()


def test_verify_reports_corruption_exit_1(capsys, tmp_path: Path, inputs) -> None:
    d = tmp_path / "ckpt"
    cid = snapshot(capsys, d, inputs)
    target = d / "checkpoints" / cid / "state.json"
    assert target.read_bytes() == b'{"tokens":42}'
    target.write_bytes(b'{"tokens":43}')  # same length, one byte changed
    code, out, _ = run(capsys, "checkpoint", "verify", cid, "--dir", str(d))
    assert code == 1
    assert "BAD" in out
    assert "state state.json: xxh3-128 mismatch" in out
    code, out, err = run(capsys, "checkpoint", "restore", cid, "--dir", str(d))
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "corrupt" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["checkpoint", "show", "20990101T000000.000000Z-000000000000"], "no checkpoint"),
        (["checkpoint", "restore", "nonsense"], "no checkpoint"),
        (["checkpoint", "verify", "../../etc/passwd"], "no checkpoint"),
        (["checkpoint", "restore", "latest"], "no checkpoints"),
        (["checkpoint", "prune", "--keep", "0"], "--keep"),
        (["checkpoint", "snapshot"], "--replica"),
        (["checkpoint", "snapshot", "--model-id", "m"], "--revision"),
        (["checkpoint", "snapshot", "--replica", "ftp://x"], "http"),
        (["checkpoint", "snapshot", "--replica", "http://x", "--model-id", "m"], "combine"),
        (
            ["checkpoint", "snapshot", "--model-id", "m", "--revision", "r", "--blob", "x"],
            "NAME=FILE",
        ),
        (
            [
                "checkpoint",
                "snapshot",
                "--model-id",
                "m",
                "--revision",
                "r",
                "--blob",
                "../x=/etc/hostname",
            ],
            "../x",
        ),
        (
            [
                "checkpoint",
                "snapshot",
                "--model-id",
                "m",
                "--revision",
                "r",
                "--model-file",
                "m=/nope",
            ],
            "/nope",
        ),
        (
            [
                "checkpoint",
                "snapshot",
                "--model-id",
                "m",
                "--revision",
                "r",
                "--tensors",
                "/nope.pt",
            ],
            "no such file",
        ),
        (["checkpoint"], "subcommand"),
    ],
)
def test_bad_input_exit_2_one_line(capsys, tmp_path: Path, argv: list[str], needle: str) -> None:
    d = tmp_path / "ckpt"
    FilesystemBackend(d)
    if len(argv) > 1:
        argv = [*argv, "--dir", str(d)]
    code, _, err = run(capsys, *argv)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("surefoot checkpoint:")
    assert needle in last
    assert "Traceback" not in err


def test_bad_dir_exit_2(capsys, tmp_path: Path) -> None:
    for cmd in (
        ["list"],
        ["verify"],
        ["prune"],
        ["show", "latest"],
        ["backup", str(tmp_path / "b")],
    ):
        code, _, err = run(capsys, "checkpoint", *cmd, "--dir", str(tmp_path / "missing"))
        assert code == 2
        assert "does not exist" in err
        assert len(err.strip().splitlines()) == 1
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run(capsys, "checkpoint", "list", "--dir", str(f))
    assert code == 2
    assert "not a directory" in err


def test_bad_files_exit_2(capsys, tmp_path: Path) -> None:
    d = ["--dir", str(tmp_path / "ckpt"), "--model-id", "m", "--revision", "r"]
    (tmp_path / "s.json").write_text("[1, 2")
    code, _, err = run(capsys, "checkpoint", "snapshot", *d, "--state", str(tmp_path / "s.json"))
    assert code == 2
    assert "not JSON" in err
    (tmp_path / "l.json").write_text("[1, 2]")
    code, _, err = run(capsys, "checkpoint", "snapshot", *d, "--state", str(tmp_path / "l.json"))
    assert code == 2
    assert "JSON object" in err
    (tmp_path / "bad.safetensors").write_bytes(b"garbage!" * 4)
    code, _, err = run(
        capsys, "checkpoint", "snapshot", *d, "--tensors", str(tmp_path / "bad.safetensors")
    )
    assert code == 2
    assert "not a safetensors file" in err


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_legacy_pt_via_cli(capsys, tmp_path: Path, monkeypatch) -> None:
    d = ["--dir", str(tmp_path / "ckpt"), "--model-id", "m", "--revision", "r"]
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(2), "epoch": 3}, good)
    code, out, err = run(capsys, "checkpoint", "snapshot", *d, "--tensors", str(good), "--json")
    assert code == 0, err
    restored = CheckpointStore(FilesystemBackend(tmp_path / "ckpt")).restore_latest()
    assert restored is not None
    assert restored.state["values"] == {"epoch": 3}
    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _Evil()}, evil)
    code, out, err = run(capsys, "checkpoint", "snapshot", *d, "--tensors", str(evil))
    assert code == 2
    assert "weights_only" in err
    assert "pwned" not in out


def test_bad_env_exit_2(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SUREFOOT_CHECKPOINT_KEEP", "zero")
    code, _, err = run(capsys, "checkpoint", "list", "--dir", str(tmp_path))
    assert code == 2
    assert "SUREFOOT_CHECKPOINT_KEEP" in err


class _Replica(BaseHTTPRequestHandler):
    status = 200
    body = b'{"id": "20260101T000000.000000Z-abcdefabcdef", "seconds": 0.25}'
    calls: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        type(self).calls.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def replica() -> Iterator[tuple[str, type[_Replica]]]:
    handler = type("Handler", (_Replica,), {"calls": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_snapshot_via_replica(capsys, replica) -> None:
    url, handler = replica
    code, out, err = run(capsys, "checkpoint", "snapshot", "--replica", url + "/", "--json")
    assert code == 0, err
    assert json.loads(out) == {"id": "20260101T000000.000000Z-abcdefabcdef", "seconds": 0.25}
    assert handler.calls == ["/admin/snapshot"]
    code, out, _ = run(capsys, "checkpoint", "snapshot", "--replica", url)
    assert code == 0
    assert "in 0.250 s" in out


def test_snapshot_via_replica_failures(capsys, replica, free_port: int) -> None:
    url, handler = replica
    handler.status = 503
    handler.body = b'{"error": "snapshot already running"}'
    code, _, err = run(capsys, "checkpoint", "snapshot", "--replica", url)
    assert code == 1
    assert "503" in err
    assert "already running" in err
    handler.status = 200
    handler.body = b"<html>"
    code, _, err = run(capsys, "checkpoint", "snapshot", "--replica", url)
    assert code == 1
    assert "without a checkpoint id" in err
    code, _, err = run(
        capsys,
        "checkpoint",
        "snapshot",
        "--replica",
        f"http://127.0.0.1:{free_port}",
        "--timeout",
        "5",
    )
    assert code == 1
    assert "cannot reach" in err
    assert len(err.strip().splitlines()) == 1
