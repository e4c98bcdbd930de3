"""A regular (non-editable) install works from any folder: templates, default model, keys, Packer
template and the test bed's data are package data, and everything `builder verify` runs is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout installed (not editable)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"  # build from a copy: the checkout stays clean (no build/ or egg-info)
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "artifacts", "*.egg-info", "build",
                                                              "__pycache__", ".pytest_cache", ".ruff_cache"))
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                 str(work / "dist"), str(src)], work)
    assert proc.returncode == 0, proc.stderr
    wheels = list((work / "dist").glob("prometheus_builder-*.whl"))
    assert len(wheels) == 1
    venv = work / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], work).returncode == 0
    proc = _run([str(venv / "bin" / "pip"), "install", "-q", str(wheels[0])], work)
    if proc.returncode != 0 and "No matching distribution" in proc.stderr + proc.stdout:
        pytest.skip(f"PyPI not reachable for the wheel's dependencies: {proc.stderr.strip()[-300:]}")
    assert proc.returncode == 0, proc.stderr
    return venv


def test_wheel_renders_and_validates_from_another_folder(installed_wheel: Path, tmp_path: Path,
                                                        schema_dir: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    builder = str(installed_wheel / "bin" / "builder")
    proc = _run([builder, "render", "--out", "out"], elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "out" / "prometheus" / "first-boot" / "user-data").read_text().startswith("#cloud-config\n")
    proc = _run([builder, "validate", "--schema-dir", str(schema_dir)], elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "upstream schemas (autoinstall, cloud-config)  passed" in proc.stdout
    # the module really came from the venv, not from this checkout
    proc = _run([str(installed_wheel / "bin" / "python"), "-c", "import builder; print(builder.__file__)"], elsewhere)
    assert str(installed_wheel) in proc.stdout


def test_wheel_ships_packer_template_test_bed_data_and_ssh_audit(installed_wheel: Path, tmp_path: Path) -> None:
    py = str(installed_wheel / "bin" / "python")
    code = ("from builder.resources import resource; "
            "print(resource('packer', 'prometheus.pkr.hcl').is_file(),"
            " resource('hosts', 'keys', 'docker.asc').is_file(),"
            " resource('testbed', 'standin-iso', 'init').is_file(), resource('cloud-init', 'files').is_dir())")
    proc = _run([py, "-c", code], tmp_path)
    assert proc.stdout.split() == ["True", "True", "True", "True"], proc.stderr
    assert (installed_wheel / "bin" / "ssh-audit").is_file()
    assert _run([str(installed_wheel / "bin" / "ssh-audit"), "--help"], tmp_path).returncode in (0, 1)
