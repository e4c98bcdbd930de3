"""The harness mirror's packages for the optional features: the real Debian node exporter beside
STANDIN stubs with the real names, and the STANDIN virsh that the first boot and the checks talk to."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.resources import resource_path
from builder.seed.features import VIRT_PACKAGES
from builder.verify.checks_features import parse_net_list

VIRSH = resource_path("testbed", "stub-debs", "virsh")


def virsh(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(VIRSH), "--connect", "qemu:///system", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "STANDIN_LIBVIRT_STATE": str(state)}, check=False)


def test_standin_virsh_default_network(tmp_path: Path) -> None:
    state = tmp_path / "default"
    state.write_text("state=active\nauto=yes\n")  # as libvirt-daemon-system's STANDIN postinst leaves it
    assert parse_net_list(virsh(state, "net-list", "--all").stdout) == {"default": ("active", "yes")}
    assert virsh(state, "net-destroy", "default").returncode == 0
    again = virsh(state, "net-destroy", "default")
    assert again.returncode == 1 and "is not active" in again.stderr
    assert virsh(state, "net-autostart", "--disable", "default").returncode == 0
    assert parse_net_list(virsh(state, "net-list", "--all").stdout) == {"default": ("inactive", "no")}
    assert parse_net_list(virsh(state, "net-list").stdout) == {}  # inactive networks need --all
    assert virsh(state, "start", "guest").returncode == 1


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("apt-get") is None, reason="needs dpkg + apt")
@pytest.mark.skipif(os.geteuid() != 0, reason="the real node exporter comes from the stand-in image build (root)")
def test_feature_pool_has_real_node_exporter_and_named_stubs(tmp_path: Path) -> None:
    from builder.testbed.featurepkgs import build_feature_pool

    pool = build_feature_pool(tmp_path / "ubuntu", tmp_path / "work", 1769126400)
    debs = {p.name.split("_")[0]: p for p in pool.rglob("*.deb")}
    assert set(debs) == {*VIRT_PACKAGES, "prometheus-node-exporter"}

    def field(deb: Path, name: str) -> str:
        return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                              check=True).stdout.strip()

    assert "STANDIN" not in field(debs["prometheus-node-exporter"], "Description")  # the real package
    from builder.testbed.image import build_image  # ... of trixie: downloaded by the stand-in image build

    exporter = debs["prometheus-node-exporter"]
    assert exporter.read_bytes() == (build_image().feature_debs / exporter.name).read_bytes()
    for name in VIRT_PACKAGES:
        assert field(debs[name], "Description").startswith("STANDIN"), name
    files = subprocess.run(["dpkg-deb", "-c", str(debs["libvirt-clients"])], capture_output=True, text=True,
                           check=True).stdout
    assert "./usr/bin/virsh" in files
