"""A local package mirror with the real shapes of Ubuntu's, Docker's and NVIDIA's repositories.

Only indices (`Packages`, `Packages.gz`, `Release`): enough for `builder validate --online` and for
`apt-get install -s`, which never download a .deb. What it reproduces, from UBUNTU-FACTS.md:

- Ubuntu's pockets hold ONE version of a package each, and `noble`, `noble-updates` and
  `noble-security` differ; an older pin survives only while some pocket still carries it.
- The 550-server branch is retired inside 24.04: noble-updates has `550.163.01-0ubuntu0.24.04.2` (in
  multiverse, as the real archive has it), a transitional package pulling 570-server, itself
  transitional to 580-server (noble's 570 packages say so only by that dependency); noble-security
  still has the real `550.163.01-0ubuntu0.24.04.1`; the 550/570 prebuilt-modules metapackages are
  dummy transitional packages to the next branch.
- The driver packages depend on each other with `(= V)` (and kernel-common with `(<= V-1)`, `(>= V)`); the
  signed prebuilt modules metapackage `linux-modules-nvidia-<branch>-generic` is versioned like the kernel
  and depends on the ABI package, which depends on that kernel's image. Field shapes follow noble's
  real indices (read 2026-12).
- Docker's and NVIDIA's repositories keep many versions. NVIDIA's toolkit depends on its `-base` with
  `(= V)`, on `libnvidia-container-tools` with `(>= V)` up to 1.17.x and `(= V)` from 1.18.0.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from builder.seed.debian import compare_versions

CODENAME = "noble"
COMPONENTS = ("main", "restricted", "universe", "multiverse")
DOCKER_LAYOUT = "docker/linux/ubuntu"
NVIDIA_LAYOUT = "nvidia/stable/deb/amd64"


@dataclass(frozen=True)
class Pkg:
    name: str
    version: str
    depends: str = ""
    provides: str = ""
    description: str = ""
    arch: str = "amd64"
    section: str = "misc"

    def stanza(self, pool: str) -> str:
        base = self.version.split(":")[-1]
        filename = f"{pool}/{self.name[0]}/{self.name}/{self.name}_{base}_{self.arch}.deb"
        fake = hashlib.sha256(f"{self.name} {self.version}".encode()).hexdigest()
        lines = [f"Package: {self.name}", f"Architecture: {self.arch}", f"Version: {self.version}",
                 "Priority: optional", f"Section: {self.section}", "Maintainer: test bed <mirror@invalid>",
                 "Installed-Size: 64"]
        if self.provides:
            lines.append(f"Provides: {self.provides}")
        if self.depends:
            lines.append(f"Depends: {self.depends}")
        lines += [f"Filename: {filename}", "Size: 4096", f"SHA256: {fake}",
                  f"Description: {self.description or self.name}"]
        return "\n".join(lines) + "\n"


def kernel(abi: str, version: str) -> list[Pkg]:
    """linux-generic at one ABI (e.g. abi 6.8.0-151, version 6.8.0-151.151), Depends as noble has them."""
    return [
        Pkg("linux-generic", version, f"linux-image-generic (= {version}), linux-headers-generic (= {version})",
            description="Complete Generic Linux kernel and headers", section="kernel"),
        Pkg("linux-image-generic", version, f"linux-image-{abi}-generic, linux-modules-extra-{abi}-generic, "
            "linux-firmware, intel-microcode, amd64-microcode", description="Generic Linux kernel image",
            section="kernel"),
        Pkg("linux-headers-generic", version, f"linux-headers-{abi}-generic",
            description="Generic Linux kernel headers", section="kernel"),
        Pkg(f"linux-image-{abi}-generic", version, f"kmod, linux-base (>= 4.5ubuntu1~16.04.1), "
            f"linux-modules-{abi}-generic", provides="linux-image", description="Signed kernel image generic",
            section="kernel"),
        Pkg(f"linux-modules-{abi}-generic", version, "", description=f"Linux kernel extra modules for {abi}",
            section="kernel"),
        Pkg(f"linux-modules-extra-{abi}-generic", version, f"linux-modules-{abi}-generic",
            description=f"Linux kernel extra modules for {abi}", section="kernel"),
        Pkg(f"linux-headers-{abi}-generic", version, "", description=f"Linux kernel headers for {abi}",
            section="kernel"),
    ]


def prebuilt_modules(branch: str, abi: str, kver: str, driver: str) -> list[Pkg]:
    """Canonical's signed prebuilt modules for one kernel ABI (source linux-restricted-modules)."""
    upstream = driver.split("-")[0]
    return [
        Pkg(f"linux-modules-nvidia-{branch}-generic", kver,
            f"linux-modules-nvidia-{branch}-{abi}-generic (= {kver}), nvidia-kernel-common-{branch} (>= {upstream})",
            provides=f"nvidia-dkms-{branch} (= {driver}), nvidia-prebuilt-kernel",
            description=f"Extra drivers for nvidia-{branch} for the generic flavour", section="kernel"),
        Pkg(f"linux-modules-nvidia-{branch}-{abi}-generic", kver,
            f"debconf (>= 0.5) | debconf-2.0, linux-image-{abi}-generic | linux-image-unsigned-{abi}-generic, "
            f"linux-signatures-nvidia-{abi}-generic (= {kver}), "
            f"linux-objects-nvidia-{branch}-{abi}-generic (= {kver}), "
            f"nvidia-kernel-common-{branch} (>= {upstream})",
            description=f"Linux kernel nvidia modules for version {abi}", section="kernel"),
        Pkg(f"linux-objects-nvidia-{branch}-{abi}-generic", kver, "binutils",
            description=f"Linux kernel nvidia modules for version {abi} (objects)", section="kernel"),
        Pkg(f"linux-signatures-nvidia-{abi}-generic", kver,
            f"linux-image-{abi}-generic | linux-image-unsigned-{abi}-generic",
            description=f"Linux kernel signatures for nvidia modules for version {abi}-generic", section="kernel"),
    ]


