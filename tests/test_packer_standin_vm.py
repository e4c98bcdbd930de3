"""`builder packer` on the remastered stand-in ISO under TCG: an install onto the modelled disks, then its boot.

The Packer VM presents the model's disks on their buses with the model's serials; the stand-in
installer resolves the rendered storage matchers against what udev would compute from the kernel's
view of those disks. With the default model each matcher selects its disk; with an ISO rendered for
a model whose OS serial the VM's disk does not carry, the installer stops with `matched no disk`
and `builder packer` fails quoting that line, keeping no disk image.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from builder.media.fetch import cache_dir
from builder.packer import INSTALL_FAILED, INSTALL_OK
from builder.resources import resource_path
from builder.testbed.standin_iso import cached_standin_iso

TOOLS = ("packer", "qemu-system-x86_64", "qemu-img", "xorriso", "sfdisk", "blkid", "debugfs")
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason=f"needs {', '.join(TOOLS)} (scripts/install-deps)"),
]
OS_SERIAL = "S6PNNX0T000001"  # hosts/prometheus.yaml storage.os_disk.match.serial
SCRATCH_SERIAL = "S64ANS0T000001"


def _cli(argv: list[str]) -> tuple[int, str, str, float]:
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue(), time.monotonic() - started


def _host_variant(tmp: Path, *, serial: str = OS_SERIAL, firmware: str = "uefi") -> Path:
    """hosts/prometheus.yaml with another OS disk serial or firmware (keys copied beside it)."""
    src = resource_path("hosts", "prometheus.yaml")
    text = src.read_text()
    for old, new in ((f"serial: {OS_SERIAL}, bus: sata", f"serial: {serial}, bus: sata"),
                     ("firmware: uefi ", f"firmware: {firmware} ")):
        assert old in text
        text = text.replace(old, new)
    tmp.mkdir(parents=True)
    host = tmp / "prometheus.yaml"
    host.write_text(text)
    shutil.copytree(src.parent / "keys", tmp / "keys")
    return host


def _partitions(image: Path, tmp: Path) -> list[dict[str, str]]:
    """The GPT partitions of a qcow2 disk image with the filesystem blkid finds in each (read-only, on a copy)."""
    raw = tmp / (image.name + ".raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(image), str(raw)], check=True)
    table = json.loads(subprocess.run(["sfdisk", "-J", str(raw)], capture_output=True, check=True).stdout)
    assert table["partitiontable"]["label"] == "gpt"
    out = []
    for p in table["partitiontable"]["partitions"]:
        probe = subprocess.run(["blkid", "-p", "-o", "export", "--offset", str(p["start"] * 512), str(raw)],
                               capture_output=True, text=True).stdout
        props = dict(line.split("=", 1) for line in probe.splitlines() if "=" in line)
        files = {}
        if props.get("TYPE") == "ext4":
            for name in ("/etc/fstab", "/var/lib/cloud/seed/nocloud/user-data",
                         "/etc/cloud/cloud.cfg.d/90-installer-datasource.cfg", "/var/lib/dpkg/status"):
                files[name] = subprocess.run(["debugfs", "-R", f"cat {name}", f"{raw}?offset={p['start'] * 512}"],
                                             capture_output=True, text=True).stdout
            for name in ("/etc/systemd/system/rpcbind.socket", "/etc/systemd/system/ssh.socket.d"):
                files[f"stat:{name}"] = subprocess.run(["debugfs", "-R", f"stat {name}",
                                                        f"{raw}?offset={p['start'] * 512}"],
                                                       capture_output=True, text=True).stdout
        out.append({"type": p["type"], "fs": props.get("TYPE", ""), "uuid": props.get("UUID", ""), **files})
    raw.unlink()
    return out


def _boot_installed(images: Path, log: Path, firmware: str) -> str:
    """Boot the installed disks (no CD) with the model's firmware and disks as the Packer VM had them."""
    from builder.model import load_model
    from builder.packer import qemu_disk_device

    model = load_model()
    bios = ["-bios", "/usr/share/ovmf/OVMF.fd"] if firmware == "uefi" else []
    cmd = ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-cpu", "max", "-m", "1024", *bios,
           "-display", "none", "-monitor", "none", "-no-reboot",
           "-serial", f"file:{log}", "-net", "none", "-device", "ahci,id=ahci0",
           "-drive", f"file={images / 'prometheus'},if=none,id=osdisk,format=qcow2,snapshot=on",
           "-device", f"{qemu_disk_device(model.storage.os_disk, 'os_disk')},drive=osdisk,bootindex=1",
           "-drive", f"file={images / 'prometheus-1'},if=none,id=scratch,format=qcow2,snapshot=on",
           "-device", f"{qemu_disk_device(model.storage.scratch, 'scratch')},drive=scratch"]
    # the installed system (the stand-in image's Debian) prints its state early and keeps running: stop it then
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    text = ""
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text(errors="replace").replace("\r", "") if log.exists() else ""
            if re.search(r"^STANDIN-INSTALLED-(OK|FAILED)", text, re.M):
                break
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return log.read_text(errors="replace").replace("\r", "") if log.exists() else text


