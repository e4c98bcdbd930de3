"""Packages of the seed's optional features for the harness Ubuntu mirror (`noble/universe`).

- `prometheus-node-exporter`: the REAL Debian trixie package (the stand-in is trixie), downloaded by
  the stand-in image build while its trixie sources are configured (`image.feature_debs`: the package
  and whatever of its Depends the image lacks; this machine's own apt lists only bookworm). Its
  Recommends (prometheus-node-exporter-collectors) are left out.
- `qemu-system-x86`, `qemu-utils`, `libvirt-daemon-system`, `libvirt-clients`: STANDIN stubs with the
  real names (the real ones are hundreds of MB): the libvirt system group, /etc/libvirt/hooks/, the
  default network's state, and a `virsh` stub answering net-list / net-destroy / net-autostart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from builder.errors import BuilderError
from builder.testbed.aptrepo import StubPackage, build_deb
from builder.testbed.image import FEATURE_DEBS

REAL_DEBIAN = FEATURE_DEBS  # ("prometheus-node-exporter",): downloaded by the image build
DEBIAN_SUITE = "trixie"
LIBVIRT = ("10.0.0-2ubuntu8",)
QEMU = ("1:8.2.2+ds-0ubuntu1",)
FEATURE_STUBS = (
    StubPackage("qemu-system-x86", QEMU, (), description="QEMU full system emulation (x86)"),
    StubPackage("qemu-utils", QEMU, (), description="QEMU utilities"),
    StubPackage("libvirt-clients", LIBVIRT, (("usr/bin/virsh", "virsh"),), description="libvirt clients (virsh)"),
    StubPackage("libvirt-daemon-system", LIBVIRT, (), depends="libvirt-clients",
                postinst="libvirt-daemon-system.postinst", description="libvirt daemon configuration"),
)
COMPONENT = "universe"  # the pool folder below the mirror, indexed for noble/universe


def debian_debs() -> list[Path]:
    """The real Debian .debs of REAL_DEBIAN with the Depends the image lacks, from the image build."""
    from builder.testbed.image import build_image

    folder = build_image().feature_debs
    found = sorted(folder.glob("*.deb"))
    missing = [n for n in REAL_DEBIAN if not any(p.name.startswith(f"{n}_") for p in found)]
    if missing:
        raise BuilderError(f"the stand-in image build downloaded no {', '.join(missing)} into {folder}",
                           hint="rebuild the stand-in image (builder standin image --force)")
    return found


def build_feature_pool(mirror: Path, work: Path, sde: int) -> Path:
    """Stubs + real Debian debs into `<mirror>/pool/universe`; returns that folder (to be indexed)."""
    pool = mirror / "pool" / COMPONENT
    for pkg in FEATURE_STUBS:
        for v in pkg.versions:
            build_deb(pkg, v, pool / pkg.name[0] / pkg.name, work, sde)
    for deb in debian_debs():
        name = deb.name.split("_")[0]
        dest = pool / name[0] / name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb, dest / deb.name)
    return pool