def transitional_modules(branch: str, kver: str, to: str) -> Pkg:
    return Pkg(f"linux-modules-nvidia-{branch}-generic", kver, f"linux-modules-nvidia-{to}-generic",
               description=f"Extra drivers for nvidia-{branch} for the generic flavour (dummy transitional package)",
               section="kernel")


def driver_branch(branch: str, version: str) -> list[Pkg]:
    """One version of an Ubuntu NVIDIA server branch: the no-DKMS headless set, Depends as noble-updates has them."""
    up = version.split("-")[0]
    return [
        Pkg(f"nvidia-headless-no-dkms-{branch}", version,
            f"nvidia-kernel-common-{branch} (<= {up}-1), nvidia-kernel-common-{branch} (>= {up}), "
            f"nvidia-kernel-source-{branch} (= {version}), libnvidia-compute-{branch} (= {version}), "
            f"nvidia-compute-utils-{branch} (= {version}), libnvidia-cfg1-{branch} (= {version})",
            description="NVIDIA headless metapackage - no DKMS", section="libs"),
        Pkg(f"nvidia-utils-{branch}", version,
            f"nvidia-kernel-common-{branch}-{up}, libc6 (>= 2.34), libnvidia-compute-{branch} (>= {up})",
            provides="nvidia-smi, nvidia-utils", description="NVIDIA Server Driver support binaries", section="utils"),
        Pkg(f"nvidia-kernel-common-{branch}", version,
            f"libc6 (>= 2.38), libpciaccess0 (>= 0.10.7), nvidia-firmware-{branch}-{up}",
            provides=f"nvidia-kernel-common, nvidia-kernel-common-{branch}-{up}",
            description="Shared files used with the kernel module", section="libs"),
        Pkg(f"nvidia-firmware-{branch}", version, "", provides=f"nvidia-firmware-{branch}-{up}",
            description="Firmware files used by the kernel module", section="libs"),
        Pkg(f"nvidia-kernel-source-{branch}", version, "", provides="nvidia-kernel-source",
            description="NVIDIA kernel source package", section="libs"),
        Pkg(f"libnvidia-compute-{branch}", version,
            f"nvidia-kernel-common-{branch}-{up}, ocl-icd-libopencl1, libc6 (>= 2.34), libgcc-s1 (>= 4.3), "
            "libssl3t64 (>= 3.0.0)", provides=f"libnvidia-compute, libcuda1 (= {version})",
            description="NVIDIA libcompute package", section="libs"),
        Pkg(f"nvidia-compute-utils-{branch}", version, f"libnvidia-compute-{branch}, adduser, libc6 (>= 2.34)",
            provides="nvidia-compute-utils, nvidia-persistenced", description="NVIDIA compute utilities",
            section="libs"),
        Pkg(f"libnvidia-cfg1-{branch}", version, f"nvidia-kernel-common-{branch}-{up}, libc6 (>= 2.34)",
            provides="libnvidia-cfg1-any", description="NVIDIA binary OpenGL/GLX configuration library",
            section="libs"),
    ]


