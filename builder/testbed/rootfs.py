"""The stand-in installer's "installed system": the cached stand-in image's root filesystem as a squashfs.

The stand-in ISO carries it as /casper/standin-rootfs.squashfs (like Ubuntu's ISO carries its
install sources). The stand-in installer unpacks it onto the root partition it formatted, then writes
fstab, the first-boot seed, netplan and GRUB, so the disk Packer keeps boots real cloud-init, openssh
and netplan by its own firmware.

Built without loop mounts: `debugfs rdump` of the image's ext4, then every inode's mode, owner and
group are set from `debugfs ls -p` (rdump drops setuid/setgid/sticky bits). Two changes to the
image's files, both stand-in only:
- the initramfs lists the bus drivers the Packer VM presents (AHCI, NVMe, virtio-scsi besides
  virtio-blk): the image's initramfs is built with MODULES=list for direct boot from virtio-blk;
- a unit prints the installed system's state to the serial port early in boot
  (data/standin-iso/installed-status), since the installed kernel gets no console arguments.
Cached under the image's key and this module's inputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from builder.errors import BuilderError
from builder.resources import resource
from builder.run import require_tool, run
from builder.store import cache_lock, staged_file
from builder.testbed.image import StandinImage, build_image

log = logging.getLogger("builder.testbed.rootfs")

ROOTFS_NAME = "standin-rootfs.squashfs"  # under /casper/ on the stand-in ISO
FORMAT_VERSION = 1
# initramfs modules of the installed stand-in: every bus the Packer VM can put the OS disk on
INSTALLED_INITRD_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "sd_mod", "ahci", "nvme", "ext4", "vfat",
                            "nls_cp437", "nls_ascii")
STATUS_UNIT = """[Unit]
Description=STAND-IN: print the installed system's state on the serial port
DefaultDependencies=no
After=local-fs.target
Wants=local-fs.target

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/standin-installed-status

[Install]
WantedBy=sysinit.target
"""


def _status_script() -> bytes:
    return resource("testbed", "standin-iso", "installed-status").read_bytes()


def rootfs_key(image: StandinImage) -> str:
    h = hashlib.sha256(f"{FORMAT_VERSION}:{image.key}:{','.join(INSTALLED_INITRD_MODULES)}".encode())
    h.update(STATUS_UNIT.encode() + _status_script())
    return h.hexdigest()[:16]


def standin_rootfs(cache: Path, image: StandinImage | None = None) -> Path:
    """The cached squashfs of the stand-in image's root filesystem (built once, ~1-2 min)."""
    image = image or build_image()
    out = cache / "standin" / f"rootfs-{rootfs_key(image)}.squashfs"
    with cache_lock(cache, out.stem):
        return _standin_rootfs(out, image)


def _standin_rootfs(out: Path, image: StandinImage) -> Path:
    if out.exists():
        return out
    for tool, pkg in (("debugfs", "e2fsprogs"), ("mksquashfs", "squashfs-tools")):
        require_tool(tool, pkg)
    if os.geteuid() != 0:
        raise BuilderError("building the stand-in root filesystem needs root (file owners, chroot)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="standin-rootfs-", dir=out.parent) as tmp, \
            staged_file(out, overwrite=True) as staged:
        root = Path(tmp) / "root"
        root.mkdir()
        extract_ext4(image.disk, root)
        _customize(root)
        sde = os.environ.get("SOURCE_DATE_EPOCH", "1769126400")
        staged.unlink(missing_ok=True)
        run(["mksquashfs", root, staged, "-noappend", "-comp", "lz4", "-no-progress", "-quiet",
             "-mkfs-time", sde, "-all-time", sde], timeout=1800)
    log.info("stand-in rootfs: %s (%d MiB)", out, out.stat().st_size >> 20)
    return out


def extract_ext4(disk: Path, root: Path) -> None:
    """Every file of the ext4 image `disk` into `root` with its exact mode, owner and group."""
    run(["debugfs", "-R", f"rdump / {root}", disk], timeout=900)
    dirs = ["/"] + sorted("/" + str(Path(d).relative_to(root)) for d, _, _ in os.walk(root) if Path(d) != root)
    script = Path(str(root) + ".ls")
    script.write_text("".join(f'ls -p "{d}"\n' for d in dirs if '"' not in d))
    try:
        listing = run(["debugfs", "-f", script, disk], timeout=900).stdout.decode(errors="replace")
    finally:
        script.unlink(missing_ok=True)
    current = "/"
    for line in listing.splitlines():
        if line.startswith("debugfs:"):
            current = line.split('"')[1] if '"' in line else current
            continue
        parts = line.split("/")
        if len(parts) < 7 or parts[5] in (".", ".."):
            continue
        mode, uid, gid, name = int(parts[2], 8), int(parts[3]), int(parts[4]), parts[5]
        path = root / current.lstrip("/") / name
        if not os.path.lexists(path):
            continue
        os.lchown(path, uid, gid)
        if not path.is_symlink():
            os.chmod(path, mode & 0o7777)


def _customize(root: Path) -> None:
    (root / "etc" / "initramfs-tools" / "modules").write_text("".join(f"{m}\n" for m in INSTALLED_INITRD_MODULES))
    run(["chroot", root, "update-initramfs", "-u", "-k", "all"], timeout=900)
    for stale in root.glob("boot/*.old-dkms"):
        stale.unlink()
    sbin = root / "usr" / "local" / "sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    (sbin / "standin-installed-status").write_bytes(_status_script())
    (sbin / "standin-installed-status").chmod(0o755)
    unit = root / "etc" / "systemd" / "system" / "standin-installed-status.service"
    unit.write_text(STATUS_UNIT)
    wants = root / "etc" / "systemd" / "system" / "sysinit.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).unlink(missing_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    shutil.rmtree(root / "var" / "tmp", ignore_errors=True)
    (root / "var" / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "var" / "tmp", 0o1777)