@pytest.fixture(scope="module")
def standin() -> Path:
    return cached_standin_iso(cache_dir())


def assert_installed(out: Path, tmp_path: Path, firmware: str) -> list[dict[str, str]]:
    """What a successful stand-in install leaves in `<out>/prometheus/packer/build`: each matcher resolved to
    the VM disk with the model's serial, the modelled firmware, the rendered layout on the OS disk and the
    scratch filesystem, fstab by UUID, the embedded first-boot config, the autoinstall's packages installed.
    Returns the OS disk's partitions (boot, root)."""
    build = out / "prometheus" / "packer" / "build"
    serial = (build / "serial.log").read_text(errors="replace")
    assert (f"STANDIN: disk-os matched /dev/sda ID_SERIAL=QEMU_HARDDISK_{OS_SERIAL} "
            f"(match: serial '*_{OS_SERIAL}')") in serial
    assert (f"STANDIN: disk-scratch matched /dev/nvme0n1 ID_SERIAL=QEMU_NVMe_Ctrl_{SCRATCH_SERIAL}_1 "
            f"(match: serial '*_{SCRATCH_SERIAL}_1')") in serial
    assert f"STANDIN: firmware: {firmware};" in serial  # Packer booted the modelled firmware
    assert f"\n{INSTALL_OK}" in serial.replace("\r", "")
    assert ("-bios" in (build / "packer.log").read_text()) == (firmware == "uefi")  # OVMF, else SeaBIOS
    assert sorted(p.name for p in (build / "images").iterdir()) == ["prometheus", "prometheus-1"]
    # the OS disk holds the rendered layout, the scratch disk its filesystem, fstab by UUID
    boot, root = _partitions(build / "images" / "prometheus", tmp_path)
    (scratch,) = _partitions(build / "images" / "prometheus-1", tmp_path)
    assert (root["type"], root["fs"], scratch["type"], scratch["fs"]) == (LINUX, "ext4", LINUX, "ext4")
    fstab = [f"/dev/disk/by-uuid/{root['uuid']} / ext4 defaults 0 1",
             f"/dev/disk/by-uuid/{scratch['uuid']} /var/lib/docker ext4 defaults,noatime 0 2"]
    if firmware == "uefi":
        assert (boot["type"], boot["fs"]) == (ESP, "vfat")
        fstab.insert(1, f"/dev/disk/by-uuid/{boot['uuid']} /boot/efi vfat defaults 0 2")
    else:
        assert (boot["type"], boot["fs"]) == (BIOS_BOOT, "")
    assert root["/etc/fstab"].splitlines() == fstab
    # the embedded first-boot config, where the installed system's cloud-init reads it
    first_boot = (out / "prometheus" / "first-boot" / "user-data").read_text()
    assert yaml.safe_load(root["/var/lib/cloud/seed/nocloud/user-data"]) == yaml.safe_load(first_boot)
    assert "NoCloud" in root["/etc/cloud/cloud.cfg.d/90-installer-datasource.cfg"]
    # the autoinstall's packages: installed by apt from the medium's repository (the image has none of them)
    assert re.search(r"^STANDIN: install-time packages installed \(\d+ packages set up\): .*nfs-common=", serial, re.M)
    for pkg in ("nfs-common", "rpcbind", "gnupg"):
        assert f"Package: {pkg}\nStatus: install ok installed\n" in root["/var/lib/dpkg/status"], pkg
    # the autoinstall's late-commands ran after the install: rpcbind masked, the ssh.socket drop-in in place
    assert len(re.findall(r"^STANDIN: late-command \d+: ", serial, re.M)) >= 5, serial[-3000:]
    assert 'Fast link dest: "/dev/null"' in root["stat:/etc/systemd/system/rpcbind.socket"]
    assert "Type: directory" in root["stat:/etc/systemd/system/ssh.socket.d"]
    return [boot, root, scratch]


