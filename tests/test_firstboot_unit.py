"""Fast tests (no VM) for the first-boot harness: command lines, seed, repo, keys, reproducibility."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from builder.model import load_model
from builder.qemu import qemu_command
from builder.testbed.boot import NetPlan, build_seed_iso, nics_for, vm_spec
from builder.testbed.image import StandinImage, make_ext4_image
from builder.testbed.services import GuestFwd, service_address
from builder.verify.ssh import GuestAccess, ssh_command


def _need(*tools: str) -> None:
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"tool '{t}' not installed")


@pytest.fixture(scope="module")
def model():
    return load_model()


def test_service_address_avoids_gateway_dns_and_dhcp_pool(model):
    ip = service_address(model)
    assert ip == "10.60.0.10"
    assert ip not in (model.servers.gateway, model.servers.reserved_address, "10.60.0.3")


def test_nics_match_the_model(model):
    fwds = (GuestFwd("10.60.0.10", 80, 41000), GuestFwd("10.60.0.10", 2049, 42000))
    srv, mgmt = nics_for(model, NetPlan(ssh_port=2222, servers_ssh_port=2223), fwds)
    assert (srv.id, srv.mac, mgmt.id, mgmt.mac) == ("servers", "52:54:00:60:00:01", "mgmt", "52:54:00:99:00:01")
    s = srv.netdev.split(",")
    # DHCP on SERVERS: QEMU only hands out the router (default route) when not restricted.
    assert {"net=10.60.0.0/24", "host=10.60.0.1", "dhcpstart=10.60.0.50", "restrict=off"} <= set(s)
    assert "hostfwd=tcp:127.0.0.1:2223-10.60.0.50:22" in s
    assert "guestfwd=tcp:10.60.0.10:80-cmd:nc -q 2 127.0.0.1 41000" in s
    assert "guestfwd=tcp:10.60.0.10:2049-cmd:nc -q 2 127.0.0.1 42000" in s
    m = mgmt.netdev.split(",")
    assert {"net=10.99.0.0/24", "host=10.99.0.1", "restrict=on"} <= set(m)
    assert "hostfwd=tcp:127.0.0.1:2222-10.99.0.20:22" in m
    assert not any(o.startswith(("guestfwd", "dhcpstart")) for o in m)


def test_qemu_command_line(model, tmp_path):
    _need("qemu-system-x86_64")
    img = StandinImage(tmp_path / "disk.img", tmp_path / "vmlinuz", tmp_path / "initrd.img",
                       "root=/dev/vda rw console=ttyS0,115200n8", "k")
    nics = nics_for(model, NetPlan(2222, 2223), ())
    spec = vm_spec(model, img, tmp_path / "o.qcow2", tmp_path / "seed.iso", tmp_path / "serial.log", nics)
    argv = qemu_command(spec, tmp_path)
    joined = " ".join(argv)
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert f"file={tmp_path}/o.qcow2,format=qcow2" in joined
    assert f"file={tmp_path}/seed.iso,format=raw,if=none,id=drv1,readonly=on" in joined
    assert "virtio-net-pci,netdev=servers,mac=52:54:00:60:00:01" in joined
    assert "virtio-net-pci,netdev=mgmt,mac=52:54:00:99:00:01" in joined
    assert joined.index("netdev=servers") < joined.index("netdev=mgmt")  # SERVERS is NIC 1
    assert argv[argv.index("-kernel") + 1] == str(img.kernel)
    assert argv[argv.index("-serial") + 1] == f"file:{tmp_path}/serial.log"


def test_ssh_command(tmp_path):
    acc = GuestAccess("127.0.0.1", 2222, 2223, "ops", tmp_path / "id", tmp_path / "serial.log")
    argv = ssh_command(acc, ["cat", "/etc/os-release x"])
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id")
    assert "StrictHostKeyChecking=no" in argv and "UserKnownHostsFile=/dev/null" in argv
    assert argv[-3:] == ["ops@127.0.0.1", "--", "cat '/etc/os-release x'"]
    assert ssh_command(acc, "true", port=2223)[4] == "2223"


def test_seed_iso_is_cidata_and_reproducible(tmp_path):
    _need("xorriso")
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "user-data").write_text("#cloud-config\n")
    (seed / "meta-data").write_text("instance-id: x\n")
    (seed / "network-config").write_text("network: {version: 2}\n")
    a = build_seed_iso(seed, tmp_path / "a.iso", 1769126400)
    time.sleep(1.1)
    os.utime(seed / "user-data")
    b = build_seed_iso(seed, tmp_path / "b.iso", 1769126400)
    assert a.read_bytes() == b.read_bytes()
    pvd = a.read_bytes()[0x8000:0x8800]
    assert pvd[40:72].decode().strip() == "CIDATA"
    listing = subprocess.run(["xorriso", "-indev", str(a), "-find", "/", "-type", "f"],
                             capture_output=True, text=True).stdout
    assert {"'/user-data'", "'/meta-data'", "'/network-config'"} <= set(listing.split())


def test_seed_needs_user_data(tmp_path):
    from builder.errors import BuilderError

    _need("xorriso")
    with pytest.raises(BuilderError, match="lacks user-data"):
        build_seed_iso(tmp_path, tmp_path / "x.iso", 0)


def test_ext4_image_is_reproducible(tmp_path):
    """Same tree content in two folders at two times -> identical image bytes."""
    _need("mkfs.ext4", "debugfs")
    digests = []
    for n in ("one", "two"):
        tree = tmp_path / n / "tree"
        (tree / "etc" / "x\\x2dy").mkdir(parents=True)
        (tree / "etc" / "hostname").write_text("standin\n")
        (tree / "etc" / "x\\x2dy" / "f g").write_text("data\n")
        os.symlink("hostname", tree / "etc" / "link")
        img = tmp_path / n / "disk.img"
        make_ext4_image(tree, img, "8M", 1769126400, label="root", seed="k")
        digests.append(hashlib.sha256(img.read_bytes()).hexdigest())
        time.sleep(1.1)
    assert digests[0] == digests[1]



def test_reap_helpers_kills_only_this_forwards_nc(tmp_path):
    _need("nc")
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        fwd = GuestFwd("10.60.0.10", 2049, port)
        other = GuestFwd("10.60.0.10", 2049, port + 1)
        # Like QEMU's guestfwd: nc in a session of its own, stdin held open.
        p = subprocess.Popen(fwd.helper_argv(), stdin=subprocess.PIPE, start_new_session=True)
        conn, _ = srv.accept()
        assert other.reap_helpers() == 0 and p.poll() is None
        assert fwd.reap_helpers() == 1
        assert p.wait(timeout=10) != 0
        conn.close()


@pytest.mark.skipif(shutil.which("ganesha.nfsd") is None or os.geteuid() != 0, reason="needs nfs-ganesha and root")
def test_nfs_server_from_a_relative_workdir_exports_absolute_paths(tmp_path, monkeypatch):
    """A relative --out once put a relative export path into ganesha.conf: ganesha then had no export
    and the guest's writes meant for Atlas landed on the local disk. Paths for other programs are absolute."""
    import re

    from builder.testbed.nfs import nfs_server

    monkeypatch.chdir(tmp_path)
    with nfs_server(Path("rel") / "nfs", 3000, 3000) as server:
        text = (server.workdir / "ganesha.conf").read_text()
        assert server.running
    paths = re.findall(r'Path = "([^"]+)"', text)
    assert paths and all(p.startswith(str(tmp_path)) for p in paths), text
