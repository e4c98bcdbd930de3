"""STANDIN first-boot image: a Debian trixie disk that plays the installed Ubuntu system.

It is *not* prometheus' OS. It exists so the real first-boot user-data can run through real
cloud-init (25.1), openssh-server (10), netplan (1.1) and systemd (257) offline: trixie is the Debian
release closest to noble. Like ubuntu-server-minimal it carries no nfs-common and no gnupg: what the
autoinstall's `packages:` asks for (builder.seed.packages INSTALL_TIME) is downloaded here, while the
trixie sources are still configured, into `install-debs/` beside the disk (the closure missing from
the image), and installed at install time from the harness repository (builder.testbed.installrepo);
the real `prometheus-node-exporter` (a feature package) likewise into `feature-debs/`.
Built with mmdebstrap into a folder, then `mkfs.ext4 -d` (no loop mounts), then every inode's
times are set to SOURCE_DATE_EPOCH with debugfs. Kernel and initrd are exported beside the disk for
direct kernel boot. The result is cached under a hash of its inputs, so a second call is instant.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from builder import settings
from builder.errors import BuilderError
from builder.run import require_tool, run
from builder.seed.packages import INSTALL_TIME
from builder.store import cache_lock, staged_dir
from builder.testbed.gpgkeys import archive_key, cache_root

log = logging.getLogger("builder.testbed.image")

FORMAT_VERSION = 4  # bump when the build steps change in a way the inputs below don't show
STANDIN_NAME = "STANDIN-debian-trixie-firstboot"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# What ubuntu-server-minimal has that the first boot touches; nothing the minimal install lacks.
PACKAGES = (
    "linux-image-amd64", "systemd-sysv", "udev", "dbus", "kmod", "cloud-init", "openssh-server",
    "netplan.io", "sudo", "locales", "iproute2", "initramfs-tools",
    "e2fsprogs", "procps", "curl", "python3", "iputils-ping", "less",
)
# Downloaded (not installed) with their closure: the harness repositories serve the real packages.
INSTALL_TIME_DEBS = INSTALL_TIME  # the autoinstall's packages: (installed by the stand-in installer)
FEATURE_DEBS = ("prometheus-node-exporter",)  # builder.testbed.featurepkgs: the harness Ubuntu mirror
INITRD_MODULES = ("virtio_pci", "virtio_blk", "ext4")
BLACKLIST_MODULES = ("floppy", "pcspkr", "kvm", "kvm_amd", "kvm_intel", "cfg80211", "joydev", "serio_raw",
                     "ata_piix", "ata_generic", "i2c_piix4", "bochs", "drm", "qemu_fw_cfg")
# no_timer_check: under TCG on a loaded host the kernel's boot-time IO-APIC timer check can time out
# and fall back to ExtINT routing, after which the guest may lose device interrupts (seen: a silent
# console). Test-bed kernel lines only; the product's own GRUB lines (ISO, PXE) do not carry it.
KERNEL_APPEND = "root=/dev/vda rw console=ttyS0,115200n8 net.ifnames=1 random.trust_cpu=on no_timer_check"

# Run inside mmdebstrap's customize phase ($1 = the root folder). Data, not logic: part of the key.
CUSTOMIZE_SCRIPT = r"""
set -eu
R="$1"
printf '%s\n' {modules} > "$R/etc/initramfs-tools/modules"
chroot "$R" update-initramfs -u -k all
echo {name} > "$R/etc/hostname"
printf 'LABEL=root / ext4 defaults,errors=remount-ro 0 1\n' > "$R/etc/fstab"
# Only NoCloud: no metadata-service probing (which would time out offline).
printf 'datasource_list: [ NoCloud, None ]\n' > "$R/etc/cloud/cloud.cfg.d/90-standin-datasource.cfg"
chroot "$R" systemctl enable systemd-networkd.service
# systemd >= 256's ssh generator (sshd on AF_VSOCK / AF_UNIX sockets) is not on noble (systemd 255), and
# without a vsock device it fails at every daemon-reload: masked, as an admin masks a generator.
mkdir -p "$R/etc/systemd/system-generators"
ln -s /dev/null "$R/etc/systemd/system-generators/systemd-ssh-generator"
# Drivers QEMU's i440fx offers but the stand-in never uses: each costs seconds under TCG.
printf 'blacklist %s\n' {blacklist} > "$R/etc/modprobe.d/standin-blacklist.conf"
# The stand-in "Ubuntu archive" key plays ubuntu-keyring: the mirror is trusted without signed-by.
install -m 0644 "$R/tmp/standin-archive.asc" "$R/etc/apt/trusted.gpg.d/standin-ubuntu-archive.asc"
rm -f "$R/tmp/standin-archive.asc"
# The real packages the harness repositories serve, with what the image lacks of their closure
# (Recommends as apt installs them by default for the install-time ones, none for the features').
for d in install feature; do mkdir -p "$R/tmp/dl-$d/partial"; done
env -u APT_CONFIG chroot "$R" apt-get install -q -y --download-only -o APT::Install-Recommends=true \
  -o Dir::Cache::archives=/tmp/dl-install/ {install_debs}
