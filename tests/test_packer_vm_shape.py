"""The Packer VM plays the host: the model's firmware, NIC MACs and disks whose udev ID_SERIAL the
rendered autoinstall matchers select, per bus; and `builder packer` decides from the installer's markers."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from builder.model import Disk, DiskMatch, load_model
from builder.model.disks import DiskFacts, storage_config, subiquity_matches, udev_properties
from builder.packer import (
    INSTALL_FAILED,
    INSTALL_OK,
    TEMPLATE,
    PackerPaths,
    SerialWatch,
    install_verdict,
    marker_of,
    packer_vars,
    qemu_disk_device,
    vm_udev_properties,
)

SERIALS = {"os_disk": "PROMOS0001", "scratch": "PROMSCR0001"}
BUSES = ("sata", "nvme", "virtio", "scsi")


def _model(os_bus: str, scratch_bus: str, firmware: str = "uefi"):
    m = load_model()
    storage = dataclasses.replace(
        m.storage,
        os_disk=dataclasses.replace(m.storage.os_disk, match=DiskMatch(serial=SERIALS["os_disk"], bus=os_bus)),
        scratch=dataclasses.replace(m.storage.scratch, match=DiskMatch(serial=SERIALS["scratch"], bus=scratch_bus)),
    )
    return dataclasses.replace(m, storage=storage, host=dataclasses.replace(m.host, firmware=firmware))


def _vm_disks(model) -> list[DiskFacts]:
    """The disks the installer sees in the Packer VM, as udev describes them from the QEMU devices."""
    return [DiskFacts(name, 20 * 10**9, vm_udev_properties(getattr(model.storage, key), key))
            for name, key in (("sda", "os_disk"), ("sdb", "scratch"))]


@pytest.mark.parametrize("os_bus", BUSES)
@pytest.mark.parametrize("scratch_bus", BUSES)
def test_each_rendered_matcher_selects_exactly_its_vm_disk(os_bus: str, scratch_bus: str, tmp_path: Path) -> None:
    model = _model(os_bus, scratch_bus)
    disks = _vm_disks(model)
    # a USB stick in the VM too: never selected
    disks.append(DiskFacts("sdc", 8 * 10**9, udev_properties("usb", "Flash", "PROMOS0001", vendor="QEMU"),
                           in_use=True))
    actions = {a["id"]: a for a in storage_config(model)["config"] if a["type"] == "disk"}
    assert [d.name for d in subiquity_matches(actions["disk-os"], disks)] == ["sda"]
    assert [d.name for d in subiquity_matches(actions["disk-scratch"], disks)] == ["sdb"]
    values = packer_vars(model, tmp_path / "x.iso", "0" * 64, PackerPaths(tmp_path))
    assert values["os_disk_device"] == qemu_disk_device(model.storage.os_disk, "os_disk")
    assert f"serial={SERIALS['os_disk']}" in values["os_disk_device"]


@pytest.mark.parametrize(("bus", "device", "id_serial"), [
    ("sata", "ide-hd,bus=ahci0.0,serial=PROMOS0001", "QEMU_HARDDISK_PROMOS0001"),
    ("nvme", "nvme,serial=PROMOS0001", "QEMU_NVMe_Ctrl_PROMOS0001_1"),
    ("virtio", "virtio-blk-pci,serial=PROMOS0001", "PROMOS0001"),
    ("scsi", "scsi-hd,bus=scsi0.0,serial=PROMOS0001,device_id=PROMOS0001", "0QEMU_QEMU_HARDDISK_PROMOS0001"),
])
def test_qemu_device_per_bus_and_the_id_serial_udev_gives_it(bus: str, device: str, id_serial: str) -> None:
    disk = Disk(match=DiskMatch(serial="PROMOS0001", bus=bus))  # type: ignore[arg-type]
    assert qemu_disk_device(disk, "os_disk") == device
    assert vm_udev_properties(disk, "os_disk")["ID_SERIAL"] == id_serial


def test_a_vm_disk_of_another_bus_is_not_matched() -> None:
    """The test is able to fail: the sata glob does not select the same serial presented as NVMe."""
    model = _model("sata", "nvme")
    wrong = _model("nvme", "nvme")
    action = next(a for a in storage_config(model)["config"] if a["id"] == "disk-os")
    assert subiquity_matches(action, _vm_disks(wrong)) == []


@pytest.mark.parametrize("firmware", ["uefi", "bios"])
def test_packer_boots_the_modelled_firmware_and_macs(firmware: str, tmp_path: Path) -> None:
    model = _model("sata", "nvme", firmware)
    values = packer_vars(model, tmp_path / "x.iso", "0" * 64, PackerPaths(tmp_path))
    assert values["firmware"] == firmware
    assert values["servers_mac"] == model.servers.mac.lower() and values["mgmt_mac"] == model.mgmt.mac.lower()
    text = TEMPLATE.read_text()
    assert re.search(r'firmware_args = var.firmware == "uefi" \? \[\["-bios", var.ovmf_code\]\] : \[\]', text)
    assert '"${var.os_disk_device},drive=osdisk,bootindex=1"' in text
    assert '"${var.scratch_disk_device},drive=scratch"' in text
    assert "mac=${var.servers_mac}" in text and "mac=${var.mgmt_mac}" in text


def test_install_verdict_from_markers() -> None:
    ok = f"boot...\nSTANDIN: disk-os matched /dev/sda\n{INSTALL_OK}\n"
    assert install_verdict(ok).status == "ok"
    failed = ("STANDIN: disk-os matched no disk (match serial '*_X')\n"
              f"\x1b[0m{INSTALL_FAILED}: disk-os matched no disk (match serial '*_X')\r\n{INSTALL_OK}\n")
    v = install_verdict(failed)
    assert v.status == "failed" and v.line == f"{INSTALL_FAILED}: disk-os matched no disk (match serial '*_X')"
    assert v.context == ("STANDIN: disk-os matched no disk (match serial '*_X')",)
    assert "disk-os matched no disk" in v.message()
    # a log line showing the command that prints the marker is not the verdict
    echoed = f"Running command ['sh', '-c', 'echo {INSTALL_FAILED}']\n"
    assert marker_of(echoed) is None and install_verdict(echoed).status == "unknown"
    none = "STANDIN: ERROR: install medium with label 'X' not found\nSTANDIN: done, powering off\n"
    v = install_verdict(none)
    assert v.status == "unknown" and "install medium" in v.line and INSTALL_OK in v.message()


def test_serial_watch_sees_the_failure_line_as_it_is_written(tmp_path: Path) -> None:
    import time

    log = tmp_path / "serial.log"
    seen: list[str] = []
    with SerialWatch(log, seen.append) as watch:
        time.sleep(0.6)  # the file does not exist yet: fine
        with open(log, "w") as f:
            f.write("kernel noise\nSTANDIN: disk-os matched no disk\n")
            f.flush()
            time.sleep(0.8)
            assert not watch.failed()
            f.write(f"{INSTALL_FAILED}: disk-os matched no di")
            f.flush()
            time.sleep(0.8)
            assert not watch.failed()  # half a line is not a verdict yet
            f.write("sk\n")
            f.flush()
            deadline = time.monotonic() + 5
            while not watch.failed() and time.monotonic() < deadline:
                time.sleep(0.1)
    assert watch.failure == f"{INSTALL_FAILED}: disk-os matched no disk"
    assert seen == ["  serial| STANDIN: disk-os matched no disk",
                    f"  serial| {INSTALL_FAILED}: disk-os matched no disk"]


def test_run_streaming_stops_the_command_when_asked() -> None:
    import time

    from builder.run import run_streaming

    started = time.monotonic()
    rc = run_streaming(["sh", "-c", "echo started; sleep 60"], on_line=lambda _line: None,
                       stop_when=lambda: time.monotonic() - started > 1)
    assert rc != 0 and time.monotonic() - started < 10


FAKE_PACKER = """#!/bin/sh
# stands in for `packer build`: the "installer" writes its lines to the serial log, then hangs the way
# subiquity waits after an error (it never powers off)
for a in "$@"; do
  case $a in serial_log=*) log=${a#serial_log=} ;; output_directory=*) out=${a#output_directory=} ;; esac
done
mkdir -p "$out"; echo disk > "$out/prometheus"
echo "==> qemu.autoinstall: Waiting for shutdown..."
printf '%s\\n' "$@" > "$(dirname "$log")/args"
printf 'boot noise\\nSTANDIN: disk-os matched no disk\\n' > "$log"
sleep 1
printf '%s\\n' "$LINE" >> "$log"
exec sleep 300
"""


@pytest.mark.parametrize(("line", "fails_fast"), [
    (f"{INSTALL_FAILED}: curtin command block-meta: disk-os matched no disk", True),
    (f"{INSTALL_OK}", False),
])
def test_packer_is_stopped_at_the_failure_marker_and_nothing_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, fails_fast: bool
) -> None:
    import time

    import builder.packer as packer_mod
    from builder.errors import BuilderError

    fake = tmp_path / "packer"
    fake.write_text(FAKE_PACKER)
    fake.chmod(0o755)
    monkeypatch.setattr(packer_mod, "require_tool", lambda *a, **k: str(fake))
    monkeypatch.setattr(packer_mod, "packer_validate", lambda *a, **k: None)
    monkeypatch.setenv("LINE", line)
    model = load_model()
    out = tmp_path / "out"
    varfile = tmp_path / "x.pkrvars.hcl"
    varfile.write_text("")
    lines: list[str] = []
    started = time.monotonic()
    if fails_fast:
        with pytest.raises(BuilderError) as err:
            packer_mod.packer_build(model, varfile, template=tmp_path / "t.pkr.hcl", out_root=out, accel="tcg",
                                    on_line=lines.append, timeout=60)
        assert time.monotonic() - started < 20  # not the timeout: stopped at the marker line
        assert err.value.message.startswith(f"the installer failed: {line}")
        assert "STANDIN: disk-os matched no disk" in err.value.message  # the error lines before it
        paths = PackerPaths.for_host(model, out)
        assert not paths.build.exists() and (paths.failed / "serial.log").is_file()
        assert f"  serial| {line}" in lines
    else:  # the success marker does not stop Packer: it must finish (here: its timeout)
        with pytest.raises(BuilderError, match="timed out"):
            packer_mod.packer_build(model, varfile, template=tmp_path / "t.pkr.hcl", out_root=out, accel="tcg",
                                    on_line=lines.append, timeout=4)
