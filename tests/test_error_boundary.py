"""Bad environment variables and options: exit 2, the variable or option named, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CASES = [
    # (id, env, argv builder (tmp -> argv), text the error must contain)
    ("sde-render", {"SOURCE_DATE_EPOCH": "abc"}, lambda t: ["render", "--out", str(t / "out")], "SOURCE_DATE_EPOCH"),
    ("sde-negative", {"SOURCE_DATE_EPOCH": "-5"}, lambda t: ["render", "--out", str(t / "out")], "SOURCE_DATE_EPOCH"),
    ("sde-standin-iso", {"SOURCE_DATE_EPOCH": "abc"}, lambda t: ["standin", "iso", "--out", str(t / "out" / "s.iso")],
     "SOURCE_DATE_EPOCH"),
    ("boot-timeout-env", {"BUILDER_BOOT_TIMEOUT": "abc"}, lambda t: ["verify", "--out", str(t / "out")],
     "BUILDER_BOOT_TIMEOUT"),
    ("vm-cpus-env", {"BUILDER_VM_CPUS": "0"}, lambda t: ["render", "--out", str(t / "out")], "BUILDER_VM_CPUS"),
    ("accel-env", {"BUILDER_ACCEL": "warp"}, lambda t: ["render", "--out", str(t / "out")], "BUILDER_ACCEL"),
    ("serve-port", {}, lambda t: ["serve", str(t), "--port", "99999"], "--port"),
    ("serve-port-text", {}, lambda t: ["serve", str(t), "--port", "http"], "--port"),
    ("pxe-http-port", {}, lambda t: ["pxe", "--out", str(t / "out"), "--http-port", "0"], "--http-port"),
    ("boot-timeout-opt", {}, lambda t: ["verify", "--out", str(t / "out"), "--boot-timeout", "-1"], "--boot-timeout"),
    ("packer-timeout-opt", {}, lambda t: ["packer", "--out", str(t / "out"), "--packer-timeout", "soon"],
     "--packer-timeout"),
    ("standin-pad", {}, lambda t: ["standin", "iso", "--out", str(t / "out" / "s.iso"), "--pad-mib", "-3"],
     "--pad-mib"),
]


@pytest.mark.parametrize(("env", "argv", "needle"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_environment_or_option_is_a_clear_error(tmp_path: Path, env: dict[str, str], argv, needle: str) -> None:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("SOURCE_DATE_EPOCH", "BUILDER_"))}
    full_env.update(env)
    full_env["BUILDER_CACHE"] = str(tmp_path / "cache")
    proc = subprocess.run([sys.executable, "-m", "builder", *argv(tmp_path)], capture_output=True, text=True,
                          env=full_env, cwd=tmp_path, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "out").exists()


def test_non_utf8_password_file_is_a_model_error_with_its_line(write_model, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from builder.cli import main
    from tests.conftest import default_model_data

    data = default_model_data()
    secret = tmp_path / "hosts" / "secret.bin"
    secret.write_bytes(b"\xff\xfe not utf-8")
    data["users"][0]["password_file"] = "secret.bin"
    model = write_model(data)
    assert main(["render", "--host", str(model), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    line = next(i for i, t in enumerate(model.read_text().splitlines(), 1) if "password_file" in t)
    assert f"{model}:{line}: users[0].password_file: secret file is not UTF-8 text" in err
    assert not (tmp_path / "out").exists()
