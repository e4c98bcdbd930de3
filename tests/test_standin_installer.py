"""The stand-in installer's storage step (busybox sh + awk), run on the build host against a fake sysfs.

Each disk is written the way the Linux kernel shows it (libata's vpd_pg80/vpd_pg89, NVMe model/serial/
nsid, virtio-blk serial, SCSI vendor/model/wwid), the stand-in computes udev's ID_SERIAL from that, and
its choice for each storage action must equal builder.model.disks.subiquity_matches on the udev
properties udev computes for the same disks.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builder.model import DiskMatch, load_model
from builder.model.disks import DiskFacts, storage_config, subiquity_matches, udev_properties
from builder.packer import INSTALL_FAILED, INSTALL_OK
from builder.resources import resource
from builder.seed.templating import to_yaml

BUSYBOX = shutil.which("busybox")
pytestmark = pytest.mark.skipif(BUSYBOX is None, reason="busybox not installed (scripts/install-deps)")
GB = 10**9


@dataclass(frozen=True)
class FakeDisk:
    name: str
    kind: str  # sata | nvme | virtio | scsi-hd | usb
    model: str
    serial: str
    size: int = 20 * GB
    vendor: str = ""
    wwn: str | None = None

    def facts(self) -> DiskFacts:
        kind = "scsi-hd" if self.kind == "scsi-hd" else self.kind
        props = udev_properties(kind, self.model, self.serial, vendor=self.vendor, wwn=self.wwn)
        return DiskFacts(self.name, self.size, props)


def _ata_string(text: str, length: int) -> bytes:
    raw = text.ljust(length).encode()
    return b"".join(raw[i + 1:i + 2] + raw[i:i + 1] for i in range(0, length, 2))  # ATA words: swapped


def write_sysfs(root: Path, disks: list[FakeDisk], firmware: str = "uefi") -> Path:
    """/sys/block as the kernel shows these disks; /sys/firmware/efi when booted by UEFI."""
    if firmware == "uefi":
        (root / "firmware" / "efi").mkdir(parents=True)
    for d in disks:
        blk = root / "block" / d.name
        dev = blk / "device"
        dev.mkdir(parents=True)
        (blk / "size").write_text(f"{d.size // 512}\n")
        if d.kind == "sata":
            (dev / "vendor").write_text("ATA     \n")
            (dev / "model").write_text(d.model[:16].ljust(16) + "\n")  # SCSI INQUIRY: 16 characters only
            (dev / "vpd_pg80").write_bytes(b"\x00\x80\x00\x14" + d.serial.ljust(20).encode())
            identify = bytearray(512)
            identify[20:40] = _ata_string(d.serial, 20)
            identify[54:94] = _ata_string(d.model, 40)
            (dev / "vpd_pg89").write_bytes(b"\x00\x89\x02\x38" + bytes(56) + bytes(identify))
        elif d.kind == "nvme":
            (dev / "model").write_text(d.model.ljust(40) + "\n")
            (dev / "serial").write_text(d.serial.ljust(20) + "\n")
            (blk / "nsid").write_text("1\n")
        elif d.kind == "virtio":
            (blk / "serial").write_text(d.serial + "\n")
        elif d.kind in ("scsi-hd", "usb"):
            vendor = "QEMU" if d.kind == "scsi-hd" else d.vendor
            (dev / "vendor").write_text(vendor[:8].ljust(8) + "\n")
            (dev / "model").write_text(d.model[:16].ljust(16) + "\n")
            (dev / "vpd_pg80").write_bytes(b"\x00\x80\x00" + bytes([len(d.serial)]) + d.serial.encode())
            (dev / "wwid").write_text(f"naa.{d.wwn.removeprefix('0x')}\n" if d.wwn else
                                      f"t10.{vendor.ljust(8)}{d.model.ljust(16)}{d.serial}\n")
    (root / "block" / "sr0").mkdir(parents=True)  # the CD-ROM: never a candidate
    (root / "block" / "sr0" / "size").write_text("28000\n")
    return root


@dataclass(frozen=True)
class Run:
    rc: int
    lines: list[str]

    def matched(self) -> dict[str, list[str]]:
        """action id -> the disks the stand-in says it matched ([] for no disk)."""
        out: dict[str, list[str]] = {}
        for line in self.lines:
            if m := re.match(r"STANDIN: (\S+) matched /dev/(\S+) ID_SERIAL=", line):
                out[m[1]] = [m[2]]
            elif m := re.match(r"STANDIN: (\S+) matched no disk", line):
                out[m[1]] = []
            elif m := re.match(r"STANDIN: (\S+) matched \d+ disks: (.*) \(", line):
                out[m[1]] = [p.removeprefix("/dev/") for p in m[2].split()]
        return out

    def id_serials(self) -> dict[str, str]:
        return dict(re.findall(r"^STANDIN: disk /dev/(\S+) size=\d+ ID_SERIAL=(\S+)", "\n".join(self.lines), re.M))


def run_standin(tmp_path: Path, disks: list[FakeDisk], autoinstall: dict[str, Any] | None,
                text: str | None = None, firmware: str = "uefi") -> Run:
    sysfs = write_sysfs(tmp_path / "sys", disks, firmware)
    here = tmp_path / "etc"
    here.mkdir()
    shutil.copyfile(resource("testbed", "standin-iso", "storage.awk"), here / "standin-storage.awk")
    shutil.copyfile(resource("testbed", "standin-iso", "packages.awk"), here / "standin-packages.awk")
    shutil.copyfile(resource("testbed", "standin-iso", "late-commands.awk"), here / "standin-late-commands.awk")
    user_data = tmp_path / "user-data"
    if text is None:
        text = "#cloud-config\n" + to_yaml({"autoinstall": {"user-data": {"hostname": "standin-test"}, **autoinstall}})
    user_data.write_text(text)
    medium = tmp_path / "cdrom" / "standin"  # GRUB's images for BIOS, as the stand-in ISO carries them
    medium.mkdir(parents=True)
    (medium / "core.img").write_bytes(bytes(510) + b"\x20\x08" + bytes(3 * 512 + 100))  # 4.2 sectors
    (medium / "boot.img").write_bytes(bytes(0x66) + b"\xeb\x05" + bytes(512 - 0x68))
    script = resource("testbed", "standin-iso", "install")
    proc = subprocess.run([str(BUSYBOX), "sh", str(script), str(user_data)], capture_output=True, text=True,
                          env={"STANDIN_SYS": str(sysfs), "STANDIN_HERE": str(here), "PATH": "/usr/bin:/bin",
                               "STANDIN_DRYRUN": "1", "STANDIN_TARGET": str(tmp_path / "target"),
                               "STANDIN_TMP": str(tmp_path), "STANDIN_MEDIUM": str(tmp_path / "cdrom")},
                          timeout=60)
    assert proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith(("STANDIN: ", INSTALL_OK, INSTALL_FAILED)) for line in lines), lines
    return Run(proc.returncode, lines)


BENCH = [
    FakeDisk("sda", "sata", "Samsung SSD 870 EVO 1TB", "S6PNNX0T000001", 1000 * GB),
    FakeDisk("nvme0n1", "nvme", "Samsung SSD 980 PRO 1TB", "S64ANS0T000001", 1000 * GB),
    FakeDisk("sdb", "scsi-hd", "QEMU HARDDISK", "QM0PROM0OS01", 40 * GB),
    FakeDisk("vda", "virtio", "", "PROM-SCRATCH-01"),
    FakeDisk("sdc", "scsi-hd", "QEMU HARDDISK", "WWNDISK", wwn="0x5000c500a1b2c3d4"),
    FakeDisk("sdd", "usb", "Cruzer Blade", "4C530001234567891234", 32 * GB, vendor="SanDisk"),
]


def _model(os_match: DiskMatch, scratch_match: DiskMatch, firmware: str = "uefi"):
    m = load_model()
    storage = dataclasses.replace(m.storage, os_disk=dataclasses.replace(m.storage.os_disk, match=os_match),
                                  scratch=dataclasses.replace(m.storage.scratch, match=scratch_match))
    return dataclasses.replace(m, storage=storage, host=dataclasses.replace(m.host, firmware=firmware))


def test_udev_id_serial_computed_from_sysfs_like_udev(tmp_path: Path) -> None:
    run = run_standin(tmp_path, BENCH, {"storage": {"config": []}})
    expected = {d.name: d.facts().id_serial for d in BENCH if d.kind != "usb"}
    got = run.id_serials()
    assert {k: v for k, v in got.items() if k != "sdd"} == expected
    assert got["sda"] == "Samsung_SSD_870_EVO_1TB_S6PNNX0T000001"  # the 40-character IDENTIFY model
    assert "sr0" not in got
    assert run.rc == 1 and run.lines[-1] == f"{INSTALL_FAILED}: the autoinstall has no storage config"


MATCHES = [
    (DiskMatch(serial="S6PNNX0T000001", bus="sata"), DiskMatch(serial="S64ANS0T000001", bus="nvme")),
    (DiskMatch(serial="QM0PROM0OS01", bus="scsi"), DiskMatch(serial="PROM-SCRATCH-01", bus="virtio")),
    (DiskMatch(id_serial="Samsung_SSD_980_PRO_1TB_S64ANS0T000001_1"), DiskMatch(wwn="0x5000c500a1b2c3d4")),
]


@pytest.mark.parametrize(("os_match", "scratch_match"), MATCHES)
@pytest.mark.parametrize("firmware", ["uefi", "bios"])
def test_each_matcher_resolves_as_subiquity_does(tmp_path: Path, os_match: DiskMatch, scratch_match: DiskMatch,
                                                 firmware: str) -> None:
    storage = storage_config(_model(os_match, scratch_match, firmware))
    run = run_standin(tmp_path, BENCH, {"version": 1, "storage": storage}, firmware=firmware)
    facts = [d.facts() for d in BENCH]
    want = {a["id"]: [d.name for d in subiquity_matches(a, facts)] for a in storage["config"] if a["type"] == "disk"}
    assert all(len(v) == 1 for v in want.values()), want
    assert run.matched() == want
    assert run.rc == 0 and run.lines[-1] == INSTALL_OK, run.lines


def test_a_serial_no_disk_carries_stops_with_matched_no_disk(tmp_path: Path) -> None:
    storage = storage_config(_model(DiskMatch(serial="NOTHERE0001", bus="sata"),
                                    DiskMatch(serial="S64ANS0T000001", bus="nvme")))
    run = run_standin(tmp_path, BENCH, {"storage": storage})
    assert run.rc == 1
    assert "STANDIN: disk-os matched no disk (match: serial '*_NOTHERE0001')" in run.lines
    assert run.lines[-1] == f"{INSTALL_FAILED}: disk-os matched no disk (match: serial '*_NOTHERE0001')"
    assert INSTALL_OK not in run.lines and "disk-scratch" not in "\n".join(run.lines)  # stops at the first


def test_the_short_serial_compared_exactly_matches_no_disk(tmp_path: Path) -> None:
    """The bug of issue 9: `serial: <short>` is compared with the whole ID_SERIAL."""
    action = {"type": "disk", "id": "d", "serial": "S6PNNX0T000001"}
    run = run_standin(tmp_path, BENCH, {"storage": {"config": [action]}})
    assert run.matched() == {"d": []} and run.rc == 1


@pytest.mark.parametrize(("action", "want"), [
    ({"match": {"serial": "*_S6PNNX0T0000*"}}, ["sda"]),
    ({"match": {"serial": "*0001*"}}, ["sda", "nvme0n1"]),  # two disks: an error, whatever subiquity picks
    ({"match": {"model": "QEMU_HARDDISK"}}, ["sdb", "sdc"]),
    ({"path": "/dev/vda"}, ["vda"]),
    ({"match": {"path": "/dev/nvme*"}}, ["nvme0n1"]),
    ({"serial": "PROM-SCRATCH-01", "match": {"serial": "*"}}, ["vda"]),  # serial: wins, match: ignored
])
def test_matching_rules_agree_with_subiquity(tmp_path: Path, action: dict[str, Any], want: list[str]) -> None:
    facts = [d.facts() for d in BENCH if d.kind != "usb"]
    full = {"type": "disk", "id": "d", **action}
    assert sorted(d.name for d in subiquity_matches(full, facts)) == sorted(want)
    run = run_standin(tmp_path, [d for d in BENCH if d.kind != "usb"], {"storage": {"config": [full]}})
    assert sorted(run.matched()["d"]) == sorted(want)
    if len(want) > 1:
        assert run.rc == 1 and f"d matched {len(want)} disks" in run.lines[-1]


def test_unimplemented_match_keys_fail_loudly(tmp_path: Path) -> None:
    action = {"type": "disk", "id": "d", "match": {"size": "largest"}}
    run = run_standin(tmp_path, BENCH, {"storage": {"config": [action]}})
    assert run.rc == 1 and run.lines[-1] == f"{INSTALL_FAILED}: d: match key 'size' is not implemented by the stand-in"


def test_the_rendered_autoinstall_is_read(tmp_path: Path) -> None:
    """The awk readers on the real rendered user-data: storage actions (quoted globs, nested match) and
    the embedded first-boot user-data, which the stand-in places for the installed system's cloud-init."""
    import yaml

    from builder.seed.render import render_host

    rendered = render_host(load_model())
    text = rendered["autoinstall/user-data"].decode()
    run = run_standin(tmp_path, [FakeDisk("sda", "sata", "QEMU HARDDISK", "S6PNNX0T000001"),
                                 FakeDisk("nvme0n1", "nvme", "QEMU NVMe Ctrl", "S64ANS0T000001")], None, text)
    assert run.rc == 0 and run.lines[-1] == INSTALL_OK, run.lines
    placed = (tmp_path / "first-boot-user-data").read_text()
    assert placed.startswith("#cloud-config\n")
    assert yaml.safe_load(placed) == yaml.safe_load(rendered["first-boot/user-data"])
    assert yaml.safe_load((tmp_path / "first-boot-meta-data").read_text())["instance-id"].startswith(
        "standin-installed-")
    awk = resource("testbed", "standin-iso", "storage.awk")
    actions = subprocess.run([str(BUSYBOX), "awk", "-f", str(awk)], input=text, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert len(actions) == len(storage_config(load_model())["config"])
    assert actions[0].split() == ["k_type='disk'", "k_id='disk-os'", "k_has_match='1'",
                                  "k_match_serial='*_S6PNNX0T000001'", "k_ptable='gpt'",
                                  "k_wipe='superblock-recursive'", "k_preserve='false'", "k_match_keys='", "serial'"]


@pytest.mark.parametrize("firmware", ["uefi", "bios"])
def test_partitions_formats_and_fstab_follow_the_storage_config(tmp_path: Path, firmware: str) -> None:
    """Dry run (commands printed, not run): GPT per firmware, filesystems, mounts parents first, fstab by UUID."""
    storage = storage_config(_model(*MATCHES[0], firmware=firmware))
    run = run_standin(tmp_path, BENCH, {"storage": storage}, firmware=firmware)
    assert run.rc == 0 and run.lines[-1] == INSTALL_OK, run.lines
    text = "\n".join(run.lines)
    if firmware == "uefi":
        assert "STANDIN: disk-os: /dev/sda partitioned (gpt): /dev/sda1(boot,1G) /dev/sda2(linux,rest)" in text
        assert "run: /usr/sbin/mkfs.fat -F 32 /dev/sda1" in text and "run: mount -t vfat /dev/sda1 " in text
        assert "fstab: /dev/disk/by-uuid/UUID-of-/dev/sda1 /boot/efi vfat defaults 0 2" in text
    else:
        assert "STANDIN: disk-os: /dev/sda partitioned (gpt): /dev/sda1(bios_grub,1M) /dev/sda2(linux,rest)" in text
        assert "mkfs.fat" not in text and "/boot/efi" not in text
    assert "STANDIN: disk-scratch: /dev/nvme0n1 partitioned (gpt): /dev/nvme0n1p1(linux,rest)" in text
    assert "run: /usr/sbin/mke2fs -F -q -t ext4 /dev/sda2" in text
    assert "run: /usr/sbin/mke2fs -F -q -t ext4 /dev/nvme0n1p1" in text
    mounts = [line.split()[-1] for line in run.lines if "run: mount " in line]
    assert mounts[0].endswith("/target/") and mounts[-1].endswith("/target/var/lib/docker")
    assert "fstab: /dev/disk/by-uuid/UUID-of-/dev/sda2 / ext4 defaults 0 1" in text
    assert "fstab: /dev/disk/by-uuid/UUID-of-/dev/nvme0n1p1 /var/lib/docker ext4 defaults,noatime 0 2" in text
    assert not (tmp_path / "target").exists()  # a dry run writes nothing
    root_uuid = "UUID-of-/dev/sda2"
    grub_cfg = (tmp_path / "grub.cfg").read_text()
    # the installed system is the stand-in image's files (unsquashfs from the medium), booting its own kernel
    assert f"run: /usr/sbin/unsquashfs -f -n -d {tmp_path}/target {tmp_path}/cdrom/casper/standin-rootfs.squashfs" \
        in text
    assert text.index("unsquashfs") < text.index("STANDIN: fstab: ")  # unpacked before fstab and seed are written
    assert f"linux /boot/vmlinuz-VERSION root=UUID={root_uuid} ro net.ifnames=1 no_timer_check\n" in grub_cfg
    assert "initrd /boot/initrd.img-VERSION\n" in grub_cfg
    assert "console=" not in grub_cfg  # no installer console arguments on the installed system
    if firmware == "uefi":
        assert f"run: cp {tmp_path}/cdrom/standin/bootx64.efi {tmp_path}/target/boot/efi/EFI/BOOT/BOOTX64.EFI" in text
        assert f"search --no-floppy --fs-uuid --set=root {root_uuid}\n" in (tmp_path / "esp-grub.cfg").read_text()
    else:  # what grub-bios-setup writes: core.img into bios_grub (sector 2048 in the dry run), boot.img into the MBR
        assert "BOOTX64" not in text
        assert f"run: dd if={tmp_path}/core.img of=/dev/sda bs=512 seek=2048 conv=notrunc,fsync" in text
        assert f"run: dd if={tmp_path}/boot.img of=/dev/sda bs=440 count=1 conv=notrunc,fsync" in text
        core, boot = (tmp_path / "core.img").read_bytes(), (tmp_path / "boot.img").read_bytes()
        assert struct.unpack("<QHH", core[500:512]) == (2049, 4, 0x820)  # the rest of core: 4 sectors from 2049
        assert struct.unpack("<Q", boot[92:100]) == (2048,) and boot[102:104] == b"\x90\x90"


@pytest.mark.parametrize(("layout", "firmware", "why"), [
    ("bios", "uefi", "UEFI: no ESP with grub_device mounted at /boot/efi"),
    ("uefi", "bios", "BIOS: no disk with grub_device and a bios_grub partition"),
])
def test_a_layout_for_the_other_firmware_fails_like_subiquity(tmp_path: Path, layout: str, firmware: str,
                                                             why: str) -> None:
    storage = storage_config(_model(*MATCHES[0], firmware=layout))
    run = run_standin(tmp_path, BENCH, {"storage": storage}, firmware=firmware)
    assert run.rc == 1
    assert run.lines[-1] == f"{INSTALL_FAILED}: autoinstall config did not create needed bootloader partition ({why})"
    assert not any("run: " in line for line in run.lines)  # checked before any disk is touched


def test_unimplemented_layouts_fail_before_touching_a_disk(tmp_path: Path) -> None:
    storage = storage_config(_model(*MATCHES[0]))
    for action in storage["config"]:
        if action["id"] == "fmt-root":
            action["fstype"] = "xfs"
    run = run_standin(tmp_path, BENCH, {"storage": storage})
    assert run.rc == 1
    assert run.lines[-1] == f"{INSTALL_FAILED}: fmt-root: fstype 'xfs' is not implemented by the stand-in"
    assert not any("run: " in line for line in run.lines)


def test_an_autoinstall_without_first_boot_config_fails_before_touching_a_disk(tmp_path: Path) -> None:
    storage = storage_config(_model(*MATCHES[0]))
    text = "#cloud-config\n" + to_yaml({"autoinstall": {"version": 1, "storage": storage}})
    run = run_standin(tmp_path, BENCH, None, text)
    assert run.rc == 1
    assert run.lines[-1] == f"{INSTALL_FAILED}: the autoinstall has no user-data section (the first-boot config)"
    assert not any("run: " in line for line in run.lines)


def test_install_time_packages_are_installed_from_the_medium_after_unpacking(tmp_path: Path) -> None:
    """The rendered autoinstall's `packages:` (flow list): the packages step runs on the unpacked target
    with the medium as its repository, before the bootloader is written."""
    from builder.seed.packages import INSTALL_TIME
    from builder.seed.render import render_host

    text = render_host(load_model())["autoinstall/user-data"].decode()
    run = run_standin(tmp_path, [FakeDisk("sda", "sata", "QEMU HARDDISK", "S6PNNX0T000001"),
                                 FakeDisk("nvme0n1", "nvme", "QEMU NVMe Ctrl", "S64ANS0T000001")], None, text)
    assert run.rc == 0 and run.lines[-1] == INSTALL_OK, run.lines
    text_out = "\n".join(run.lines)
    step = f"run: /bin/standin-install-packages {tmp_path}/target {tmp_path}/cdrom {' '.join(INSTALL_TIME)}"
    assert f"STANDIN: {step}" in run.lines
    assert text_out.index("unsquashfs") < text_out.index(step) < text_out.index("bootloader:")


@pytest.mark.parametrize(("section", "want"), [
    ('  packages: ["nfs-common", "ca-certificates", \'gnupg\']  # install time\n',
     ["nfs-common", "ca-certificates", "gnupg"]),
    ("  packages:\n  - nfs-common\n  # a comment\n  - 'gnupg'  # why\n", ["nfs-common", "gnupg"]),
    ("  packages:\n    - rpcbind\n", ["rpcbind"]),
    ("  packages: []\n", []),
    ("", []),
])
def test_the_packages_reader_takes_flow_and_block_lists(section: str, want: list[str]) -> None:
    text = f"#cloud-config\nautoinstall:\n  version: 1\n{section}  updates: security\nother:\n  packages: [x]\n"
    awk = resource("testbed", "standin-iso", "packages.awk")
    out = subprocess.run([str(BUSYBOX), "awk", "-f", str(awk)], input=text, capture_output=True, text=True, check=True)
    assert out.stdout.split() == want


@pytest.mark.parametrize(("section", "failure"), [
    ("  packages: nfs-common\n", "autoinstall packages: not understood by the stand-in: nfs-common"),
    ("  late-commands:\n    - {cmd: x}\n", "autoinstall late-commands: not understood by the stand-in: {cmd: x}"),
])
def test_sections_the_stand_in_cannot_read_fail_before_touching_a_disk(tmp_path: Path, section: str,
                                                                        failure: str) -> None:
    storage = storage_config(_model(*MATCHES[0]))
    text = "#cloud-config\n" + to_yaml({"autoinstall": {"version": 1, "storage": storage,
                                                         "user-data": {"hostname": "h"}}})
    text = text.replace("autoinstall:\n", "autoinstall:\n" + section, 1)
    run = run_standin(tmp_path, BENCH, None, text)
    assert run.rc == 1
    assert run.lines[-1] == f"{INSTALL_FAILED}: {failure}"
    assert not any("STANDIN: run: " in line for line in run.lines)


def test_the_rendered_late_commands_run_in_order_after_the_bootloader(tmp_path: Path) -> None:
    """Subiquity runs the autoinstall's late-commands after the install: so does the stand-in, each command
    exactly as rendered (the reader gives back the same argv), `curtin in-target` as a chroot into the target,
    update-grub skipped (the stand-in writes its own grub.cfg), before the filesystems are unmounted."""
    import shlex

    import yaml

    from builder.seed.render import render_host

    text = render_host(load_model())["autoinstall/user-data"].decode()
    want = yaml.safe_load(text)["autoinstall"]["late-commands"]
    awk = resource("testbed", "standin-iso", "late-commands.awk")
    out = subprocess.run([str(BUSYBOX), "awk", "-f", str(awk)], input=text, capture_output=True, text=True, check=True)
    assert [shlex.split(line) for line in out.stdout.splitlines()] == want
    run = run_standin(tmp_path, [FakeDisk("sda", "sata", "QEMU HARDDISK", "S6PNNX0T000001"),
                                 FakeDisk("nvme0n1", "nvme", "QEMU NVMe Ctrl", "S64ANS0T000001")], None, text)
    assert run.rc == 0 and run.lines[-1] == INSTALL_OK, run.lines
    late = [line for line in run.lines if line.startswith("STANDIN: late-command ")]
    assert len(late) == len(want)
    assert "ln -sfn /dev/null /target/etc/systemd/system/rpcbind.socket" in "\n".join(late)
    assert any("curtin in-target -- update-grub: skipped" in line for line in late)
    text_out = "\n".join(run.lines)
    assert text_out.index("bootloader:") < text_out.index("STANDIN: late-command 1:") < text_out.index("run: umount")


@pytest.mark.parametrize(("entry", "want"), [
    ('["sh", "-c", "echo \\"it\'s\\" \\\\ done"]', ["sh", "-c", 'echo "it\'s" \\ done']),
    ('["curtin", "in-target", "--target=/target", "--", "systemctl", "mask", "rpcbind.socket"]',
     ["curtin", "in-target", "--target=/target", "--", "systemctl", "mask", "rpcbind.socket"]),
    ('"touch /target/x && echo ok"', ["sh", "-c", "touch /target/x && echo ok"]),
])
def test_the_late_commands_reader_gives_back_each_argv(entry: str, want: list[str]) -> None:
    import shlex

    text = f"#cloud-config\nautoinstall:\n  version: 1\n  late-commands:\n    - {entry}\n  user-data: {{}}\n"
    awk = resource("testbed", "standin-iso", "late-commands.awk")
    out = subprocess.run([str(BUSYBOX), "awk", "-f", str(awk)], input=text, capture_output=True, text=True, check=True)
    assert [shlex.split(line) for line in out.stdout.splitlines()] == [want]