def test_packer_installs_the_rendered_bios_layout_on_the_modelled_disks_and_it_boots(standin: Path,
                                                                                     tmp_path: Path) -> None:
    """BIOS here; the UEFI install (the default model) is the one `builder build` makes in tests/test_build_vm.py,
    checked there with `assert_installed` and booted by its verify stage."""
    firmware = "bios"
    out = tmp_path / "out"
    host = ["--host", str(_host_variant(tmp_path / "bios", firmware="bios"))]
    rc, text, err, _ = _cli(["iso", *host, "--base", str(standin), "--allow-standin", "--out", str(out)])
    assert rc == 0, err
    rc, text, err, seconds = _cli(["packer", *host, "--out", str(out), "--accel", "tcg", "--packer-timeout", "600"])
    print(f"\nbuilder packer (stand-in, {firmware}): exit {rc} after {seconds:.0f}s")
    assert rc == 0, text[-4000:] + err
    assert "serial| STANDIN: disk-os matched /dev/sda" in text  # shown while Packer runs
    boot, root, scratch = assert_installed(out, tmp_path, firmware)
    build = out / "prometheus" / "packer" / "build"
    # and it boots by itself under the modelled firmware: GRUB (MBR + bios_grub) -> root by UUID -> fstab
    started = time.monotonic()
    booted = _boot_installed(build / "images", tmp_path / "installed.log", firmware)
    print(f"installed system boot ({firmware}): {time.monotonic() - started:.0f}s")
    assert f"STANDIN: installed system booted ({firmware} firmware) root=UUID={root['uuid']}" in booted
    assert "console=" not in booted.split("STANDIN: installed cmdline:")[1].splitlines()[0]
    assert f"STANDIN: fstab: /dev/disk/by-uuid/{scratch['uuid']} mounted at /var/lib/docker" in booted
    assert "\nSTANDIN-INSTALLED-OK\n" in booted


def test_a_serial_the_vm_disk_does_not_carry_fails_fast_quoting_the_installer(standin: Path, tmp_path: Path) -> None:
    wrong = _host_variant(tmp_path / "wrong", serial="NOTTHISDISK01")
    out = tmp_path / "out"
    rc, _, err, _ = _cli(["iso", "--host", str(wrong), "--base", str(standin), "--allow-standin", "--out",
                          str(tmp_path / "wrong-out")])
    assert rc == 0, err
    iso = tmp_path / "wrong-out" / "prometheus" / "prometheus-autoinstall.iso"
    # the VM plays the default model's disks; the ISO's autoinstall asks for another OS disk
    rc, text, err, seconds = _cli(["packer", "--out", str(out), "--iso", str(iso), "--accel", "tcg",
                                   "--packer-timeout", "600"])
    print(f"\nbuilder packer (stand-in, OS serial not on the VM's disk): exit {rc} after {seconds:.0f}s")
    assert rc == 2, text[-3000:] + err
    # it stops on the installer's failure line, not at --packer-timeout (600 s): 16 s on an idle machine,
    # ~50 s with two TCG guests on 2 cores; the bound only has to tell the two apart
    assert seconds < 240
    assert (f"the installer failed: {INSTALL_FAILED}: disk-os matched no disk "
            "(match: serial '*_NOTTHISDISK01')") in err
    packer_dir = out / "prometheus" / "packer"
    assert not (packer_dir / "build").exists()  # no disk image that looks like a good build
    assert sorted(p.name for p in (packer_dir / "last-failure").iterdir()) == ["packer.log", "serial.log"]
    assert not list(packer_dir.rglob("prometheus-1"))
