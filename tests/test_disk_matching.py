"""Disk matching as subiquity does it, on real-shaped udev property sets, and the firmware layouts."""

from __future__ import annotations

import dataclasses

import pytest

from builder.cli import main
from builder.errors import BuilderError
from builder.model import Disk, DiskMatch, load_model
from builder.model.disks import (
    DiskFacts,
    bootloader_problems,
    render_disk_match,
    storage_config,
    subiquity_matches,
    udev_properties,
)
from tests.conftest import default_model_data

TB = 1000204886016

# One machine with every bus the model allows, plus the USB stick the installer boots from.
BENCH = {
    "sata": DiskFacts("sda", TB, udev_properties("sata", "Samsung SSD 870 EVO 1TB", "S6PNNX0T000001"),
                      model="Samsung SSD 870 EVO 1TB", transport="sata"),
    "nvme": DiskFacts("nvme0n1", TB, udev_properties("nvme", "Samsung SSD 980 PRO 1TB", "S64ANS0T000001"),
                      model="Samsung SSD 980 PRO 1TB", transport="nvme"),
    "scsi": DiskFacts("sdb", 40 * 10**9, udev_properties("scsi-hd", "QEMU HARDDISK", "QM0PROM0OS01"),
                      model="QEMU HARDDISK"),
    "virtio": DiskFacts("vda", 20 * 10**9, udev_properties("virtio", "", "PROM-SCRATCH-01")),
    "usb": DiskFacts("sdc", 32 * 10**9, udev_properties("usb", "Cruzer Blade", "4C530001234567891234",
                                                          vendor="SanDisk"),
                     model="Cruzer Blade", transport="usb", removable=True, in_use=True),
}
SHORT = {"sata": "S6PNNX0T000001", "nvme": "S64ANS0T000001", "scsi": "QM0PROM0OS01", "virtio": "PROM-SCRATCH-01"}


def _disk(**match: str) -> Disk:
    return Disk(match=DiskMatch(**match))  # type: ignore[arg-type]


def _select(action: dict) -> list[str]:
    return [d.name for d in subiquity_matches({"type": "disk", "id": "d", **action}, list(BENCH.values()))]


def test_udev_shapes_of_real_disks() -> None:
    assert BENCH["sata"].id_serial == "Samsung_SSD_870_EVO_1TB_S6PNNX0T000001"
    assert BENCH["sata"].id_serial_short == "S6PNNX0T000001"
    assert BENCH["nvme"].id_serial == "Samsung_SSD_980_PRO_1TB_S64ANS0T000001_1"  # systemd >= 254
    assert BENCH["scsi"].id_serial == "0QEMU_QEMU_HARDDISK_QM0PROM0OS01"
    assert BENCH["virtio"].id_serial == "PROM-SCRATCH-01" and BENCH["virtio"].id_serial_short == ""
    assert BENCH["usb"].id_serial == "SanDisk_Cruzer_Blade_4C530001234567891234-0:0"
    assert BENCH["usb"].id_serial_short == "4C530001234567891234"


def test_qemu_scsi_serial_limits() -> None:
    long = "PROMETHEUS-OS-DISK-0001"  # 23 characters
    assert udev_properties("scsi-hd", "x", long)["ID_SERIAL"] == "0QEMU_QEMU_HARDDISK_PROMETHEUS-OS-DISK-0"  # 20
    with pytest.raises(BuilderError, match="9.1"):
        udev_properties("scsi-hd", "x", long, qemu_version=(9, 1))
    props = udev_properties("scsi-hd", "x", long, device_id="S6PNNX0T000001", qemu_version=(9, 1))
    assert props["ID_SERIAL"] == "0QEMU_QEMU_HARDDISK_S6PNNX0T000001"
    assert udev_properties("scsi-hd", "x", "s", wwn="0x5000C500A1B2C3D4")["ID_SERIAL"] == "35000c500a1b2c3d4"
    assert udev_properties("virtio", "", "X" * 25)["ID_SERIAL"] == "X" * 20  # the kernel keeps 20 bytes


@pytest.mark.parametrize("bus", ["sata", "nvme", "scsi", "virtio"])
def test_each_modelled_disk_resolves_to_exactly_its_disk(bus: str) -> None:
    action = render_disk_match(_disk(serial=SHORT[bus], bus=bus))
    assert _select(action) == [BENCH[bus].name], action


@pytest.mark.parametrize("key", ["sata", "nvme", "scsi", "virtio", "usb"])
def test_exact_id_serial_resolves_to_exactly_its_disk(key: str) -> None:
    action = render_disk_match(_disk(id_serial=BENCH[key].id_serial))
    assert action == {"serial": BENCH[key].id_serial}
    assert _select(action) == [BENCH[key].name]


def test_wwn_form_matches_a_scsi_disk_by_its_naa_serial() -> None:
    sas = DiskFacts("sdd", TB, udev_properties("scsi-hd", "x", "x", wwn="0x5000c500a1b2c3d4"))
    action = render_disk_match(_disk(wwn="0x5000c500a1b2c3d4"))
    assert action == {"serial": "35000c500a1b2c3d4"}
    assert subiquity_matches(action, [*BENCH.values(), sas]) == [sas]


def test_the_install_stick_is_never_matched() -> None:
    for bus, short in SHORT.items():
        assert "sdc" not in _select(render_disk_match(_disk(serial=short, bus=bus)))
    # even a model that names the stick's short serial (an admin's slip) does not reach it via the glob
    assert _select(render_disk_match(_disk(serial="4C530001234567891234", bus="sata"))) == []


