"""Boot the remastered stand-in ISO: SeaBIOS and OVMF, as CD-ROM and as USB stick (qemu-xhci).

The stand-in initrd prints the kernel command line GRUB gave it and the NoCloud seed it read from
the medium (base64); the seed must come back byte-identical to what `builder render` wrote.
Four TCG boots of 20-35 s each, two at a time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.cli import main
from builder.media.fetch import cache_dir
from builder.qemu import Drive, VmSpec
from builder.testbed.console import parse_console
from builder.testbed.standin_iso import cached_standin_iso
from tests.vmboot import boot_all

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("xorriso") is None,
                       reason="qemu-system-x86 or xorriso not installed (scripts/install-deps)"),
]
BOOT_TIMEOUT = 300
CASES = [(fw, kind) for kind in ("cdrom", "usb") for fw in ("bios", "uefi")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`builder iso` on the stand-in with the default host model; returns the host's artifact folder."""
    out = tmp_path_factory.mktemp("iso-boot")
    base = cached_standin_iso(cache_dir())
    assert main(["iso", "--base", str(base), "--out", str(out), "--allow-standin"]) == 0
    return out / "prometheus"


@pytest.fixture(scope="module")
def serial_logs(built: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | Exception]:
    """Boot all four cases, two guests at a time; name -> serial log (or the error)."""
    work = tmp_path_factory.mktemp("iso-vms")
    iso = built / "prometheus-autoinstall.iso"
    specs = [VmSpec(name=f"iso-{fw}-{kind}", serial_log=work / f"iso-{fw}-{kind}.log", firmware=fw,
                    drives=(Drive(iso, kind=kind, readonly=True, bootindex=0),)) for fw, kind in CASES]
    logs: dict[str, str | Exception] = {}
    for pair in (specs[:2], specs[2:]):
        logs.update(boot_all(pair, work, BOOT_TIMEOUT))
    return logs


@pytest.mark.parametrize(("firmware", "kind"), CASES)
def test_remastered_iso_boots_unattended(built: Path, serial_logs: dict, firmware: str, kind: str) -> None:
    text = serial_logs[f"iso-{firmware}-{kind}"]
    if isinstance(text, Exception):
        raise text
    report = parse_console(text)
    assert report.cmdline is not None, text[-3000:]
    args = report.cmdline.split()
    assert "autoinstall" in args
    assert "ds=nocloud;s=/cdrom/nocloud/" in args
    for arg in ("console=tty0", "console=ttyS0,115200n8"):  # the model's os.kernel_cmdline
        assert arg in args
    assert report.medium is not None and (
        report.medium.startswith("/dev/sr") if kind == "cdrom" else report.medium.startswith("/dev/sd"))
    assert report.md5_ok is True, "md5sum.txt on the medium does not match its files"
    assert report.seeds["user-data"] == (built / "autoinstall" / "user-data").read_bytes()
    assert report.seeds["meta-data"] == (built / "autoinstall" / "meta-data").read_bytes()
    assert report.seeds["autoinstall.yaml"] == (built / "autoinstall" / "user-data").read_bytes()
