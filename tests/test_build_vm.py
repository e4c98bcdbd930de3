"""`builder build --base <stand-in> --allow-standin` under TCG, every stage end to end:
validate, render, iso, pxe, packer, verify (about 3.5 min on an idle 2-core machine).

This run is also the Packer must-show: `packer validate` + `packer build` of packer/prometheus.pkr.hcl
against the remastered stand-in ISO (no boot command; the stand-in initrd prints and powers off),
producing the disk images and the logs (Packer boot: 20-50 s); its verify stage boots the first-boot
seed on the stand-in system and runs the whole check catalog (1.5-3 min).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.cli import main
from builder.media.fetch import cache_dir
from builder.store import sha256_file
from builder.testbed.standin_iso import cached_standin_iso

TOOLS = ("packer", "qemu-system-x86_64", "qemu-img", "xorriso", "grub-mknetdir")
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason=f"needs {', '.join(TOOLS)} (scripts/install-deps)"),
]


@dataclass(frozen=True)
class Built:
    rc: int
    out: Path
    text: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One `builder build` run shared by the tests below (its exit code is checked by a test, not here)."""
    base = cached_standin_iso(cache_dir())
    out = tmp_path_factory.mktemp("build") / "artifacts"
    argv = ["build", "--base", str(base), "--allow-standin", "--out", str(out)]
    started = time.monotonic()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    text = buf.getvalue()
    print(f"\nbuilder build (stand-in): exit {rc} after {time.monotonic() - started:.0f}s"
          f"{text.split('Stages:')[-1][:700]}")
    return Built(rc, out, text)


def test_packer_built_disks_and_logs_from_the_standin(built: Built) -> None:
    build = built.out / "prometheus" / "packer" / "build"
    assert build.is_dir(), built.text[-6000:]
    disks = sorted(p.name for p in (build / "images").iterdir())
    assert disks == ["prometheus", "prometheus-1"]
    info = subprocess.run(["qemu-img", "info", "--output=json", str(build / "images" / "prometheus")],
                          capture_output=True, check=True)
    assert json.loads(info.stdout)["format"] == "qcow2"
    serial = (build / "serial.log").read_text(errors="replace")
    assert "autoinstall" in serial and "ds=nocloud;s=/cdrom/nocloud/" in serial
    assert "powering off" in serial
    assert "qemu-system-x86_64" in (build / "packer.log").read_text()


def test_stages_pass_and_the_summary_lists_every_artifact(built: Built) -> None:
    assert built.rc == 0, built.text[-6000:]
    host = built.out / "prometheus"
    summary = json.loads((host / "build-summary.json").read_text())
    stages = {s["name"]: s["status"] for s in summary["stages"]}
    assert stages == {"validate": "ok", "render": "ok", "iso": "ok", "pxe": "ok", "packer": "ok",
                      "verify": "ok"}
    report = json.loads((host / "verify" / "report.json").read_text())
    assert report["ok"] is True and report["summary"]["fail"] == 0, built.text[-4000:]
    assert report["summary"]["pass"] + report["summary"]["n/a"] == report["summary"]["total"] > 0
    assert re.search(r"\d+ checks, \d+ pass, 0 fail, \d+ not applicable", built.text), built.text[-4000:]
    assert not [p for p in host.iterdir() if p.name.startswith(".")]  # no temporary work folders left
    arts = {a["path"]: a["sha256"] for a in summary["artifacts"]}
    assert arts["prometheus/prometheus-autoinstall.iso"] == sha256_file(host / "prometheus-autoinstall.iso")
    for rel in ("prometheus/packer/prometheus.pkrvars.hcl", "prometheus/packer/build/images/prometheus",
                "prometheus/autoinstall/user-data", "prometheus/pxe/boot.ipxe", "prometheus/manifest.json",
                "prometheus/verify/report.json", "prometheus/verify/junit.xml"):
        assert rel in arts, sorted(arts)
        assert f"{arts[rel]}  {rel}" in built.text
