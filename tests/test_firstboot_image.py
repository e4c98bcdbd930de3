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


def _installed(disk) -> set[str]:
    """Package names dpkg records as installed on the ext4 image `disk`."""
    status = subprocess.run(["debugfs", "-R", "cat /var/lib/dpkg/status", str(disk)],
                            capture_output=True, text=True).stdout
    out = set()
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " ")
        if fields.get("Status") == "install ok installed":
            out.add(fields["Package"])
    return out


def test_the_image_carries_only_the_minimal_install(firstboot_image):
    """Like ubuntu-server-minimal: no nfs-common, rpcbind or gnupg; their real packages lie beside it."""
    from builder.seed.packages import INSTALL_TIME

    have = _installed(firstboot_image.disk)
    assert {"cloud-init", "openssh-server", "netplan.io", "sudo", "locales"} <= have
    assert not {"nfs-common", "rpcbind", "gnupg", "dirmngr"} & have
    downloaded = {p.name.split("_")[0] for p in firstboot_image.install_debs.glob("*.deb")}
    assert {"nfs-common", "rpcbind", "gnupg"} <= downloaded
    assert not downloaded & have  # only the closure the image lacks
    assert set(INSTALL_TIME) - have <= downloaded
    generators = subprocess.run(["debugfs", "-R", "ls -l /etc/systemd/system-generators", str(firstboot_image.disk)],
                                capture_output=True, text=True).stdout
    assert "systemd-ssh-generator" in generators  # masked: noble's systemd 255 has none


def test_install_time_packages_come_from_the_repository_by_the_installer_step(firstboot_image):
    """The direct-boot "installed system": the minimal image + exactly the closure of what is asked for."""
    from builder.seed.packages import INSTALL_TIME
    from builder.testbed.installrepo import installed_image

    installed = installed_image(firstboot_image, INSTALL_TIME)
    have, base = _installed(installed.disk), _installed(firstboot_image.disk)
    assert {"nfs-common", "rpcbind", "gnupg", "ca-certificates"} <= have
    downloaded = {p.name.split("_")[0] for p in firstboot_image.install_debs.glob("*.deb")}
    assert have - base <= downloaded  # nothing beyond the repository's closure
    assert have - base >= {"nfs-common", "rpcbind", "gnupg"}
    ls = subprocess.run(["debugfs", "-R", "ls -l /run", str(installed.disk)], capture_output=True, text=True).stdout
    assert "standin-apt" not in ls and "standin-repo" not in ls  # temporary sources, lists, mount point gone
    policy = subprocess.run(["debugfs", "-R", "stat /usr/sbin/policy-rc.d", str(installed.disk)],
                            capture_output=True, text=True)
    assert "not found" in policy.stdout + policy.stderr
    assert installed_image(firstboot_image, INSTALL_TIME) == installed  # cached by (image, packages)


def test_a_package_the_repository_lacks_fails_the_install_with_apts_error(firstboot_image, tmp_path):
    from builder.errors import BuilderError
    from builder.testbed.installrepo import install_packages, install_repo, unmount_below
    from builder.testbed.rootfs import extract_ext4

    root = tmp_path / "root"
    root.mkdir()
    extract_ext4(firstboot_image.disk, root)
    try:
        with pytest.raises(BuilderError) as err:
            install_packages(root, install_repo(firstboot_image), ("nfs-common", "no-such-package"))
    finally:
        unmount_below(root)
    assert ("PROMETHEUS-INSTALL-FAILED: apt-get install nfs-common no-such-package failed: "
            "E: Unable to locate package no-such-package") in err.value.message
    assert not (root / "run" / "standin-apt").exists() and not (root / "usr/sbin/policy-rc.d").exists()
    assert not (root / "usr/sbin/mount.nfs").exists() and not (root / "sbin/mount.nfs").exists()  # one transaction
