"""Boot the remastered stand-in ISO: SeaBIOS and OVMF, as CD-ROM and as USB stick (qemu-xhci).

The stand-in initrd prints the kernel command line GRUB gave it and the NoCloud seed it read from
the medium (base64); the seed must come back byte-identical to what `builder render` wrote.
Four TCG boots, 20-35 s each.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from builder.cli import main
from builder.isofetch import cache_dir
from builder.qemu import Drive, VmSpec, boot_until_poweroff
from builder.standin import cached_standin_iso
from builder.standin_console import parse_console

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("xorriso") is None,
                       reason="qemu-system-x86 or xorriso not installed (scripts/install-deps)"),
]
BOOT_TIMEOUT = 240


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`builder iso` on the stand-in with the default host model; returns the host's artifact folder."""
    out = tmp_path_factory.mktemp("iso-boot")
    base = cached_standin_iso(cache_dir())
    assert main(["iso", "--base", str(base), "--out", str(out), "--allow-standin"]) == 0
    return out / "prometheus"


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
@pytest.mark.parametrize("kind", ["cdrom", "usb"])
def test_remastered_iso_boots_unattended(built: Path, firmware: str, kind: str, tmp_path: Path) -> None:
    iso = built / "prometheus-autoinstall.iso"
    log = tmp_path / "serial.log"
    spec = VmSpec(name=f"iso-{firmware}-{kind}", serial_log=log, firmware=firmware,
                  drives=(Drive(iso, kind=kind, readonly=True, bootindex=0),))
    started = time.monotonic()
    text = boot_until_poweroff(spec, tmp_path, BOOT_TIMEOUT)
    print(f"{spec.name}: powered off after {time.monotonic() - started:.1f}s")
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