def transitional_branch(branch: str, version: str, to: str, label: bool = True) -> list[Pkg]:
    """A retired branch inside the release: same names, each depending on the next branch's package.

    noble's 570-server packages say so only through that dependency (`label=False`)."""
    def desc(what: str, to_pkg: str) -> str:
        return f"Transitional package for {to_pkg}" if label else what
    return [
        Pkg(f"nvidia-headless-no-dkms-{branch}", version, f"nvidia-headless-no-dkms-{to}",
            description=desc("NVIDIA headless metapackage - no DKMS", f"nvidia-headless-no-dkms-{to}"),
            section="libs"),
        Pkg(f"nvidia-utils-{branch}", version, f"nvidia-utils-{to}",
            description=desc("NVIDIA Server Driver support binaries", f"nvidia-utils-{to}"), section="utils"),
    ]


BASE = [
    Pkg(n, v, d, arch=a, section="libs") for n, v, d, a in (
        ("libc6", "2.39-0ubuntu8", "", "amd64"), ("libgcc-s1", "14-20240412-0ubuntu1", "libc6 (>= 2.35)", "amd64"),
        ("libseccomp2", "2.5.5-1ubuntu3", "libc6 (>= 2.34)", "amd64"),
        ("libssl3t64", "3.0.13-0ubuntu3", "libc6 (>= 2.34)", "amd64"),
        ("libpciaccess0", "0.17-3build1", "libc6 (>= 2.34)", "amd64"),
        ("ocl-icd-libopencl1", "2.3.2-1build1", "libc6 (>= 2.34)", "amd64"),
        ("iptables", "1.8.10-3ubuntu2", "libc6 (>= 2.34)", "amd64"), ("kmod", "31+20240202-2ubuntu7", "", "amd64"),
        ("rpcbind", "1.2.6-7ubuntu2", "libc6 (>= 2.34)", "amd64"), ("binutils", "2.42-4ubuntu2", "", "amd64"),
        ("nfs-common", "1:2.6.4-3ubuntu5", "libc6 (>= 2.38), rpcbind, adduser, ucf, keyutils", "amd64"),
        ("keyutils", "1.6.3-3build1", "", "amd64"), ("ucf", "3.0043+nmu1", "debconf", "all"),
        ("debconf", "1.5.86ubuntu1", "", "all"), ("adduser", "3.137ubuntu1", "", "all"),
        ("ca-certificates", "20240203", "", "all"), ("gnupg", "2.4.4-2ubuntu17", "", "all"),
        ("linux-base", "4.5ubuntu9", "", "all"), ("linux-firmware", "20240318.git3b128b60-0ubuntu2", "", "all"),
        ("intel-microcode", "3.20240312.1build1", "", "amd64"), ("amd64-microcode", "3.20231019.1ubuntu2", "", "amd64"),
    )
]

