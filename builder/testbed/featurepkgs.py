"""Packages of the seed's optional features for the harness Ubuntu mirror (`noble/universe`).

- `prometheus-node-exporter`: the REAL Debian bookworm package (the stand-in is bookworm), fetched
  once with `apt-get download` into the same .deb cache the stand-in image build uses
  (`<cache>/debs/bookworm`). Its dependencies (adduser, libc6, init-system-helpers) are in the image;
  its Recommends (prometheus-node-exporter-collectors) are left out.
- `qemu-system-x86`, `qemu-utils`, `libvirt-daemon-system`, `libvirt-clients`: STANDIN stubs with the
  real names (the real ones are hundreds of MB): the libvirt system group, /etc/libvirt/hooks/, the
  default network's state, and a `virsh` stub answering net-list / net-destroy / net-autostart.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from builder.errors import BuilderError
from builder.run import require_tool, run
from builder.testbed.aptrepo import StubPackage, build_deb
from builder.testbed.gpgkeys import cache_root

REAL_DEBIAN = ("prometheus-node-exporter",)
DEBIAN_SUITE = "bookworm"
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


def debian_deb(name: str, suite: str = DEBIAN_SUITE) -> Path:
    """The real Debian .deb of `name` from the image build's .deb cache, downloaded there first if absent
    (this machine's apt, which must know `suite`: the harness runs on Debian bookworm)."""
    cache = cache_root() / "debs" / suite
    found = sorted(cache.glob(f"{name}_*_amd64.deb"))
    if found:
        return found[-1]
    apt_get = require_tool("apt-get", "apt")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        run([apt_get, "download", "-q", name], cwd=cache, timeout=600)
    except BuilderError as exc:
        raise BuilderError(f"cannot download the Debian package {name} for the stand-in: {exc.message}",
                           hint="run `apt-get update` (this machine's apt must list Debian bookworm)") from None
    found = sorted(cache.glob(f"{name}_*_amd64.deb"))
    if not found:
        raise BuilderError(f"apt-get download {name} wrote no {name}_*_amd64.deb into {cache}")
    return found[-1]


def build_feature_pool(mirror: Path, work: Path, sde: int) -> Path:
    """Stubs + real Debian debs into `<mirror>/pool/universe`; returns that folder (to be indexed)."""
    pool = mirror / "pool" / COMPONENT
    for pkg in FEATURE_STUBS:
        for v in pkg.versions:
            build_deb(pkg, v, pool / pkg.name[0] / pkg.name, work, sde)
    for name in REAL_DEBIAN:
        deb = debian_deb(name)
        dest = pool / name[0] / name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(deb, dest / deb.name)
    return pool
