"""Boot the default model on the STANDIN image and look at it the way an admin would (over SSH)."""

from __future__ import annotations

import json

import pytest

from builder.model import load_model
from builder.verify.ssh import ssh_run

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def model(repo_root):
    return load_model(repo_root / "hosts" / "prometheus.yaml")


def test_cloud_init_done_and_timings(firstboot_guest):
    r = ssh_run(firstboot_guest, "cloud-init status --long", timeout=60)
    assert "status: done" in r.stdout, r.stdout + r.stderr
    t = firstboot_guest.timings
    assert 0 < t["cloud_init_done"] <= t["ssh_ready"]
    print(f"first-boot timings: {t}")


def test_admin_over_mgmt(firstboot_guest, model):
    r = ssh_run(firstboot_guest, "id -un; id -u; id -g", timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [model.admin.name, str(model.admin.uid), str(model.admin.gid)]


def test_both_nics_named_and_addressed_as_modelled(firstboot_guest, model):
    r = ssh_run(firstboot_guest, "ip -j addr show", timeout=30)
    assert r.returncode == 0, r.stderr
    links = {i["ifname"]: i for i in json.loads(r.stdout)}
    for nic in (model.servers, model.mgmt):
        assert nic.name in links, f"{nic.name} missing; have {sorted(links)}"
        link = links[nic.name]
        assert link["address"] == nic.mac.lower()
        addrs = [a["local"] for a in link["addr_info"] if a["family"] == "inet"]
        assert nic.ip in addrs, f"{nic.name}: {addrs}"


def test_ssh_refused_on_servers_forward(firstboot_guest):
    r = ssh_run(firstboot_guest, "true", timeout=30, port=firstboot_guest.servers_ssh_port)
    assert r.returncode == 255, (r.returncode, r.stderr)


def test_nfs_mounts_present_and_rw_writes_reach_atlas(firstboot_guest, model):
    rw = next(m for m in model.nfs.mounts if m.access == "rw")
    r = ssh_run(firstboot_guest, f"ls {rw.mountpoint} >/dev/null; findmnt -J -l -t nfs,nfs4", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    mounted = {fs["target"]: fs for fs in json.loads(r.stdout)["filesystems"]}
    assert rw.mountpoint in mounted, sorted(mounted)
    w = ssh_run(firstboot_guest, f"echo hello > {rw.mountpoint}/from-guest.txt", timeout=60)
    assert w.returncode == 0, w.stderr
    nfs = firstboot_guest.nfs
    host_file = nfs.tree / rw.export.lstrip("/") / "from-guest.txt"
    assert host_file.read_text() == "hello\n"
    assert host_file.stat().st_uid == model.admin.uid


def test_default_route_only_via_servers_from_dhcp(firstboot_guest, model):
    r = ssh_run(firstboot_guest, "ip -j route show default", timeout=30)
    assert r.returncode == 0, r.stderr
    routes = json.loads(r.stdout)
    assert [(x.get("gateway"), x.get("dev")) for x in routes] == [(model.servers.gateway, model.servers.name)]

