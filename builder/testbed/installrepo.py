"""Install-time packages: the real Debian packages of the autoinstall's `packages:`, as the installer installs them.

The stand-in image carries only what ubuntu-server-minimal carries; its build downloads the real trixie
packages of builder.seed.packages INSTALL_TIME with the closure the image lacks (`image.install_debs`).
`build_install_repo` makes them a signed apt repository (`dists/trixie/main`, `pool/main`; the stand-in
"Ubuntu archive" key, which the image trusts): the stand-in ISO carries it at its root like Ubuntu's
live-server ISO carries its pool, and the stand-in installer installs the autoinstall's `packages:`
from it (data/standin-iso/install-packages: apt-get install in a chroot of the target).

`installed_image` plays "the installed system" for direct boots (builder.verify.session): the minimal
image plus the given packages, installed by the SAME shell step, run here by chroot into an extracted
copy of the image, then made an ext4 disk again. Cached by (image key, package list, step). Nothing
the package list does not ask for is installed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from builder.errors import BuilderError
from builder.resources import resource
from builder.run import require_tool, run
from builder.seed.hostconfig import INSTALL_FAILED_MARKER as FAILED_MARKER
from builder.store import cache_lock, staged_dir
from builder.testbed.aptrepo import _packages_index, _write_index, _write_release
from builder.testbed.gpgkeys import archive_key, cache_root
from builder.testbed.image import StandinImage, make_ext4_image
from builder.testbed.rootfs import extract_ext4

log = logging.getLogger("builder.testbed.installrepo")

SUITE = "trixie"  # the packages' own release; the installer's sources name it
COMPONENT = "main"
STEP = "install-packages"  # data/standin-iso/install-packages
FORMAT_VERSION = 1


def step_script() -> bytes:
    return resource("testbed", "standin-iso", STEP).read_bytes()


def build_install_repo(debs: Path, out: Path, sde: int) -> Path:
    """`out`/pool/main/*.deb + `out`/dists/trixie (Packages, Release, InRelease, Release.gpg); returns `out`."""
    found = sorted(debs.glob("*.deb"))
    if not found:
        raise BuilderError(f"no install-time .deb files in {debs}", hint="rebuild the stand-in image")
    pool = out / "pool" / COMPONENT
    pool.mkdir(parents=True, exist_ok=True)
    for deb in found:
        shutil.copyfile(deb, pool / deb.name)
        os.utime(pool / deb.name, (sde, sde))
    dist = out / "dists" / SUITE
    _write_index(dist / COMPONENT / "binary-amd64", _packages_index(out, pool))
    _write_release(dist, archive_key(), {
        "Origin": "Debian", "Label": "STANDIN install medium", "Suite": SUITE, "Codename": SUITE,
        "Architectures": "amd64", "Components": COMPONENT,
        "Description": "STANDIN: the real Debian packages of the autoinstall's packages: (install medium)",
    })
    return out


def install_repo(image: StandinImage) -> Path:
    """The cached install repository of `image` (one per image key)."""
    out = cache_root() / "firstboot" / "install-repo" / image.key
    with cache_lock(cache_root(), f"install-repo-{image.key}"):
        if (out / "dists" / SUITE / "InRelease").exists():
            return out
        with staged_dir(out) as tmp:
            build_install_repo(image.install_debs, tmp, int(os.environ.get("SOURCE_DATE_EPOCH", "1769126400")))
    return out


def install_packages(target: Path, repo: Path, packages: tuple[str, ...], *, timeout: float = 1800) -> list[str]:
    """Run the installer's packages step (chroot + apt-get) on `target`; its output lines. Needs root."""
    require_tool("chroot", "coreutils")
    with tempfile.TemporaryDirectory(prefix="standin-step-") as tmp:
        script = Path(tmp) / STEP
        script.write_bytes(step_script())
        proc = run(["sh", script, target, repo, *packages], check=False, timeout=timeout)
    lines = proc.stdout.decode(errors="replace").splitlines()
    failed = [ln for ln in lines if ln.startswith(FAILED_MARKER)]
    if proc.returncode != 0 or failed:
        detail = failed[-1] if failed else (proc.stderr.decode(errors="replace").strip() or "\n".join(lines[-5:]))
        raise BuilderError(f"installing the install-time packages {' '.join(packages)} failed: {detail}")
    return lines


def unmount_below(root: Path) -> None:
    """Detach every mount below `root` (deepest first): what a killed packages step may leave behind."""
    prefix = str(root.resolve()) + "/"
    points = [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        run(["umount", "-l", point], check=False)
    if any(ln.split()[4].startswith(prefix) for ln in Path("/proc/self/mountinfo").read_text().splitlines()):
        raise BuilderError(f"cannot unmount everything below {root}: remove it by hand after `umount -R`")


def installed_key(image: StandinImage, packages: tuple[str, ...]) -> str:
    h = hashlib.sha256(f"{FORMAT_VERSION}:{image.key}:{' '.join(packages)}".encode())
    h.update(step_script())
    return h.hexdigest()[:20]


def installed_image(image: StandinImage, packages: tuple[str, ...]) -> StandinImage:
    """`image` with `packages` installed from its install repository (cached); `image` itself when empty."""
    if not packages:
        return image
    key = installed_key(image, packages)
    folder = cache_root() / "firstboot" / "installed" / key
    with cache_lock(cache_root(), f"installed-{key}"):
        if not (folder / "manifest.json").exists():
            _build_installed(image, packages, key, folder)
    return StandinImage(folder / "disk.img", folder / "vmlinuz", folder / "initrd.img", image.append, key)


def _build_installed(image: StandinImage, packages: tuple[str, ...], key: str, folder: Path) -> None:
    if os.geteuid() != 0:
        raise BuilderError("installing packages into the stand-in image needs root (chroot, bind mounts)")
    repo = install_repo(image)
    base = json.loads((image.disk.parent / "manifest.json").read_text())
    size, sde = base["inputs"]["size"], int(base["inputs"]["source_date_epoch"])
    with staged_dir(folder) as tmp:
        root = tmp / "rootfs"
        root.mkdir()
        extract_ext4(image.disk, root)
        try:
            lines = install_packages(root, repo, packages)
        finally:
            unmount_below(root)  # never leave the host's /dev, /proc, /sys bound where rmtree could reach them
        make_ext4_image(root, tmp / "disk.img", size, sde, label="root", seed=key)
        for name, pattern in (("vmlinuz", "vmlinuz-*"), ("initrd.img", "initrd.img-*")):
            found = sorted((root / "boot").glob(pattern))
            if not found:
                raise BuilderError(f"the installed stand-in has no /boot/{pattern}")
            shutil.copyfile(found[-1], tmp / name)
        shutil.rmtree(root)
        manifest = {"name": base["name"] + "+install-time-packages", "key": key, "base": image.key,
                    "packages": list(packages), "step": lines}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log.info("installed stand-in (%s + %s): %s", image.key, " ".join(packages), folder)
