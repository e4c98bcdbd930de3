"""The routed MGMT network's plumbing (no VM): namespaces, the relay's tap at the MGMT gateway
address, the client's route through it, the QEMU NIC and SSH options, and nothing left behind."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.model import load_model
from builder.qemu import _nic_args
from builder.testbed.boot import NetPlan, nics_for
from builder.testbed.mgmtnet import CLIENT_IP, ROUTER_CLIENT_IP, TAP, RoutedMgmt, routed_mgmt
from builder.verify.ssh import GuestAccess, ssh_command

MODEL = load_model(None)


def _netns() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout


def test_mgmt_nic_is_a_dgram_link_and_ssh_goes_through_the_router(tmp_path: Path) -> None:
    lay = RoutedMgmt("rtr", "cli", tmp_path / "q.sock", tmp_path / "r.sock")
    srv, mgmt = nics_for(MODEL, NetPlan(2222, 2223), (), lay)
    assert "hostfwd" not in mgmt.netdev and mgmt.backend == "dgram"
    assert _nic_args(mgmt)[1] == (f"dgram,id=mgmt,local.type=unix,local.path={tmp_path}/q.sock,"
                                  f"remote.type=unix,remote.path={tmp_path}/r.sock")
    assert _nic_args(srv)[1].startswith("user,id=servers,")
    access = GuestAccess(MODEL.mgmt.ip, 22, 2223, "ops", tmp_path / "key", tmp_path / "serial.log",
                         proxy_command=lay.proxy_command())
    argv = ssh_command(access, "true")
    assert "ProxyCommand=ip netns exec rtr nc -q 2 %h %p" in argv and f"ops@{MODEL.mgmt.ip}" in argv


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")
def test_namespaces_router_and_client_are_made_and_removed(tmp_path: Path) -> None:
    before = _netns()
    with routed_mgmt(MODEL, tmp_path) as lay:
        addrs = subprocess.run(["ip", "netns", "exec", lay.router_ns, "ip", "-4", "-o", "addr"],
                               capture_output=True, text=True, check=True).stdout
        assert any(TAP in line and f"inet {MODEL.mgmt.gateway}/24" in line for line in addrs.splitlines()), addrs
        assert any("veth-rtr" in line and f"inet {ROUTER_CLIENT_IP}/24" in line for line in addrs.splitlines())
        route = subprocess.run(lay.in_client(["ip", "-4", "route", "get", MODEL.mgmt.ip]),
                               capture_output=True, text=True, check=True).stdout
        assert f"via {ROUTER_CLIENT_IP}" in route and f"src {CLIENT_IP}" in route, route
        fwd = subprocess.run(["ip", "netns", "exec", lay.router_ns, "sysctl", "-n", "net.ipv4.ip_forward"],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert fwd == "1"
        assert lay.relay_sock.exists()
    assert _netns() == before
    assert not lay.relay_sock.exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nc") is None,
                    reason="needs root, iproute2 and nc")
def test_outside_probes_reach_mgmt_through_a_loopback_forward_into_the_router(tmp_path: Path) -> None:
    """The probes run from this machine (SSH banner, ssh-audit) reach MGMT from ROUTER: a banner served
    on the router's MGMT address comes back through 127.0.0.1:PORT; nothing listens there afterwards."""
    import socket
    import time

    from builder.testbed.mgmtnet import mgmt_forward

    with routed_mgmt(MODEL, tmp_path) as lay:
        server = subprocess.Popen(["ip", "netns", "exec", lay.router_ns, "sh", "-c",
                                   f"echo SSH-2.0-standin-banner | nc -q 1 -l -s {MODEL.mgmt.gateway} -p 2022"])
        try:
            time.sleep(0.5)
            with mgmt_forward(lay, MODEL.mgmt.gateway, 2022) as port:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                    conn.settimeout(10)
                    assert conn.recv(64).startswith(b"SSH-2.0-standin-banner")
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        finally:
            server.kill()
            server.wait()
