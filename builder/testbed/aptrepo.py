"""A signed local APT repository of small STANDIN packages named like Docker's and NVIDIA's.

Three repositories, laid out like the real ones so the model's sources work with only the URL
changed: an Ubuntu mirror (`/ubuntu`, suites noble{,-updates,-security,-backports}; the pinned
NVIDIA driver lives in noble-updates/restricted), Docker (`/docker/linux/ubuntu`, `noble stable`)
and NVIDIA's flat toolkit repository (`/nvidia/stable/deb/amd64`, `deb URL /`). Each package comes
in two versions so pins and holds are resolved by real apt.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from builder.resources import resource
from builder.run import require_tool, run
from builder.testbed.gpgkeys import SigningKey

UBUNTU_SUITES = ("noble", "noble-updates", "noble-security", "noble-backports")
# Debian-style suites too, in case cloud-init's Debian sources template is used on the stand-in.
DEBIAN_SUITES = ("trixie", "trixie-updates", "trixie-security")
UBUNTU_COMPONENTS = ("main", "restricted", "universe", "multiverse")

U = "~ubuntu.24.04~noble"


@dataclass(frozen=True)
class StubPackage:
    name: str
    versions: tuple[str, ...]  # oldest first
    files: tuple[tuple[str, str], ...]  # (path in package, data file name under data/firstboot/debs)
    depends: str = ""
    postinst: str | None = None  # data file name
    description: str = ""


DOCKER = (
    StubPackage("docker-ce", (f"5:27.5.1-1{U}", f"5:28.1.1-1{U}"),
                (("usr/bin/dockerd", "dockerd"), ("lib/systemd/system/docker.service", "docker.service")),
                depends="containerd.io, docker-ce-cli", postinst="docker-ce.postinst",
                description="Docker engine"),
    StubPackage("docker-ce-cli", (f"5:27.5.1-1{U}", f"5:28.1.1-1{U}"), (("usr/bin/docker", "docker"),),
                description="Docker CLI"),
    StubPackage("containerd.io", ("1.7.27-1", "1.7.28-1"), (("usr/bin/containerd", "stub"),),
                description="containerd runtime"),
    StubPackage("docker-buildx-plugin", (f"0.23.0-1{U}", f"0.24.0-1{U}"),
                (("usr/libexec/docker/cli-plugins/docker-buildx", "stub"),), description="buildx plugin"),
    StubPackage("docker-compose-plugin", (f"2.35.1-1{U}", f"2.36.0-1{U}"),
                (("usr/libexec/docker/cli-plugins/docker-compose", "stub"),), description="compose plugin"),
)
# The driver as the model renders it: signed prebuilt modules + no-DKMS userspace, the (= V) family,
# and the kernel metapackages it is held with. The newest version is above the model's pin.
DRV = ("580.173.02-0ubuntu0.24.04.1", "580.178.04-0ubuntu0.24.04.1", "580.182.01-0ubuntu0.24.04.1")  # last: fictional
NVIDIA_DRIVER = (
    StubPackage("nvidia-headless-no-dkms-580-server", DRV, (),
                depends="nvidia-kernel-common-580-server (= @VERSION@)", description="NVIDIA headless - no DKMS"),
    StubPackage("nvidia-utils-580-server", DRV, (("usr/bin/nvidia-smi", "nvidia-smi"),),
                depends="nvidia-kernel-common-580-server (= @VERSION@)", description="NVIDIA driver utilities"),
    StubPackage("nvidia-kernel-common-580-server", DRV, (), description="NVIDIA kernel module common files"),
    StubPackage("linux-modules-nvidia-580-server-generic", ("6.8.0-151.151",), (),
                depends="nvidia-kernel-common-580-server (>= 580.173.02)", description="signed NVIDIA modules"),
    StubPackage("linux-generic", ("6.8.0-151.151",), (), depends="linux-image-generic, linux-headers-generic",
                description="kernel metapackage (empty)"),
    StubPackage("linux-image-generic", ("6.8.0-151.151",), (), description="kernel image metapackage (empty)"),
    StubPackage("linux-headers-generic", ("6.8.0-151.151",), (), description="kernel headers metapackage (empty)"),
)
TK = ("1.17.8-1", "1.18.2-1")
NVIDIA_TOOLKIT = (
    StubPackage("nvidia-container-toolkit", TK,
                (("usr/bin/nvidia-ctk", "nvidia-ctk"), ("usr/bin/nvidia-container-runtime", "stub")),
                depends="nvidia-container-toolkit-base (= @VERSION@), libnvidia-container-tools (= @VERSION@)",
                description="NVIDIA container toolkit"),
    StubPackage("nvidia-container-toolkit-base", TK, (), description="NVIDIA container toolkit base"),
    StubPackage("libnvidia-container-tools", TK, (), depends="libnvidia-container1 (>= @VERSION@)",
                description="NVIDIA container runtime library tools"),
    StubPackage("libnvidia-container1", TK, (), description="NVIDIA container runtime library"),
)


@dataclass(frozen=True)
class RepoLayout:
    """Paths below the HTTP root, matching the real URLs' shape."""

    ubuntu: str = "ubuntu"
    docker: str = "docker/linux/ubuntu"
    nvidia: str = "nvidia/stable/deb/amd64"


def _data(name: str) -> str:
    return resource("testbed", "stub-debs", name).read_text()


