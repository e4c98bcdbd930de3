"""Packer variables from the model, the template's shape, and `packer validate` on them (no boot)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import BuilderError
from builder.model import DiskMatch, load_model
from builder.packer import (
    PACKER_ENV,
    TEMPLATE,
    PackerPaths,
    disk_serial,
    machine_vars,
    packer_validate,
    write_pkrvars,
)

needs_packer = pytest.mark.skipif(shutil.which("packer") is None, reason="packer not installed (scripts/install-deps)")


@pytest.fixture
def fake_iso(tmp_path: Path) -> Path:
    iso = tmp_path / "in" / "prometheus-autoinstall.iso"
    iso.parent.mkdir()
    iso.write_bytes(b"not really an ISO, but Packer only checks the path and checksum when building\n")
    return iso


def test_pkrvars_are_deterministic_and_from_the_model(tmp_path: Path, fake_iso: Path) -> None:
    model = load_model()
    first = write_pkrvars(model, fake_iso, tmp_path / "out").read_bytes()
    again = write_pkrvars(model, fake_iso, tmp_path / "out")
    assert again == (tmp_path / "out" / "prometheus" / "packer" / "prometheus.pkrvars.hcl").resolve()
    assert again.read_bytes() == first
    text = first.decode()
    assert 'servers_mac         = "52:54:00:60:00:01"' in text
    assert 'mgmt_mac            = "52:54:00:99:00:01"' in text
    assert f'os_disk_device      = "ide-hd,bus=ahci0.0,serial={model.storage.os_disk.match.serial}"' in text
    assert f'scratch_disk_device = "nvme,serial={model.storage.scratch.match.serial}"' in text
    assert 'firmware            = "uefi"' in text
    assert 'servers_netdev      = "net=10.60.0.0/24,host=10.60.0.1,dhcpstart=10.60.0.50"' in text
    assert "accelerator" not in text  # machine-specific: passed with -var, never written
    keys = [line.split("=")[0].strip() for line in text.splitlines() if not line.startswith("#")]
    assert keys == sorted(keys)


def test_template_boots_without_typing_and_waits_for_poweroff() -> None:
    text = TEMPLATE.read_text()
    code = "\n".join(line.split("#")[0] for line in text.splitlines())
    assert "boot_command" not in code
    assert 'communicator     = "none"' in code
    assert "shutdown_timeout" in code
    assert '["-no-reboot"]' in code  # the installer's final reboot ends the build
    assert "required_plugins" not in code and "templatefile(" not in code  # packer 1.6.6
    assert not any(line.strip().startswith("firmware ") for line in code.splitlines())


def test_disk_serial_must_be_reproducible_in_qemu() -> None:
    model = load_model()
    disk = model.storage.os_disk
    assert disk_serial(disk, "os_disk") == disk.match.serial
    by_id_serial = dataclasses.replace(disk, match=DiskMatch(id_serial="Samsung_SSD_870_EVO_1TB_S6PNNX0T000001"))
    with pytest.raises(BuilderError, match="id_serial"):
        disk_serial(by_id_serial, "os_disk")
    too_long = dataclasses.replace(disk, match=DiskMatch(serial="S" * 21, bus="sata"))
    with pytest.raises(BuilderError, match="20 characters"):
        disk_serial(too_long, "os_disk")
    comma = dataclasses.replace(disk, match=DiskMatch(serial="S6PN,X", bus="sata"))
    with pytest.raises(BuilderError, match="commas"):
        disk_serial(comma, "os_disk")


def test_machine_vars_follow_the_shared_accel_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BUILDER_VM_CPUS", raising=False)
    assert machine_vars("kvm") == {"accelerator": "kvm", "cpu_model": "host", "cpus": "2"}
    assert machine_vars("tcg") == {"accelerator": "tcg", "cpu_model": "max", "cpus": "2"}
    monkeypatch.setenv("BUILDER_VM_CPUS", "1")
    assert machine_vars("tcg")["cpus"] == "1"
    monkeypatch.setenv("BUILDER_VM_CPUS", "0")
    with pytest.raises(BuilderError, match=r"BUILDER_VM_CPUS='0': expected a number >= 1"):
        machine_vars("tcg")
    assert PACKER_ENV["CHECKPOINT_DISABLE"] == "1"


@needs_packer
def test_packer_validate_accepts_generated_vars(tmp_path: Path, fake_iso: Path) -> None:
    model = load_model()
    varfile = write_pkrvars(model, fake_iso, tmp_path / "out")
    packer_validate(varfile)
    packer_validate(varfile, overrides={**machine_vars("kvm"), "firmware": "uefi"})


@needs_packer
def test_packer_validate_rejects_an_existing_output_directory(tmp_path: Path, fake_iso: Path) -> None:
    model = load_model()
    varfile = write_pkrvars(model, fake_iso, tmp_path / "out")
    PackerPaths.for_host(model, tmp_path / "out").build.joinpath("images").mkdir(parents=True)
    with pytest.raises(BuilderError, match="validate"):
        packer_validate(varfile)


@needs_packer
def test_cli_packer_validate_only(tmp_path: Path, fake_iso: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["packer", "--iso", str(fake_iso), "--out", str(tmp_path / "out"), "--validate-only"])
    assert rc == 0
    (tmp_path / "out" / "prometheus" / "packer" / "build" / "images").mkdir(parents=True)  # an earlier build
    assert main(["packer", "--iso", str(fake_iso), "--out", str(tmp_path / "out"), "--validate-only"]) == 0
    assert "packer validate prometheus.pkr.hcl: ok" in capsys.readouterr().out


def test_cli_packer_without_iso_names_builder_iso(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["packer", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ISO not found" in err and "builder iso --base" in err


@needs_packer
def test_failed_packer_build_passes_exit_code_and_keeps_logs(
    tmp_path: Path, fake_iso: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ISO that no longer matches its checksum: Packer stops before booting; nothing half-built is kept."""
    from builder.packer import packer_build

    model = load_model()
    out = tmp_path / "out"
    varfile = write_pkrvars(model, fake_iso, out)
    fake_iso.write_bytes(b"changed after the variables were written\n")
    lines: list[str] = []
    result = packer_build(model, varfile, out_root=out, accel="tcg", on_line=lines.append, timeout=120)
    assert result.returncode == 1 and not result.ok
    assert any("checksum" in line.lower() for line in lines), lines
    paths = PackerPaths.for_host(model, out)
    assert not paths.build.exists()
    assert result.packer_log == paths.failed / "packer.log" and result.packer_log.is_file()
    assert sorted(p.name for p in paths.root.iterdir()) == ["last-failure", "prometheus.pkrvars.hcl"]
