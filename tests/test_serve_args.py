"""`builder serve` / `builder pxe` port options: a bad value or a busy port is a clear error, exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def builder(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--port", "99999", "argument --port: 99999 is not a port number (1-65535)"),
    ("--port", "0", "argument --port: 0 is not a port number (1-65535)"),
    ("--port", "-1", "argument --port: -1 is not a port number (1-65535)"),
    ("--port", "http", "argument --port: 'http' is not a port number (1-65535)"),
])
def test_bad_serve_port_is_a_usage_error(option: str, value: str, says: str, tmp_path: Path) -> None:
    served = tmp_path / "dir"
    served.mkdir()
    proc = builder("serve", str(served), option, value, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == f"builder serve: error: {says}"
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir"]  # nothing written


def test_bad_pxe_http_port_is_a_usage_error(tmp_path: Path) -> None:
    proc = builder("pxe", "--out", str(tmp_path / "out"), "--http-port", "65536", cwd=tmp_path)
    assert proc.returncode == 2
    said = "builder pxe: error: argument --http-port: 65536 is not a port number (1-65535)"
    assert proc.stderr.splitlines()[-1] == said
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = builder("serve", str(tmp_path), "--port", str(port), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == f"builder: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in proc.stderr