# pocket -> component -> packages. One version per package per pocket, like Ubuntu's archive; the shapes
# (and the 570/580 versions) are noble's indices as of 2026-12.
UBUNTU: dict[str, dict[str, list[Pkg]]] = {
    CODENAME: {
        "main": [*BASE, *kernel("6.8.0-31", "6.8.0-31.31")],
        "restricted": [*driver_branch("550-server", "550.54.15-0ubuntu1"),
                       *prebuilt_modules("550-server", "6.8.0-31", "6.8.0-31.31", "550.54.15-0ubuntu1")],
        "universe": [Pkg("prometheus-node-exporter", "1.7.0-1ubuntu0.3", "libc6 (>= 2.34)")],
    },
    f"{CODENAME}-security": {
        "main": [Pkg("nfs-common", "1:2.6.4-3ubuntu5.1", "libc6 (>= 2.38), rpcbind, adduser, ucf, keyutils",
                     section="net"),
                 *kernel("6.8.0-149", "6.8.0-149.149")],
        "restricted": [*driver_branch("550-server", "550.163.01-0ubuntu0.24.04.1"),
                       *driver_branch("580-server", "580.173.02-0ubuntu0.24.04.1"),
                       *prebuilt_modules("580-server", "6.8.0-149", "6.8.0-149.149", "580.173.02-0ubuntu0.24.04.1")],
    },
    f"{CODENAME}-updates": {
        "main": [Pkg("nfs-common", "1:2.6.4-3ubuntu5.1", "libc6 (>= 2.38), rpcbind, adduser, ucf, keyutils",
                     section="net"),
                 *kernel("6.8.0-151", "6.8.0-151.151")],
        "multiverse": transitional_branch("550-server", "550.163.01-0ubuntu0.24.04.2", "570-server"),
        "restricted": [*transitional_branch("570-server", "570.211.01-0ubuntu1.24.04.1", "580-server", label=False),
                       *driver_branch("580-server", "580.178.04-0ubuntu0.24.04.1"),
                       transitional_modules("550-server", "6.8.0-110.110", "570-server"),
                       transitional_modules("570-server", "6.8.0-110.110", "580-server"),
                       *prebuilt_modules("580-server", "6.8.0-151", "6.8.0-151.151", "580.178.04-0ubuntu0.24.04.1")],
    },
}

DOCKER_VERSIONS = ("5:27.5.1-1~ubuntu.24.04~noble", "5:28.5.2-1~ubuntu.24.04~noble", "5:29.0.0-1~ubuntu.24.04~noble")


def docker_packages() -> list[Pkg]:
    out = [Pkg("containerd.io", v, "libc6 (>= 2.34), libseccomp2 (>= 2.4.1)") for v in ("1.7.27-1", "1.7.28-1")]
    for v in DOCKER_VERSIONS:
        out.append(Pkg("docker-ce-cli", v, "libc6 (>= 2.34)", description="Docker CLI: the open-source "
                                                                         "application container engine"))
        out.append(Pkg("docker-ce", v, "containerd.io (>= 1.7.27), docker-ce-cli, iptables, libseccomp2 (>= 2.3.0), "
                                      "libc6 (>= 2.34)",
                       description="Docker: the open-source application container engine"))
    out += [Pkg("docker-buildx-plugin", v, "libc6 (>= 2.34)")
            for v in ("0.28.0-0~ubuntu.24.04~noble", "0.29.1-1~ubuntu.24.04~noble")]
    out += [Pkg("docker-compose-plugin", v, "") for v in ("2.39.4-1~ubuntu.24.04~noble", "2.40.3-1~ubuntu.24.04~noble")]
    return out


TOOLKIT_VERSIONS = ("1.17.7-1", "1.17.8-1", "1.18.0-1", "1.18.1-1", "1.18.2-1")


