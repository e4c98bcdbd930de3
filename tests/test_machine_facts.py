"""`builder validate --machine FACTS`: the model's disk matchers and MACs against captured machine facts."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import BuilderError
from builder.model import load_model
from builder.model.machine import load_facts, parse_facts, resolve_against_facts
from tests.conftest import REPO, default_model_data

MACHINES = REPO / "tests" / "data" / "machines"


def _resolve(name: str):
    return resolve_against_facts(load_model(), load_facts(MACHINES / name))


def _picked(report) -> dict[str, list[str]]:
    return {r.key: [d.name for d in r.selected] for r in report.disks}


def _line_of(path: Path, needle: str, after: str | None = None) -> int:
    lines = path.read_text().splitlines()
    start = next(n for n, t in enumerate(lines) if after in t) if after else 0
    return next(n for n, t in enumerate(lines[start:], start + 1) if needle in t)


def test_facts_parse_disks_and_nics() -> None:
    facts = load_facts(MACHINES / "workstation.facts")
    assert facts.firmware == "uefi"
    assert [d.name for d in facts.disks] == ["sda", "nvme0n1"]  # partitions are not disks
    sda = facts.disks[0]
    assert sda.id_serial == "Samsung_SSD_870_EVO_1TB_S6PNNX0T000001" and sda.size == 1000204886016
    assert sda.wwn == "0x5002538f42a1b2c3" and sda.model == "Samsung SSD 870 EVO 1TB"
    assert [n.name for n in facts.nics] == ["eno1", "enp4s0", "docker0"]  # lo is not Ethernet
    vm = load_facts(MACHINES / "packer-vm.facts")
    assert "sr0" not in [d.name for d in vm.disks]  # the ISO's CD-ROM is no install target


def test_nvme_captured_under_old_udev_is_seen_as_the_installer_sees_it() -> None:
    facts = load_facts(MACHINES / "usb-stick-two-nvme.facts")
    nvme = {d.name: d for d in facts.disks}
    assert nvme["nvme0n1"].id_serial == "Samsung_SSD_980_PRO_1TB_S64ANS0T000001_1"
    assert nvme["nvme1n1"].id_serial == "WD_BLACK_SN850X_2000GB_23123A800001_1"
    assert any("udev < 254" in n and "nvme0n1" in n for n in facts.notes)


def test_workstation_resolves_each_disk_and_nic() -> None:
    rep = _resolve("workstation.facts")
    assert rep.problems == ()
    assert _picked(rep) == {"os_disk": ["sda"], "scratch": ["nvme0n1"]}
    assert rep.untouched == ()
    assert {n.key: n.found.name for n in rep.nics if n.found} == {"servers": "eno1", "mgmt": "enp4s0"}


def test_packer_vm_with_faithful_disks_resolves() -> None:
    rep = _resolve("packer-vm.facts")
    assert rep.problems == ()
    assert _picked(rep) == {"os_disk": ["sda"], "scratch": ["nvme0n1"]}


def test_usb_stick_and_second_nvme_are_left_alone() -> None:
    rep = _resolve("usb-stick-two-nvme.facts")
    assert rep.problems == ()
    assert _picked(rep) == {"os_disk": ["sda"], "scratch": ["nvme0n1"]}
    assert sorted(d.name for d in rep.untouched) == ["nvme1n1", "sdb"]
    table = "\n".join(rep.lines())
    assert "left alone" in table and "/dev/sdb (Cruzer Blade" in table and "/dev/nvme1n1 (WD_BLACK" in table


def _validate(model: Path | None, facts: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    argv = ["validate", "--machine", str(facts)] + (["--host", str(model)] if model else [])
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_cli_prints_the_resolution_table(capsys) -> None:
    code, out, err = _validate(None, MACHINES / "usb-stick-two-nvme.facts", capsys)
    assert code == 0, err
    assert "storage.os_disk" in out and "-> /dev/sda (Samsung SSD 870 EVO 1TB, 1.0 TB, sata)" in out
    assert "-> /dev/nvme0n1 (Samsung SSD 980 PRO 1TB" in out
    assert "-> enp6s0 (renamed mgmt0)" in out


def test_missing_disk_is_reported_with_line_and_facts(write_model, capsys) -> None:
    data = default_model_data()
    data["storage"]["os_disk"]["match"]["serial"] = "S6PNNX0T000009"
    path = write_model(data)
    facts = MACHINES / "workstation.facts"
    code, _out, err = _validate(path, facts, capsys)
    assert code == 2
    line = _line_of(path, "serial:", after="os_disk:")
    assert f"{path}:{line}: storage.os_disk.match.serial: matched no disk" in err, err
    assert str(facts) in err and "sda ID_SERIAL=Samsung_SSD_870_EVO_1TB_S6PNNX0T000001" in err
    assert "Traceback" not in err


def test_missing_mac_is_reported_with_line_and_facts(write_model, capsys) -> None:
    data = default_model_data()
    data["network"]["interfaces"]["mgmt"]["mac"] = "52:54:00:99:00:02"
    path = write_model(data)
    code, _out, err = _validate(path, MACHINES / "workstation.facts", capsys)
    assert code == 2
    line = _line_of(path, "mac:", after="mgmt:")
    assert f"{path}:{line}: network.interfaces.mgmt.mac: no NIC of the machine has MAC 52:54:00:99:00:02" in err
    assert "enp4s0 52:54:00:99:00:01" in err and "workstation.facts" in err


def test_old_packer_vm_scsi_scratch_and_bios_are_reported(capsys) -> None:
    code, out, err = _validate(None, MACHINES / "packer-vm-scsi-only.facts", capsys)
    assert code == 2
    assert "storage.scratch.match.serial: matched no disk" in err
    assert "/dev/sdb has serial S64ANS0T000001 on bus scsi, not nvme" in err
    assert "host.firmware: the machine booted with bios" in err
    assert "left alone" in out and "/dev/sdb" in out


def test_matcher_that_hits_two_disks_is_refused(tmp_path: Path, write_model, capsys) -> None:
    # two QEMU disks given the same serial: the OS glob selects both
    text = (MACHINES / "packer-vm-scsi-only.facts").read_text().replace("S64ANS0T000001", "S6PNNX0T000001")
    facts = tmp_path / "twins.facts"
    facts.write_text(text.replace("### firmware\nbios", "### firmware\nuefi"))
    path = write_model(default_model_data())
    code, _out, err = _validate(path, facts, capsys)
    assert code == 2
    line = _line_of(path, "serial:", after="os_disk:")
    assert f"{path}:{line}: storage.os_disk.match.serial: matched 2 disks (/dev/sda, /dev/sdb)" in err, err


def test_bad_facts_files_are_clear_errors(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.facts"
    bad.write_text("NAME SERIAL\nsda S6PNNX0T000001\n")
    code, _out, err = _validate(None, bad, capsys)
    assert code == 2 and "not a machine facts file" in err and "Traceback" not in err
    with pytest.raises(BuilderError, match="lack the section"):
        parse_facts("### builder-machine-facts 1\n### firmware\nuefi\n", "y.facts")
    with pytest.raises(BuilderError, match="lsblk is not JSON"):
        parse_facts("### builder-machine-facts 1\n### firmware\nuefi\n### lsblk\n{\n### udev\n### ip\n[]\n", "z")
    no_udev = (MACHINES / "workstation.facts").read_text().split("### udev")[0] + "### udev\n### ip\n[]\n"
    with pytest.raises(BuilderError, match="udev holds no disk records"):
        parse_facts(no_udev, "w.facts")
    code, _out, err = _validate(None, tmp_path / "missing.facts", capsys)
    assert code == 2 and "not found" in err


def test_capture_command_is_one_shell_command_that_parses(tmp_path: Path) -> None:
    import shutil
    import subprocess

    from builder.model.machine import CAPTURE_COMMAND

    assert subprocess.run(["bash", "-n", "-c", CAPTURE_COMMAND], check=False).returncode == 0
    if not (shutil.which("udevadm") and shutil.which("lsblk") and shutil.which("ip")):
        pytest.skip("udevadm/lsblk/ip not all installed here")
    subprocess.run(["bash", "-c", CAPTURE_COMMAND], cwd=tmp_path, check=True, capture_output=True)
    facts = load_facts(tmp_path / "prometheus.facts")
    assert facts.firmware in ("uefi", "bios")


def test_disk_behind_a_sas_controller_gets_a_hint(write_model, capsys, tmp_path: Path) -> None:
    # a SATA SSD on a SAS HBA: scsi_id builds ID_SERIAL from the WWN, the label's serial is ID_SCSI_SERIAL
    text = (MACHINES / "workstation.facts").read_text()
    text = text.replace("E: ID_SERIAL=Samsung_SSD_870_EVO_1TB_S6PNNX0T000001",
                        "E: ID_SERIAL=35002538f42a1b2c3\nE: ID_SCSI_SERIAL=S6PNNX0T000001")
    facts = tmp_path / "hba.facts"
    facts.write_text(text)
    code, _out, err = _validate(None, facts, capsys)
    assert code == 2
    assert "storage.os_disk.match.serial: matched no disk" in err
    assert "/dev/sda has serial S6PNNX0T000001, but behind its controller" in err and "id_serial" in err