def test_subiquity_semantics_that_bit_the_old_render() -> None:
    assert _select({"serial": "S6PNNX0T000001"}) == []  # `serial:` is exact against ID_SERIAL: matched no disk
    assert _select({"match": {"serial": "*S64ANS0T000001"}}) == []  # NVMe needs the _1 suffix covered
    assert _select({"match": {"serial": "*S64ANS0T000001*"}}) == ["nvme0n1"]
    # with `serial:` given, `match:` is ignored
    assert _select({"serial": BENCH["sata"].id_serial, "match": {"serial": "*_S64ANS0T000001_1"}}) == ["sda"]
    assert _select({"path": "/dev/disk/by-id/ata-Samsung_SSD_870_EVO_1TB_S6PNNX0T000001"}) == []  # no by-id
    assert _select({"path": "/dev/nvme0n1"}) == ["nvme0n1"]
    assert _select({"match": {"path": "/dev/sd*"}}) == ["sda", "sdb", "sdc"]
    assert _select({"match": {"model": "Samsung_SSD_9*"}}) == ["nvme0n1"]
    assert _select({"match": {"size": "largest"}})[:2] in (["sda", "nvme0n1"], ["nvme0n1", "sda"])
    assert "sdc" not in _select({"match": {"size": "smallest"}})  # size/ssd skip disks in use (the medium)
    assert _select({"match": {"install-media": True}}) == ["sdc"]
    assert _select({"match": [{"serial": "nothing*"}, {"path": "/dev/vda"}]}) == ["vda"]  # list: first that hits


def test_exact_serial_falls_back_to_id_serial_short_only_without_id_serial() -> None:
    bare = DiskFacts("sde", TB, {"ID_SERIAL_SHORT": "ONLYSHORT01"})
    sata = BENCH["sata"]
    assert subiquity_matches({"serial": "ONLYSHORT01"}, [bare, sata]) == [bare]
    assert subiquity_matches({"serial": sata.id_serial_short}, [bare, sata]) == []


def test_a_disk_of_size_zero_never_matches() -> None:
    reader = DiskFacts("sdf", 0, udev_properties("usb", "SD Reader", "000000001", vendor="Generic"))
    assert subiquity_matches({"match": {"serial": "*"}}, [reader]) == []


def _model(firmware: str):
    model = load_model()
    return dataclasses.replace(model, host=dataclasses.replace(model.host, firmware=firmware))


@pytest.mark.parametrize("firmware", ["uefi", "bios"])
def test_default_model_layout_satisfies_the_bootloader_rule(firmware: str) -> None:
    cfg = storage_config(_model(firmware))
    assert bootloader_problems(cfg, firmware) == []
    other = "bios" if firmware == "uefi" else "uefi"
    assert bootloader_problems(cfg, other), "a layout must not satisfy both firmwares' rules"
    actions = cfg["config"]
    flags = {a.get("flag") for a in actions if a["type"] == "partition"}
    disk_os = next(a for a in actions if a["id"] == "disk-os")
    mounts = {a["path"] for a in actions if a["type"] == "mount"}
    if firmware == "uefi":
        assert "boot" in flags and "bios_grub" not in flags and "grub_device" not in disk_os
        assert "/boot/efi" in mounts
    else:
        assert "bios_grub" in flags and "boot" not in flags and disk_os["grub_device"] is True
        assert "/boot/efi" not in mounts
    assert {"/", "/var/lib/docker"} <= mounts


def test_bootloader_rule_refuses_the_one_size_fits_all_layout() -> None:
    old = [
        {"type": "disk", "id": "disk-os", "ptable": "gpt", "serial": "x"},
        {"type": "partition", "id": "part-bios", "device": "disk-os", "size": "1M", "flag": "bios_grub"},
        {"type": "partition", "id": "part-esp", "device": "disk-os", "size": "1G", "flag": "boot", "grub_device": True},
        {"type": "format", "id": "fmt-esp", "volume": "part-esp", "fstype": "fat32"},
        {"type": "mount", "id": "mnt-esp", "device": "fmt-esp", "path": "/boot/efi"},
    ]
    assert any("exactly one disk" in p for p in bootloader_problems(old, "bios"))
    both = [{**old[0], "grub_device": True}, *old[1:]]
    assert any("on both" in p or "one only" in p for p in bootloader_problems(both, "bios"))


def test_bios_variant_renders_and_passes_the_schemas(write_model, capsys) -> None:
    data = default_model_data()
    data["host"]["firmware"] = "bios"
    path = write_model(data)
    assert main(["validate", "--host", str(path)]) == 0, capsys.readouterr()


def test_validate_refuses_matchers_that_could_hit_the_same_disk(write_model, capsys) -> None:
    data = default_model_data()
    data["storage"]["scratch"]["match"] = {"id_serial": "Samsung_SSD_870_EVO_1TB_S6PNNX0T000001"}
    path = write_model(data)
    assert main(["validate", "--host", str(path)]) == 2
    err = capsys.readouterr().err
    line = next(n for n, text in enumerate(path.read_text().splitlines(), 1) if "id_serial:" in text)
    assert f"{path}:{line}: storage.scratch.match.id_serial: could select the same disk as storage.os_disk" in err
    assert "Traceback" not in err


def test_the_glob_is_anchored_at_the_serial() -> None:
    lookalike = DiskFacts("sdg", TB, udev_properties("sata", "Other SSD", "XS6PNNX0T000001"))
    action = render_disk_match(_disk(serial="S6PNNX0T000001", bus="sata"))
    assert subiquity_matches(action, [BENCH["sata"], lookalike]) == [BENCH["sata"]]