env -u APT_CONFIG chroot "$R" apt-get install -q -y --download-only -o APT::Install-Recommends=false \
  -o Dir::Cache::archives=/tmp/dl-feature/ {feature_debs}
for d in install feature; do
  mkdir -p "$R/../$d-debs" && mv "$R"/tmp/dl-$d/*.deb "$R/../$d-debs/"
done
# First boot writes its own sources; no host keys, no machine identity, no build leftovers.
rm -f "$R/etc/apt/sources.list" "$R"/etc/apt/sources.list.d/*
rm -f "$R"/etc/ssh/ssh_host_*
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/apt/archives/*.deb
rm -rf "$R"/var/log/* "$R"/var/cache/ldconfig/aux-cache "$R"/var/cache/debconf/*-old
rm -rf "$R"/tmp/* "$R"/var/tmp/*
cp -L "$R"/boot/vmlinuz-* "$R/../vmlinuz"
cp -L "$R"/boot/initrd.img-* "$R/../initrd.img"
"""


@dataclass(frozen=True)
class ImageInputs:
    """Everything that determines the image's bytes; its hash is the cache key."""

    suite: str = "trixie"
    mirror: str = DEFAULT_MIRROR
    security_mirror: str = DEFAULT_SECURITY_MIRROR
    packages: tuple[str, ...] = PACKAGES
    install_debs: tuple[str, ...] = INSTALL_TIME_DEBS
    feature_debs: tuple[str, ...] = FEATURE_DEBS
    initrd_modules: tuple[str, ...] = INITRD_MODULES
    blacklist_modules: tuple[str, ...] = BLACKLIST_MODULES
    size: str = "3G"
    source_date_epoch: int = 1769126400
    archive_key_fingerprint: str = ""
    customize: str = field(default=CUSTOMIZE_SCRIPT, repr=False)
    format_version: int = FORMAT_VERSION

    def key(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:20]


@dataclass(frozen=True)
class StandinImage:
    disk: Path  # raw ext4 filesystem (the whole disk is the root fs: root=/dev/vda)
    kernel: Path
    initrd: Path
    append: str  # kernel command line for direct kernel boot
    key: str

    @property
    def install_debs(self) -> Path:
        """The real Debian packages of the autoinstall's `packages:` (closure beyond the image)."""
        return self.disk.parent / "install-debs"

    @property
    def feature_debs(self) -> Path:
        """The real Debian packages of the optional features (builder.testbed.featurepkgs)."""
        return self.disk.parent / "feature-debs"


def default_inputs(source_date_epoch: int | None = None) -> ImageInputs:
    sde = source_date_epoch or settings.source_date_epoch(ImageInputs.source_date_epoch)
    return ImageInputs(
        mirror=os.environ.get("BUILDER_DEBIAN_MIRROR", DEFAULT_MIRROR),
        security_mirror=os.environ.get("BUILDER_DEBIAN_SECURITY_MIRROR", DEFAULT_SECURITY_MIRROR),
        source_date_epoch=sde,
        archive_key_fingerprint=archive_key().fingerprint,
    )


def _image_from(folder: Path, key: str) -> StandinImage:
    return StandinImage(folder / "disk.img", folder / "vmlinuz", folder / "initrd.img", KERNEL_APPEND, key)


def build_image(inputs: ImageInputs | None = None, *, force: bool = False) -> StandinImage:
    """Return the cached image for `inputs`, building it first if needed (~2-4 min cold)."""
    inputs = inputs or default_inputs()
    with cache_lock(cache_root(), f"image-{inputs.key()}"):
        return _build_image(inputs, force)


def _build_image(inputs: ImageInputs, force: bool) -> StandinImage:
    key = inputs.key()
    folder = cache_root() / "firstboot" / "images" / key
    if not force and (folder / "manifest.json").exists():
        log.info("stand-in image cached: %s", folder)
        return _image_from(folder, key)
    for tool, pkg in (("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs"), ("debugfs", "e2fsprogs")):
        require_tool(tool, pkg)
    if os.geteuid() != 0:
        raise BuilderError("building the stand-in image needs root (mmdebstrap --mode=root)",
                           hint="run as root, or pass --image with an existing image")
    t0 = time.monotonic()
    with staged_dir(folder) as tmp:
        root = tmp / "rootfs"
        _mmdebstrap(inputs, root)
        t1 = time.monotonic()
        make_ext4_image(root, tmp / "disk.img", inputs.size, inputs.source_date_epoch, label="root",
                        seed=key)
        status = (root / "var/lib/dpkg/status").read_text(errors="replace")
        shutil.rmtree(root)
        manifest = {
            "name": STANDIN_NAME, "key": key, "inputs": asdict(inputs), "append": KERNEL_APPEND,
            "package_count": status.count("Package: "),
            "downloaded": {d: sorted(p.name for p in (tmp / f"{d}-debs").glob("*.deb"))
                           for d in ("install", "feature")},
            "seconds": {"mmdebstrap": round(t1 - t0, 1), "total": round(time.monotonic() - t0, 1)},
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("stand-in image built in %.0fs: %s", time.monotonic() - t0, folder)
    return _image_from(folder, key)


def _mmdebstrap(inputs: ImageInputs, root: Path) -> None:
    debs = cache_root() / "debs" / inputs.suite
    debs.mkdir(parents=True, exist_ok=True)
    key = archive_key()
    customize = inputs.customize.format(
        modules=" ".join(shlex.quote(m) for m in inputs.initrd_modules), name=shlex.quote(STANDIN_NAME),
        blacklist=" ".join(shlex.quote(m) for m in inputs.blacklist_modules),
        install_debs=" ".join(shlex.quote(m) for m in inputs.install_debs),
        feature_debs=" ".join(shlex.quote(m) for m in inputs.feature_debs),
    )
    script = root.parent / "customize.sh"
    script.write_text(customize)
    s = inputs.suite
    cmd = [
        "mmdebstrap", "--mode=root", "--variant=minbase", "--format=directory",
        "--include=" + ",".join(inputs.packages),
        "--aptopt=Acquire::Languages \"none\"",
        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*",
        # .deb cache across builds
        "--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives",
        f"--setup-hook=sync-in {debs} /var/cache/apt/archives/",
        # small initrd from the start (the module list itself is written in customize)
        "--setup-hook=mkdir -p \"$1\"/etc/initramfs-tools/conf.d && "
        "echo MODULES=list > \"$1\"/etc/initramfs-tools/conf.d/standin-modules",
        f"--customize-hook=sync-out /var/cache/apt/archives {debs}",
        f"--customize-hook=upload {key.public_asc} /tmp/standin-archive.asc",
        f"--customize-hook=sh {script} \"$1\"",
        s, str(root),
        f"deb {inputs.mirror} {s} main",
        f"deb {inputs.mirror} {s}-updates main",
        f"deb {inputs.security_mirror} {s}-security main",
    ]
    env = {"SOURCE_DATE_EPOCH": str(inputs.source_date_epoch), "TMPDIR": str(root.parent)}
    run(cmd, env=env, timeout=1800)
    script.unlink()


def make_ext4_image(tree: Path, out: Path, size: str, sde: int, *, label: str, seed: str) -> None:
    """`mkfs.ext4 -d tree` into `out`, with fixed UUID/hash seed and every inode time set to `sde`."""
    uuid = _uuid_from(seed)
    env = {"E2FSPROGS_FAKE_TIME": str(sde), "SOURCE_DATE_EPOCH": str(sde)}
    out.unlink(missing_ok=True)
    run([
        "mkfs.ext4", "-q", "-F", "-L", label, "-U", uuid, "-E", f"hash_seed={uuid},root_owner=0:0",
        "-d", tree, out, size,
    ], env=env, timeout=600)
    fix_inode_times(tree, out, sde)


def fix_inode_times(tree: Path, image: Path, sde: int) -> None:
    """mke2fs copies atime/ctime from the source tree; overwrite every inode's times with `sde`."""
    lines = []
    for path in _walk(tree):
        rel = "/" + os.path.relpath(path, tree) if path != tree else "/"
        if '"' in rel or "\n" in rel:
            raise BuilderError(f"cannot fix times of a path debugfs can't quote: {rel!r}")
        q = f'"{rel}"'  # debugfs takes backslashes inside quotes literally
        for f in ("atime", "mtime", "ctime", "crtime"):
            lines.append(f"sif {q} {f} @{sde}")
    lines.append(f"sif /lost+found atime @{sde}")
    for f in ("mtime", "ctime", "crtime"):
        lines.append(f"sif /lost+found {f} @{sde}")
    cmds = image.with_name(image.name + ".debugfs")
    cmds.write_text("\n".join(lines) + "\n")
    try:
        proc = run(["debugfs", "-w", "-f", cmds, image], env={"E2FSPROGS_FAKE_TIME": str(sde)},
                   timeout=900)
    finally:
        cmds.unlink(missing_ok=True)
    errors = [ln for ln in proc.stderr.decode(errors="replace").splitlines()
              if ln.strip() and not ln.startswith("debugfs ")]
    if errors:
        raise BuilderError("debugfs could not fix inode times:\n" + "\n".join(errors[:20]))


def _walk(tree: Path):
    yield tree
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            yield Path(dirpath) / name


def _uuid_from(seed: str) -> str:
    h = hashlib.sha256(("standin-root:" + seed).encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-8{h[17:20]}-{h[20:32]}"


def export_image(image: StandinImage, out: Path) -> dict[str, Path]:
    """Copy the cached image to `out` (sparse) with `<stem>.vmlinuz` and `<stem>.initrd` beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    targets = {
        "disk": out,
        "kernel": out.with_name(out.stem + ".vmlinuz"),
        "initrd": out.with_name(out.stem + ".initrd"),
    }
    for src, dst in ((image.disk, targets["disk"]), (image.kernel, targets["kernel"]),
                     (image.initrd, targets["initrd"])):
        tmp = dst.with_name(f".{dst.name}.tmp")
        run(["cp", "--sparse=always", "--reflink=auto", src, tmp])
        os.replace(tmp, dst)
    return targets
