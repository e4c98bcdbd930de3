"""`builder build --base <stand-in> --allow-standin` under TCG, every stage end to end:
validate, render, iso, pxe, packer, verify (about 5 min on an idle 2-core machine).

This run is also the Packer must-show: `packer validate` + `packer build` of packer/prometheus.pkr.hcl
against the remastered stand-in ISO (no boot command; the stand-in installer partitions the modelled
disks, unpacks the stand-in image's files and powers off), producing the disk images and the logs
(Packer: about 1 min). On a stand-in base the seed is rendered from the harness model (the offline
stand-in chain, said so in the output), and the verify stage boots the disk the packer stage wrote, by
its firmware, runs the whole catalog on it, powers it off, boots it again and re-runs the second-boot
checks (3-6 min). A copy of that disk changed after the fact is then verified with `--target disk:COPY
--no-second-boot` and fails the matching check (2-4 min).
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
    assert re.search(r"\d+ checks over 2 boots, \d+ pass, 0 fail, \d+ not applicable", built.text), built.text[-4000:]
    assert not [p for p in host.iterdir() if p.name.startswith(".")]  # no temporary work folders left
    assert "stand-in chain: test overrides applied" in built.text  # never silent
    arts = {a["path"]: a["sha256"] for a in summary["artifacts"]}
    assert arts["prometheus/prometheus-autoinstall.iso"] == sha256_file(host / "prometheus-autoinstall.iso")
    for rel in ("prometheus/packer/prometheus.pkrvars.hcl", "prometheus/packer/build/images/prometheus",
                "prometheus/autoinstall/user-data", "prometheus/pxe/boot.ipxe", "prometheus/manifest.json",
                "prometheus/verify/report.json", "prometheus/verify/junit.xml"):
        assert rel in arts, sorted(arts)
        assert f"{arts[rel]}  {rel}" in built.text


def test_the_verify_stage_booted_the_packer_disk_by_its_firmware(built: Built) -> None:
    assert built.rc == 0, built.text[-6000:]
    host = built.out / "prometheus"
    disk = host / "packer" / "build" / "images" / "prometheus"
    report = json.loads((host / "verify" / "report.json").read_text())
    text = json.dumps(report)
    assert report["target_kind"] == "disk", text[:2000]
    # the disk it booted, with its digest
    assert (report["target_info"]["path"], report["target_info"]["sha256"]) == (str(disk), sha256_file(disk))
    results = {r["id"]: r["status"] for r in report["checks"]}
    assert results["docker.storage-on-scratch"] == "pass"  # judged on an installed disk, not n/a
    serial = (host / "verify" / "serial.log").read_text(errors="replace")
    assert "BdsDxe" in serial and "STANDIN: GRUB: booting" in serial  # OVMF -> the disk's GRUB, no -kernel
    assert "STANDIN-INSTALLED-OK" in serial
    assert any("stand-in chain: test overrides applied" in n for n in report["notes"])
    # ... and booted it a second time (issue 11: "on both boots"): a later boot runs no first-boot commands
    boots = report["boots"]
    assert [b["name"] for b in boots] == ["boot 1 (first boot)", "boot 2"], text[:2000]
    second = {r["id"]: r["status"] for r in boots[1]["checks"]}
    assert {"ssh.reachability", "net.listeners", "net.mgmt-policy-routing", "docker.storage-on-scratch"} <= set(second)
    assert all(st in ("pass", "n/a") for st in second.values()), second
    serial2 = (host / "verify" / "serial-boot2.log").read_text(errors="replace")
    assert "BdsDxe" in serial2 and "STANDIN: GRUB: booting" in serial2  # the same disk, by its firmware again


def _root_offset(raw: Path) -> int:
    table = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], capture_output=True, check=True).stdout)
    linux = [p for p in table["partitiontable"]["partitions"] if p["type"] == "0FC63DAF-8483-4772-8E79-3D69D8477DE4"]
    return int(linux[0]["start"]) * 512


def test_a_disk_changed_after_the_build_fails_the_matching_check(built: Built, tmp_path: Path) -> None:
    """A drop-in added to the built image (raw copy, debugfs) turns password logins on: ssh.sshd-effective fails."""
    assert built.rc == 0, built.text[-3000:]
    host = built.out / "prometheus"
    images = host / "packer" / "build" / "images"
    before = sha256_file(images / "prometheus")
    copy = tmp_path / "broken.raw"
    for src, dst in ((images / "prometheus", copy), (images / "prometheus-1", tmp_path / "broken-1.raw")):
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(src), str(dst)], check=True)
    dropin = tmp_path / "00-broken.conf"
    dropin.write_text("PasswordAuthentication yes\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {dropin} /etc/ssh/sshd_config.d/00-broken.conf",
                    f"{copy}?offset={_root_offset(copy)}"], check=True, capture_output=True)
    listed = subprocess.run(["debugfs", "-R", "cat /etc/ssh/sshd_config.d/00-broken.conf",
                             f"{copy}?offset={_root_offset(copy)}"], capture_output=True, text=True).stdout
    assert listed == "PasswordAuthentication yes\n"
    # back to qcow2 (sparse raw copies are 20 GiB to hash), the scratch disk beside it as Packer names it
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(copy), str(tmp_path / "broken.qcow2")], check=True)
    copy.unlink()
    (tmp_path / "broken-1.raw").unlink()
    copy = tmp_path / "broken.qcow2"
    shutil.copyfile(images / "prometheus-1", tmp_path / "broken.qcow2-1")
    key = host / "standin-chain" / "admin-ed25519"
    out = tmp_path / "verify-out"
    shutil.copytree(host / "standin-chain", out / "prometheus" / "standin-chain")
    started = time.monotonic()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["verify", "--out", str(out), "--target", f"disk:{copy}", "--identity", str(key), "--only", "ssh.",
                   "--no-second-boot"])
    print(f"\nbuilder verify --target disk:COPY (broken): exit {rc} after {time.monotonic() - started:.0f}s")
    assert rc == 1, buf.getvalue()[-3000:]
    report = json.loads((out / "prometheus" / "verify" / "report.json").read_text())
    results = {r["id"]: r["status"] for r in report["checks"]}
    assert results["ssh.sshd-effective"] == "fail", results
    assert "passwordauthentication yes (want no)" in json.dumps(report)
    assert report["target_info"]["sha256"] == sha256_file(copy)
    assert sha256_file(images / "prometheus") == before  # the artifact itself is untouched