def build_deb(pkg: StubPackage, version: str, out_dir: Path, work: Path, sde: int) -> Path:
    """Build one stand-in .deb with dpkg-deb; returns its path."""
    dpkg_deb = require_tool("dpkg-deb", "dpkg")
    tree = work / f"{pkg.name}_{version.replace(':', '%3a')}"
    (tree / "DEBIAN").mkdir(parents=True)
    subst = {"@PACKAGE@": pkg.name, "@VERSION@": version}
    for dest, src in pkg.files:
        text = _data(src)
        for k, v in subst.items():
            text = text.replace(k, v)
        p = tree / dest
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(0o644 if dest.endswith((".service", ".json")) else 0o755)
    control = [
        f"Package: {pkg.name}", f"Version: {version}", "Architecture: amd64",
        "Maintainer: prometheus-builder STANDIN <standin@invalid>", "Section: misc", "Priority: optional",
    ]
    if pkg.depends:
        control.append(f"Depends: {pkg.depends.replace('@VERSION@', version)}")
    control.append(f"Description: STANDIN {pkg.description} (test package, not the real one)")
    (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    if pkg.postinst:
        pi = tree / "DEBIAN" / "postinst"
        pi.write_text(_data(pkg.postinst))
        pi.chmod(0o755)
    for p in tree.rglob("*"):
        os.utime(p, (sde, sde), follow_symlinks=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{pkg.name}_{version.split(':')[-1]}_amd64.deb"
    run([dpkg_deb, "--root-owner-group", "-Zgzip", "--build", tree, deb],
        env={"SOURCE_DATE_EPOCH": str(sde)})
    return deb


def _packages_index(repo_root: Path, pool: Path) -> bytes:
    ftparchive = require_tool("apt-ftparchive", "apt-utils")
    if not pool.exists() or not any(pool.rglob("*.deb")):
        return b""
    return run([ftparchive, "packages", pool.relative_to(repo_root)], cwd=repo_root).stdout


def _write_index(dirpath: Path, content: bytes) -> None:
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "Packages").write_bytes(content)
    (dirpath / "Packages.gz").write_bytes(gzip.compress(content, mtime=0))


def _write_release(dist_dir: Path, key: SigningKey, fields: dict[str, str]) -> None:
    """Release with SHA256 of every index below `dist_dir`, then InRelease + Release.gpg."""
    files = sorted(p for p in dist_dir.rglob("*") if p.is_file()
                   and p.name not in ("Release", "InRelease", "Release.gpg") and p.suffix != ".deb")
    # Date a day back, so a guest clock that lags a little never sees it "not valid yet".
    lines = [f"{k}: {v}" for k, v in fields.items()]
    lines.append(f"Date: {formatdate(time.time() - 86400, usegmt=True)}")
    lines.append("SHA256:")
    for p in files:
        data = p.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {p.relative_to(dist_dir)}")
    release = dist_dir / "Release"
    release.write_text("\n".join(lines) + "\n")
    key.sign_release(release)


def build_repos(http_root: Path, *, archive: SigningKey, docker: SigningKey, nvidia: SigningKey,
                sde: int, layout: RepoLayout = RepoLayout()) -> None:
    """Create all three signed repositories under `http_root`."""
    work = http_root.parent / "deb-build"
    # Ubuntu mirror: pinned + newer driver in noble-updates/restricted; other indexes empty.
    ubuntu = http_root / layout.ubuntu
    for pkg in NVIDIA_DRIVER:
        for v in pkg.versions:
            build_deb(pkg, v, ubuntu / "pool" / "restricted" / "n" / pkg.name, work, sde)
    driver_index = _packages_index(ubuntu, ubuntu / "pool" / "restricted")
    # The optional features' packages (builder.testbed.featurepkgs): noble/universe.
    from builder.testbed.featurepkgs import build_feature_pool

    feature_index = _packages_index(ubuntu, build_feature_pool(ubuntu, work, sde))
    for suite in UBUNTU_SUITES + DEBIAN_SUITES:
        for comp in UBUNTU_COMPONENTS:
            wanted = comp == "restricted" and suite == "noble-updates"
            wanted = wanted or (comp == "main" and suite == "trixie-updates")
            index = driver_index if wanted else feature_index if (suite, comp) == ("noble", "universe") else b""
            _write_index(ubuntu / "dists" / suite / comp / "binary-amd64", index)
        origin = "Ubuntu" if suite.startswith("noble") else "Debian"
        _write_release(ubuntu / "dists" / suite, archive, {
            "Origin": origin, "Label": origin, "Suite": suite, "Codename": suite.split("-")[0],
            "Architectures": "amd64", "Components": " ".join(UBUNTU_COMPONENTS),
            "Description": f"STANDIN {origin} mirror for tests",
        })
    # Docker: dists/noble/stable, pool/stable.
    dock = http_root / layout.docker
    for pkg in DOCKER:
        for v in pkg.versions:
            build_deb(pkg, v, dock / "pool" / "stable" / pkg.name, work, sde)
    _write_index(dock / "dists" / "noble" / "stable" / "binary-amd64",
                 _packages_index(dock, dock / "pool" / "stable"))
    _write_release(dock / "dists" / "noble", docker, {
        "Origin": "Docker", "Label": "Docker CE", "Suite": "noble", "Codename": "noble",
        "Architectures": "amd64", "Components": "stable", "Description": "STANDIN Docker CE for tests",
    })
    # NVIDIA: flat repository, `deb URL /`.
    nv = http_root / layout.nvidia
    for pkg in NVIDIA_TOOLKIT:
        for v in pkg.versions:
            build_deb(pkg, v, nv, work, sde)
    _write_index(nv, _packages_index(nv, nv))
    _write_release(nv, nvidia, {"Origin": "NVIDIA", "Label": "NVIDIA CONTAINER TOOLKIT",
                                "Architectures": "amd64", "Description": "STANDIN toolkit for tests"})