def toolkit_packages() -> list[Pkg]:
    """NVIDIA's flat repository: every version; exact-version deps as packaging/debian/control has them."""
    out = []
    for v in TOOLKIT_VERSIONS:
        tools = f"libnvidia-container-tools (= {v})" if compare_versions(v, "1.18.0") >= 0 else \
            f"libnvidia-container-tools (>= {v.split('-')[0]}), libnvidia-container-tools (<< 2.0.0)"
        out += [
            Pkg("nvidia-container-toolkit", v, f"nvidia-container-toolkit-base (= {v}), {tools}",
                description="NVIDIA Container toolkit"),
            Pkg("nvidia-container-toolkit-base", v, "", description="NVIDIA Container Toolkit Base"),
            Pkg("libnvidia-container-tools", v, f"libnvidia-container1 (>= {v}), libc6 (>= 2.34)",
                description="NVIDIA container runtime library (command-line tools)"),
            Pkg("libnvidia-container1", v, "libc6 (>= 2.34)", description="NVIDIA container runtime library"),
        ]
    return out


def _index(path: Path, pkgs: list[Pkg], pool: str) -> list[Path]:
    path.mkdir(parents=True, exist_ok=True)
    text = "\n".join(p.stanza(pool) for p in pkgs).encode()
    plain = path / "Packages"
    plain.write_bytes(text)
    gz = path / "Packages.gz"
    gz.write_bytes(gzip.compress(text, mtime=0))
    return [plain, gz]


def _release(top: Path, files: list[Path], fields: dict[str, str], sde: int) -> None:
    lines = [f"{k}: {v}" for k, v in fields.items()]
    lines.append(f"Date: {formatdate(sde, usegmt=True)}")
    lines.append("SHA256:")
    for f in files:
        data = f.read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {f.relative_to(top).as_posix()}")
    (top / "Release").write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Mirror:
    root: Path

    def overrides(self, base_url: str) -> dict[str, str]:
        """--mirror-override values for a server whose document root is `root`."""
        b = base_url.rstrip("/")
        return {"ubuntu": f"{b}/ubuntu", "ubuntu-security": f"{b}/ubuntu", "docker": f"{b}/{DOCKER_LAYOUT}",
                "nvidia": f"{b}/{NVIDIA_LAYOUT}"}

    def sources_list(self, base_url: str) -> str:
        """An apt sources.list for the whole mirror (unsigned indices: trusted=yes)."""
        ov = self.overrides(base_url)
        comps = " ".join(COMPONENTS)
        return "".join([
            *(f"deb [trusted=yes] {ov['ubuntu']} {pocket} {comps}\n" for pocket in UBUNTU),
            f"deb [trusted=yes] {ov['docker']} {CODENAME} stable\n",
            f"deb [trusted=yes] {ov['nvidia']} /\n",
        ])


def write_mirror(root: Path, sde: int = 1769126400) -> Mirror:
    """Write the indices below `root` (ubuntu/, docker/linux/ubuntu/, nvidia/stable/deb/amd64/)."""
    ubuntu = root / "ubuntu"
    for pocket, comps in UBUNTU.items():
        dist = ubuntu / "dists" / pocket
        files: list[Path] = []
        for comp in COMPONENTS:
            files += _index(dist / comp / "binary-amd64", comps.get(comp, []), f"pool/{comp}")
        _release(dist, files, {"Origin": "Ubuntu", "Label": "Ubuntu", "Suite": pocket, "Codename": CODENAME,
                               "Architectures": "amd64", "Components": " ".join(COMPONENTS)}, sde)
    dock = root / DOCKER_LAYOUT / "dists" / CODENAME
    files = _index(dock / "stable" / "binary-amd64", docker_packages(), "pool/stable")
    _release(dock, files, {"Origin": "Docker", "Label": "Docker CE", "Suite": CODENAME, "Codename": CODENAME,
                           "Architectures": "amd64", "Components": "stable"}, sde)
    nv = root / NVIDIA_LAYOUT
    files = _index(nv, toolkit_packages(), "./")[:1]  # the flat repo publishes an uncompressed Packages
    (nv / "Packages.gz").unlink()
    _release(nv, files, {"Origin": "https://nvidia.github.io/libnvidia-container/stable/deb/amd64",
                         "Label": "NVIDIA CONTAINER TOOLKIT"}, sde)
    return Mirror(root)
