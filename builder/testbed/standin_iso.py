"""Stand-in base ISO: the Ubuntu live-server layout, built from Debian packages only.

It exists so that remastering, BIOS/UEFI × CD/USB boots and PXE can be tested offline. Its initrd
(busybox-static + the Debian kernel's modules) prints the kernel command line and the NoCloud seed
it finds; when the kernel line asks for autoinstall it plays the installer's storage contract
(`data/standin-iso/install`: every disk matcher resolved as subiquity does, a failure marker when
one does not select exactly one disk, the success marker otherwise), then powers off. It is marked as a stand-in in
`/.disk/info`, `/.disk/standin` and its volume id, and `builder iso` refuses it without `--allow-standin`.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuilderError
from builder.resources import resource
from builder.run import require_tool, run
from builder.store import cache_lock, staged_file
from builder.testbed.image import build_image
from builder.testbed.rootfs import ROOTFS_NAME, standin_rootfs

log = logging.getLogger("builder.testbed.standin_iso")

STANDIN_VOLID = "STANDIN Ubuntu-Server amd64"

STANDIN_INFO = (
    'Ubuntu-Server 24.04 LTS "Noble Numbat" - STANDIN built from Debian packages, NOT INSTALLABLE\n'
)
# GPT type of the appended EFI System Partition, as Ubuntu's ISO stores it (xorriso byte order).
ESP_TYPE_GUID = "28732ac11ff8d211ba4b00a0c93ec93b"
# GPT type "Basic data" for the ISO partition, as in Ubuntu's ISO.
ISO_PART_TYPE_GUID = "a2a0d0ebe5b9334487c068b6b72699c7"
KERNEL_META_PACKAGE = "linux-image-amd64"
# Modules for CD-ROM, SATA/IDE, USB (xhci + usb-storage), virtio and the usual QEMU NICs.
WANTED_MODULES = (
    "isofs", "sr_mod", "ata_piix", "ahci", "sd_mod", "usb_storage", "uas", "xhci_pci",
    "virtio_pci", "virtio_blk", "virtio_scsi", "virtio_net", "e1000", "e1000e", "loop", "nvme",
    # the filesystems the stand-in installer formats and mounts (ESP: vfat with its code pages)
    "ext4", "crc32c_generic", "vfat", "nls_cp437", "nls_utf8", "nls_ascii",
)
# Tools the stand-in installer partitions and formats with, copied from the build host (Debian) with
# the shared libraries `ldd` names: (tool, Debian package).
INSTALL_TOOLS = (("sfdisk", "fdisk"), ("mke2fs", "e2fsprogs"), ("mkfs.fat", "dosfstools"), ("blkid", "util-linux"),
                 ("unsquashfs", "squashfs-tools"))
STANDIN_DATA_FILES = ("init", "udhcpc.script", "install", "storage.awk", "packages.awk", "late-commands.awk",
                      "install-packages",
                      "embedded.cfg", "grub.cfg", "loopback.cfg",
                      "installed-efi.cfg", "installed-bios.cfg", "installed-status")
GRUB_COMMON_MODULES = (
    "iso9660", "part_msdos", "part_gpt", "fat", "normal", "configfile", "search", "search_fs_file",
    "search_label", "linux", "echo", "test", "serial", "terminal", "gzio", "ls", "cat", "sleep",
)
GRUB_BIOS_MODULES = ("biosdisk",)
GRUB_EFI_MODULES = ("efi_gop", "efi_uga")
# The installed stand-in system's UEFI bootloader: its embedded config (data/standin-iso/installed-efi.cfg)
# reads the grub.cfg the installer writes beside it on the ESP, which finds the root by UUID on ext4/GPT.
GRUB_INSTALLED_EFI_MODULES = GRUB_COMMON_MODULES + GRUB_EFI_MODULES + ("ext2",)
INSTALLED_EFI = "standin/bootx64.efi"  # on the ISO; the installer copies it to ESP:/EFI/BOOT/BOOTX64.EFI
# BIOS: GRUB's boot.img (MBR code) and a core.img for the bios_grub partition, which the installer patches
# with the partition's sector as grub-bios-setup would (the stand-in cannot run grub-install). The core
# finds the root filesystem by the marker file the installer writes, then reads its grub.cfg (root by UUID).
GRUB_INSTALLED_BIOS_MODULES = GRUB_COMMON_MODULES + GRUB_BIOS_MODULES + ("ext2", "search_fs_uuid")
INSTALLED_BIOS_CORE = "standin/core.img"
INSTALLED_BIOS_BOOT = "standin/boot.img"


@dataclass(frozen=True)
class KernelTree:
    root: Path  # extracted linux-image package
    version: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version


def data_file(name: str) -> bytes:
    return resource("testbed", "standin-iso", name).read_bytes()


def kernel_deb(cache: Path) -> Path:
    """The Debian kernel package, downloaded once with `apt-get download` into the cache."""
    with cache_lock(cache, "kernel-deb"):
        return _kernel_deb(cache)


def _kernel_deb(cache: Path) -> Path:
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob("linux-image-*-amd64_*.deb"))
    if found:
        return found[-1]
    require_tool("apt-get", "apt")
    for attempt in (1, 2):
        deps = run(["apt-cache", "depends", KERNEL_META_PACKAGE], check=False).stdout.decode()
        m = re.search(r"Depends:\s*(linux-image-\S+-amd64)", deps)
        if m:
            log.info("downloading %s (Debian kernel for the stand-in) into %s", m.group(1), debs)
            if run(["apt-get", "download", m.group(1)], cwd=debs, timeout=900, check=attempt == 2).returncode == 0:
                break
        if attempt == 2 or os.geteuid() != 0:
            raise BuilderError(
                f"cannot download the kernel package behind {KERNEL_META_PACKAGE} (stale apt lists?)",
                hint="run `apt-get update` first",
            )
        log.info("apt lists look stale: apt-get update")
        run(["apt-get", "update", "-q"], timeout=900)
    found = sorted(debs.glob("linux-image-*-amd64_*.deb"))
    if not found:
        raise BuilderError(f"apt-get download of the stand-in kernel produced no .deb in {debs}")
    return found[-1]


def extract_kernel(deb: Path, dest: Path) -> KernelTree:
    run(["dpkg-deb", "-x", deb, dest])
    versions = sorted(p.name for p in (dest / "lib" / "modules").iterdir())
    if len(versions) != 1:
        raise BuilderError(f"expected one kernel in {deb}, found {versions}")
    return KernelTree(dest, versions[0])


def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    m = re.search(rb"\x00depends=([^\x00]*)\x00", data)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def module_load_order(kernel: KernelTree, wanted: tuple[str, ...] = WANTED_MODULES) -> list[Path]:
    """Module files (relative to the modules dir) in an order where dependencies come first."""
    by_name = {
        p.name.split(".ko")[0].replace("-", "_"): p.relative_to(kernel.modules)
        for p in (kernel.modules / "kernel").rglob("*.ko*")
    }
    builtin = {
        Path(line).name.split(".ko")[0].replace("-", "_")
        for line in (kernel.modules / "modules.builtin").read_text().split()
    }
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        if name in builtin:
            return
        if name not in by_name:
            raise BuilderError(f"kernel {kernel.version} has no module '{name}'")
        for dep in _modinfo_depends(kernel.modules / by_name[name]):
            visit(dep)
        order.append(by_name[name])

    for name in wanted:
        visit(name)
    return order


def install_tool_paths() -> list[Path]:
    """The host's installer tools and every shared library they load (absolute paths, sorted)."""
    found: set[Path] = set()
    for tool, pkg in INSTALL_TOOLS:
        binary = Path(require_tool(tool, pkg))
        found.add(binary)
        out = run(["ldd", binary]).stdout.decode()
        found.update(Path(p) for p in re.findall(r"(/\S+) \(0x[0-9a-f]+\)", out))
    if Path("/etc/mke2fs.conf").is_file():
        found.add(Path("/etc/mke2fs.conf"))
    return sorted(found)


