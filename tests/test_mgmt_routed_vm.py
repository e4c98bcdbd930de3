"""An admin client on ANOTHER subnet reaches SSH on MGMT through a router at the MGMT gateway
address (issue 10, "Must show"). The guest's MGMT NIC is a routed network in namespaces this test
creates (builder.testbed.mgmtnet): ROUTER holds the MGMT gateway address, CLIENT (192.0.2.10) routes
through it. The client's SSH works only because replies from the MGMT address leave via the MGMT
gateway (source policy routing); without the rule (as rendered before issue 10) they leave via
SERVERS' default route and the client never gets an answer.

The boot is the session's variant boot (tests/conftest.py `variant_guest`), whose MGMT is routed;
the default shared boot has MGMT on a QEMU port forward, which hides routing entirely.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from builder.run import run
from builder.testbed.mgmtnet import CLIENT_IP
from builder.verify.ssh import ssh_command
from tests.guest import sudo

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def routed(variant_guest):  # noqa: ANN001
    assert variant_guest.mgmt_net is not None
    return variant_guest


def client_ssh(s, cmd: str) -> subprocess.CompletedProcess[bytes]:  # noqa: ANN001
    """SSH from the CLIENT namespace straight to the MGMT address (no proxy: routed via ROUTER)."""
    argv = s.mgmt_net.in_client(ssh_command(replace(s.access, proxy_command=None), cmd))
    return run(argv, check=False, timeout=60)



def test_client_on_another_subnet_reaches_ssh_on_mgmt_only_with_policy_routing(routed) -> None:  # noqa: ANN001
    from builder.seed.hostconfig import mgmt_route_table

    mgmt_ip, table = routed.model.mgmt.ip, mgmt_route_table(routed.model)
    ok = client_ssh(routed, "hostname; echo $SSH_CONNECTION")
    out = ok.stdout.decode(errors="replace").split()
    assert ok.returncode == 0, ok.stderr.decode(errors="replace")
    assert out[0] == routed.model.host.hostname
    assert out[1] == CLIENT_IP and out[3] == mgmt_ip, out  # not NATed: the guest answered 192.0.2.10 itself
    # The reply path is the MGMT table's default via the MGMT gateway.
    route = routed.host.run(f"ip -4 route get {CLIENT_IP} from {mgmt_ip}", 30).stdout
    assert f"via {routed.model.mgmt.gateway} dev {routed.model.mgmt.name}" in route, route
    # Without the source rule (the render before issue 10) the client gets no answer.
    sudo(routed, f"ip rule del from {mgmt_ip} lookup {table}")
    try:
        bad = client_ssh(routed, "true")
        assert bad.returncode == 255, (bad.returncode, bad.stderr)
    finally:
        sudo(routed, f"ip rule add from {mgmt_ip}/32 lookup {table}")
    again = client_ssh(routed, "true")
    assert again.returncode == 0, again.stderr.decode(errors="replace")
