"""The FIRST boot with Atlas unreachable (issue 10, "Must show"): no NFS server, and Atlas' name
resolves nowhere (the guest is told Atlas as `atlas.standin.invalid`: RFC 2606 reserves .invalid,
the stand-in has no resolver that knows it). cloud-init must still finish within 5 minutes under
TCG with the admin user and the SSH hardening in place, Docker must stay stopped, and nothing may
be written under the NFS mountpoints on the local disk. Then Atlas comes back (the NFS stand-in
starts, and its name resolves: the harness has no DNS server, so it plays the site's resolver by
adding the name to the guest's /etc/hosts) and, with nobody touching the host's units, the mounts
and Docker come up by themselves (prometheus-atlas.service retries every 30 s).

The boot is the session's variant boot (tests/conftest.py `variant_guest`: features on, MGMT routed),
whose first boot happens with Atlas down from the very start. This file sorts before the other
modules of that boot, which need Atlas.
"""

from __future__ import annotations

import pytest

from tests.conftest import VARIANT_ATLAS_NAME, VARIANT_FIRST_BOOT_LIMIT, restore_atlas
from tests.guest import checks_prefixed, sudo

pytestmark = pytest.mark.vm

RECOVERY_LIMIT = 180.0  # mounts and Docker up at most this long after Atlas answers
FIRST_BOOT_IDS = ("system.hostname", "users.", "ssh.sshd-effective", "ssh.moduli", "ssh.listeners",
                  "ssh.reachability", "net.listeners", "net.mgmt-policy-routing", "network.")


@pytest.fixture(scope="module")
def down(variant_guest):  # noqa: ANN001
    return variant_guest




def nfs_mounted(s) -> set[str]:  # noqa: ANN001
    return set(s.host.run("findmnt -rn -t nfs4,nfs -o TARGET", 30).stdout.split())


def test_first_boot_finishes_without_atlas(down) -> None:  # noqa: ANN001
    if down.access.nfs.running:
        pytest.skip("Atlas was restored by an earlier test of the variant boot: its first-boot state is gone")
    print(f"atlas-down first boot timings: {down.access.timings}")
    assert down.model.nfs.server == VARIANT_ATLAS_NAME
    assert down.access.timings["cloud_init_done"] <= VARIANT_FIRST_BOOT_LIMIT, down.access.timings
    # The name really is unresolvable on the guest, and nothing answers NFS.
    assert down.host.run(f"getent ahosts {VARIANT_ATLAS_NAME}", 30).rc != 0
    res = checks_prefixed(down, *FIRST_BOOT_IDS)
    assert any(k.startswith("users.") for k in res) and "ssh.sshd-effective" in res
    bad = {k: r.outcome.message for k, r in res.items() if r.status != "pass"}
    assert not bad, bad
    status = down.host.run("cloud-init status --long", 60)
    assert "status: done" in status.stdout, status.stdout + status.stderr
    # Docker stays stopped: it requires the RW shares, which cannot mount.
    assert down.host.run("systemctl is-active docker.service", 30).stdout.strip() != "active"
    assert nfs_mounted(down) == set()
    # Nothing was written under the mountpoints on the local disk: only the empty mountpoint folders.
    mountpoints = {m.mountpoint for m in down.model.nfs.mounts}
    entries = sudo(down, "find /mnt/atlas -xdev -printf '%y %p\\n'").split("\n")
    stray = [e for e in entries if e and not (e.startswith("d ") and e[2:] in mountpoints)]
    assert not stray, stray
    # The Atlas unit keeps retrying (it never blocked the boot).
    from builder.seed.hostconfig import ATLAS_UNIT

    assert down.host.run(f"systemctl show -p SubState --value {ATLAS_UNIT}", 30).stdout.strip() == "running"


def test_mounts_and_docker_come_up_once_atlas_answers(down) -> None:  # noqa: ANN001
    from builder.seed.hostconfig import ATLAS_UNIT

    took = restore_atlas(down, RECOVERY_LIMIT)
    print(f"mounts and Docker up {took}s after Atlas answered")
    assert down.host.run(f"systemctl show -p SubState --value {ATLAS_UNIT}", 30).stdout.strip() == "exited"
    res = checks_prefixed(down, "nfs.", "docker.requires-mounts", "health.nfs-mounts")
    bad = {k: r.outcome.message for k, r in res.items() if r.status != "pass"}
    assert not bad, bad