def _copy_install_tools(root: Path) -> None:
    for src in install_tool_paths():
        if src.name in {name for name, _ in INSTALL_TOOLS}:
            dst = root / "usr" / "sbin" / src.name
        else:
            dst = root / src.relative_to("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if dst.parent.name == "sbin" or ".so" in dst.name else 0o644)


def _set_tree_mtimes(root: Path, epoch: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(Path(dirpath) / name, (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def build_initrd(kernel: KernelTree, out: Path, label: str, epoch: int) -> None:
    """busybox-static + modules + /init, as a reproducible gzip'd newc cpio."""
    busybox = Path("/bin/busybox")
    if not busybox.exists() or b"ld-linux" in busybox.read_bytes()[:8192]:
        raise BuilderError("a static /bin/busybox is needed for the stand-in initrd",
                           hint="apt-get install busybox-static")
    with tempfile.TemporaryDirectory(prefix="standin-initrd-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "etc", "lib/modules", "proc", "sys", "dev", "cdrom", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(busybox, root / "bin" / "busybox")
        (root / "init").write_bytes(data_file("init"))
        (root / "etc" / "udhcpc.script").write_bytes(data_file("udhcpc.script"))
        (root / "bin" / "standin-install").write_bytes(data_file("install"))
        (root / "etc" / "standin-storage.awk").write_bytes(data_file("storage.awk"))
        (root / "etc" / "standin-packages.awk").write_bytes(data_file("packages.awk"))
        (root / "etc" / "standin-late-commands.awk").write_bytes(data_file("late-commands.awk"))
        (root / "bin" / "standin-install-packages").write_bytes(data_file("install-packages"))
        _copy_install_tools(root)
        (root / "etc" / "standin-label").write_text(label + "\n")
        order = module_load_order(kernel)
        for rel in order:
            dst = root / "lib" / "modules" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(kernel.modules / rel, dst)
        (root / "etc" / "standin-modules").write_text("".join(f"{rel}\n" for rel in order))
        for p in (root / "bin" / "busybox", root / "init", root / "etc" / "udhcpc.script",
                  root / "bin" / "standin-install", root / "bin" / "standin-install-packages"):
            p.chmod(0o755)
        _set_tree_mtimes(root, epoch)
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        cpio = run(
            ["cpio", "-o", "-H", "newc", "--reproducible", "-R", "0:0", "--quiet"],
            cwd=root,
            input=("\n".join(names) + "\n").encode(),
        ).stdout
    out.write_bytes(gzip.compress(cpio, compresslevel=6, mtime=0))
    log.info("initrd: %d modules, %d bytes", len(order), out.stat().st_size)


def _grub_image(fmt: str, modules: tuple[str, ...], out: Path, workdir: Path, *, config: str = "embedded.cfg",
                prefix: str = "/boot/grub") -> None:
    cfg = workdir / config
    cfg.write_bytes(data_file(config))
    out.parent.mkdir(parents=True, exist_ok=True)
    run(["grub-mkimage", "-O", fmt, "-p", prefix, "-c", cfg, "-o", out, *modules])


def build_esp(bootx64: Path, out: Path, epoch: int) -> None:
    size_kib = max(2048, (bootx64.stat().st_size // 1024 + 1024) // 1024 * 1024 + 1024)
    env = {"SOURCE_DATE_EPOCH": str(epoch)}
    run(["mkfs.vfat", "--invariant", "-i", "5354414e", "-n", "ESP", "-C", out, str(size_kib)], env=env)
    run(["mmd", "-i", out, "::/EFI", "::/EFI/boot"], env=env)
    run(["mcopy", "-i", out, bootx64, "::/EFI/boot/bootx64.efi"], env=env)


def write_md5sums(tree: Path, exclude: set[str]) -> None:
    import hashlib

    lines = []
    for p in sorted(tree.rglob("*")):
        rel = "./" + str(p.relative_to(tree))
        if p.is_file() and rel not in exclude and rel != "./md5sum.txt":
            lines.append(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {rel}\n")
    (tree / "md5sum.txt").write_text("".join(lines))


def build_standin_iso(out: Path, cache: Path, epoch: int, pad_mib: int = 0, overwrite: bool = False,
                      rootfs: Path | None = None, install_debs: Path | None = None) -> Path:
    """Build the stand-in ISO at `out` (atomically). `pad_mib` adds a filler file (benchmarks).

    `rootfs` (builder.testbed.rootfs) becomes /casper/standin-rootfs.squashfs: the system the stand-in
    installer unpacks onto the root partition (without it, the installed system is the stand-in initrd).
    `install_debs` (the image's real Debian install-time packages) becomes a signed apt repository at
    the medium's root (/dists, /pool, as on Ubuntu's ISO), which the installer installs `packages:` from."""
    for tool, pkg in (("xorriso", "xorriso"), ("grub-mkimage", "grub-pc-bin"), ("mkfs.vfat", "dosfstools"),
                      ("mcopy", "mtools"), ("cpio", "cpio"), ("dpkg-deb", "dpkg")):
        require_tool(tool, pkg)
    for needed, pkg in ((Path("/usr/lib/grub/i386-pc/boot_hybrid.img"), "grub-pc-bin"),
                        (Path("/usr/lib/grub/x86_64-efi/linux.mod"), "grub-efi-amd64-bin")):
        if not needed.exists():
            raise BuilderError(f"missing {needed}", hint=f"apt-get install {pkg}")
    deb = kernel_deb(cache)
    with tempfile.TemporaryDirectory(prefix="standin-") as tmp, staged_file(out, overwrite=overwrite) as tmp_out:
        work = Path(tmp)
        kernel = extract_kernel(deb, work / "kernel")
        tree = work / "tree"
        for d in ("casper", ".disk", "boot/grub/i386-pc", "EFI/boot"):
            (tree / d).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel.vmlinuz, tree / "casper" / "vmlinuz")
        build_initrd(kernel, tree / "casper" / "initrd", STANDIN_VOLID, epoch)
        (tree / ".disk" / "info").write_text(STANDIN_INFO)
        (tree / ".disk" / "standin").write_text(
            f"This ISO is a test stand-in built by `builder standin iso` from {deb.name}.\n"
        )
        (tree / "boot" / "grub" / "grub.cfg").write_bytes(data_file("grub.cfg"))
        (tree / "boot" / "grub" / "loopback.cfg").write_bytes(data_file("loopback.cfg"))
        _grub_image("i386-pc-eltorito", GRUB_COMMON_MODULES + GRUB_BIOS_MODULES,
                    tree / "boot" / "grub" / "i386-pc" / "eltorito.img", work)
        _grub_image("x86_64-efi", GRUB_COMMON_MODULES + GRUB_EFI_MODULES, tree / "EFI" / "boot" / "bootx64.efi", work)
        _grub_image("x86_64-efi", GRUB_INSTALLED_EFI_MODULES, tree / INSTALLED_EFI, work, config="installed-efi.cfg",
                    prefix="/EFI/BOOT")
        _grub_image("i386-pc", GRUB_INSTALLED_BIOS_MODULES, tree / INSTALLED_BIOS_CORE, work,
                    config="installed-bios.cfg")
        shutil.copyfile("/usr/lib/grub/i386-pc/boot.img", tree / INSTALLED_BIOS_BOOT)
        if rootfs is not None:
            shutil.copyfile(rootfs, tree / "casper" / ROOTFS_NAME)
        if install_debs is not None:
            from builder.testbed.installrepo import build_install_repo

            build_install_repo(install_debs, tree, epoch)
        if pad_mib:
            (tree / "pad").mkdir()
            with open(tree / "pad" / "filler.bin", "wb") as f:
                block = bytes(range(256)) * 4096  # 1 MiB, not sparse
                for _ in range(pad_mib):
                    f.write(block)
        write_md5sums(tree, {"./boot/grub/i386-pc/eltorito.img", f"./casper/{ROOTFS_NAME}"})
        esp = work / "efi.img"
        build_esp(tree / "EFI" / "boot" / "bootx64.efi", esp, epoch)
        _set_tree_mtimes(tree, epoch)
        cmd: list[str | Path] = [
            "xorriso", "-as", "mkisofs", "-r", "-V", STANDIN_VOLID, "-o", tmp_out,
            "--modification-date=" + _iso_date(epoch),
            "--grub2-mbr", "/usr/lib/grub/i386-pc/boot_hybrid.img",
            "--protective-msdos-label", "-partition_cyl_align", "off", "-partition_offset", "16",
            "--mbr-force-bootable",
            "-append_partition", "2", ESP_TYPE_GUID, esp, "-appended_part_as_gpt",
            "-iso_mbr_part_type", ISO_PART_TYPE_GUID,
            "-c", "/boot.catalog",
            "-b", "/boot/grub/i386-pc/eltorito.img", "-no-emul-boot", "-boot-load-size", "4",
            "-boot-info-table", "--grub2-boot-info",
            "-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::", "-no-emul-boot",
            tree,
        ]
        log.info("xorriso: writing stand-in ISO %s", out)
        run(cmd, env={"SOURCE_DATE_EPOCH": str(epoch)}, timeout=1800)
    return out


def cached_standin_iso(cache: Path, epoch: int = 1769126400) -> Path:
    """The stand-in ISO built once per (kernel package, stand-in sources) and kept in the cache."""
    import hashlib

    h = hashlib.sha256(Path(__file__).read_bytes())
    for name in STANDIN_DATA_FILES:
        h.update(data_file(name))
    for tool in install_tool_paths():  # the host's partitioning/formatting tools go into the initrd
        h.update(str(tool).encode() + tool.read_bytes())
    h.update(kernel_deb(cache).name.encode() + str(epoch).encode())
    image = build_image()
    rootfs = standin_rootfs(cache, image)  # the installed system: the stand-in image's files (cached by its key)
    h.update(rootfs.name.encode())
    h.update((Path(__file__).parent / "installrepo.py").read_bytes())  # its repository (by the image's key too)
    path = cache / "standin" / f"standin-{h.hexdigest()[:16]}.iso"
    with cache_lock(cache, path.stem):
        if not path.exists():
            build_standin_iso(path, cache, epoch, rootfs=rootfs, install_debs=image.install_debs)
    return path


def _iso_date(epoch: int) -> str:
    import time

    return time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))
