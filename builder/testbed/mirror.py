"""A local package mirror with the real shapes of Ubuntu's, Docker's and NVIDIA's repositories.

Only indices (`Packages`, `Packages.gz`, `Release`): enough for `builder validate --online` and for
`apt-get install -s`, which never download a .deb. What it reproduces, from UBUNTU-FACTS.md:

- Ubuntu's pockets hold ONE version of a package each, and `noble`, `noble-updates` and
  `noble-security` differ; an older pin survives only while some pocket still carries it.
- The 550-server branch is retired inside 24.04: noble-updates has `550.163.01-0ubuntu0.24.04.2`, a
  transitional package pulling 570-server, itself transitional to 580-server; noble-security still
  has the real `550.163.01-0ubuntu0.24.04.1`.
- The driver packages depend on each other with `(= V)`; the signed prebuilt modules metapackage
  `linux-modules-nvidia-<branch>-generic` is versioned like the kernel and depends on the ABI package.
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
    """linux-generic at one ABI (e.g. abi 6.8.0-149, version 6.8.0-149.149)."""
    return [
        Pkg("linux-generic", version, f"linux-image-generic (= {version}), linux-headers-generic (= {version})",
            description="Complete Generic Linux kernel and headers"),
        Pkg("linux-image-generic", version, f"linux-image-{abi}-generic", description="Generic Linux kernel image"),
        Pkg("linux-headers-generic", version, f"linux-headers-{abi}-generic",
            description="Generic Linux kernel headers"),
        Pkg(f"linux-image-{abi}-generic", version, "", description=f"Signed kernel image generic {abi}"),
        Pkg(f"linux-headers-{abi}-generic", version, "", description=f"Linux kernel headers for {abi}"),
    ]


def prebuilt_modules(branch: str, abi: str, kver: str, min_driver: str) -> list[Pkg]:
    """Canonical's signed prebuilt modules for one kernel ABI (source linux-restricted-modules)."""
    return [
        Pkg(f"linux-modules-nvidia-{branch}-generic", kver,
            f"linux-modules-nvidia-{branch}-{abi}-generic (= {kver}), nvidia-kernel-common-{branch} (>= {min_driver})",
            description=f"Extra drivers for nvidia-{branch} for the generic flavour", section="kernel"),
        Pkg(f"linux-modules-nvidia-{branch}-{abi}-generic", kver,
            f"linux-image-{abi}-generic | linux-image-unsigned-{abi}-generic, "
            f"linux-signatures-nvidia-{abi}-generic (= {kver})",
            description=f"Linux kernel nvidia modules for version {abi}", section="kernel"),
        Pkg(f"linux-signatures-nvidia-{abi}-generic", kver, "", description=f"Linux kernel signatures for {abi}",
            section="kernel"),
    ]


def driver_branch(branch: str, version: str) -> list[Pkg]:
    """One version of an Ubuntu NVIDIA server branch: the no-DKMS headless set and its (= V) family."""
    upstream = version.split("-")[0]
    return [
        Pkg(f"nvidia-headless-no-dkms-{branch}", version,
            f"nvidia-kernel-common-{branch} (= {version}), libnvidia-compute-{branch} (= {version}), "
            f"nvidia-compute-utils-{branch} (= {version}), libnvidia-cfg1-{branch} (= {version})",
            description="NVIDIA headless metapackage - no DKMS", section="libs"),
        Pkg(f"nvidia-utils-{branch}", version,
            f"libc6 (>= 2.34), libnvidia-compute-{branch} (>= {upstream}), nvidia-kernel-common-{branch}-{upstream}",
            description="NVIDIA Server Driver support binaries", section="utils"),
        Pkg(f"nvidia-kernel-common-{branch}", version, "", provides=f"nvidia-kernel-common-{branch}-{upstream}",
            description="Shared files used with the kernel module", section="libs"),
        Pkg(f"libnvidia-compute-{branch}", version, "libc6 (>= 2.34)", description="NVIDIA libcompute package",
            section="libs"),
        Pkg(f"nvidia-compute-utils-{branch}", version, f"libnvidia-compute-{branch} (= {version})",
            description="NVIDIA compute utilities", section="libs"),
        Pkg(f"libnvidia-cfg1-{branch}", version, "libc6 (>= 2.34)",
            description="NVIDIA binary OpenGL/GLX configuration library", section="libs"),
    ]


def transitional_branch(branch: str, version: str, to: str) -> list[Pkg]:
    """A retired branch inside the release: same names, each a transitional package to the next branch."""
    return [
        Pkg(f"nvidia-headless-no-dkms-{branch}", version, f"nvidia-headless-no-dkms-{to}",
            description=f"Transitional package for nvidia-headless-no-dkms-{to}", section="libs"),
        Pkg(f"nvidia-utils-{branch}", version, f"nvidia-utils-{to}",
            description=f"Transitional package for nvidia-utils-{to}", section="utils"),
    ]


BASE = [
    Pkg("libc6", "2.39-0ubuntu8", description="GNU C Library: Shared libraries", section="libs"),
    Pkg("libseccomp2", "2.5.5-1ubuntu3", "libc6 (>= 2.34)", section="libs"),
    Pkg("iptables", "1.8.10-3ubuntu2", "libc6 (>= 2.34)", section="net"),
    Pkg("rpcbind", "1.2.6-7ubuntu2", "libc6 (>= 2.34)", section="net"),
    Pkg("nfs-common", "1:2.6.4-3ubuntu5", "libc6 (>= 2.34), rpcbind", section="net"),
    Pkg("ca-certificates", "20240203", "", arch="all"),
    Pkg("gnupg", "2.4.4-2ubuntu17", "", arch="all"),
]

# pocket -> component -> packages. One version per package per pocket, like Ubuntu's archive.
UBUNTU: dict[str, dict[str, list[Pkg]]] = {
    CODENAME: {
        "main": [*BASE, *kernel("6.8.0-31", "6.8.0-31.31")],
        "restricted": [*driver_branch("550-server", "550.67-0ubuntu3"),
                       *prebuilt_modules("550-server", "6.8.0-31", "6.8.0-31.31", "550.67")],
        "universe": [Pkg("prometheus-node-exporter", "1.7.0-1ubuntu0.3", "libc6 (>= 2.34)")],
    },
    f"{CODENAME}-security": {
        "main": [Pkg("nfs-common", "1:2.6.4-3ubuntu5.1", "libc6 (>= 2.34), rpcbind", section="net"),
                 *kernel("6.8.0-147", "6.8.0-147.147")],
        "restricted": [*driver_branch("550-server", "550.163.01-0ubuntu0.24.04.1"),
                       *driver_branch("580-server", "580.159.03-0ubuntu0.24.04.1"),
                       *prebuilt_modules("550-server", "6.8.0-147", "6.8.0-147.147", "550.163.01"),
                       *prebuilt_modules("580-server", "6.8.0-147", "6.8.0-147.147", "580.159.03")],
    },
    f"{CODENAME}-updates": {
        "main": [Pkg("nfs-common", "1:2.6.4-3ubuntu5.1", "libc6 (>= 2.34), rpcbind", section="net"),
                 *kernel("6.8.0-149", "6.8.0-149.149")],
        "restricted": [*transitional_branch("550-server", "550.163.01-0ubuntu0.24.04.2", "570-server"),
                       *transitional_branch("570-server", "570.195.03-0ubuntu0.24.04.2", "580-server"),
                       *driver_branch("580-server", "580.173.02-0ubuntu0.24.04.1"),
                       *prebuilt_modules("580-server", "6.8.0-149", "6.8.0-149.149", "580.173.02")],
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
