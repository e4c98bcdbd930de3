"""The STANDIN first-boot image: cached by its inputs, exported with kernel + initrd (needs root)."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from builder.cli import main
from builder.testbed.image import STANDIN_NAME, build_image, default_inputs

pytestmark = pytest.mark.vm


def test_second_build_is_a_cache_hit(firstboot_image):
    t = time.monotonic()
    again = build_image()
    assert time.monotonic() - t < 10
    assert again == firstboot_image
    assert again.key == default_inputs().key()
    manifest = json.loads((again.disk.parent / "manifest.json").read_text())
    assert manifest["name"] == STANDIN_NAME and manifest["key"] == again.key


def test_image_content_is_a_clean_standin(firstboot_image):
    def cat(path: str) -> str:
        return subprocess.run(["debugfs", "-R", f"cat {path}", str(firstboot_image.disk)],
                              capture_output=True, text=True).stdout

    def ls(path: str) -> str:
        return subprocess.run(["debugfs", "-R", f"ls -l {path}", str(firstboot_image.disk)],
                              capture_output=True, text=True).stdout

    assert cat("/etc/hostname").strip() == STANDIN_NAME
    assert "ssh_host_" not in ls("/etc/ssh")
    assert " sources.list\n" not in ls("/etc/apt") + "\n"
    assert ".list" not in ls("/etc/apt/sources.list.d")
    assert cat("/etc/machine-id") == ""
    assert "MODULES=list" in cat("/etc/initramfs-tools/conf.d/standin-modules")
    assert "virtio_blk" in cat("/etc/initramfs-tools/modules")
    assert "NoCloud" in cat("/etc/cloud/cloud.cfg.d/90-standin-datasource.cfg")


def test_cli_exports_disk_kernel_initrd(firstboot_image, tmp_path, capsys):
    out = tmp_path / "standin-firstboot.img"
    assert main(["standin", "image", "--out", str(out)]) == 0
    assert out.stat().st_size == firstboot_image.disk.stat().st_size
    assert (tmp_path / "standin-firstboot.vmlinuz").read_bytes() == firstboot_image.kernel.read_bytes()
    assert (tmp_path / "standin-firstboot.initrd").read_bytes() == firstboot_image.initrd.read_bytes()
    assert "STANDIN" in capsys.readouterr().out
