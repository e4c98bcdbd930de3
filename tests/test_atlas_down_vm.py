"""The FIRST boot with Atlas unreachable (issue 10, "Must show"): no NFS server, and Atlas' name
resolves nowhere (the guest is told Atlas as `atlas.standin.invalid`: RFC 2606 reserves .invalid,
the stand-in has no resolver that knows it). cloud-init must still finish within 5 minutes under
TCG with the admin user and the SSH hardening in place, Docker must stay stopped, and nothing may
be written under the NFS mountpoints on the local disk. Then Atlas comes back (the NFS stand-in
starts, and its name resolves: the harness has no DNS server, so it plays the site's resolver by
adding the name to the guest's /etc/hosts) and, with nobody touching the host's units, the mounts
and Docker come up by themselves (prometheus-atlas.service retries every 30 s).

Its own boot (not the shared one): Atlas must be down from the very start.
"""

from __future__ import annotations

import time

import pytest

from builder.verify.catalog import build_catalog
from builder.verify.core import CheckResult, run_checks
from tests.conftest import DEFAULT_MODEL

pytestmark = pytest.mark.vm

ATLAS_NAME = "atlas.standin.invalid"
FIRST_BOOT_LIMIT = 300.0  # "cloud-init finishes within 5 minutes under TCG"
RECOVERY_LIMIT = 180.0  # mounts and Docker up at most this long after Atlas answers
FIRST_BOOT_IDS = ("system.hostname", "users.", "ssh.sshd-effective", "ssh.moduli", "ssh.listeners",
                  "ssh.reachability", "net.listeners", "net.mgmt-policy-routing", "network.")


@pytest.fixture(scope="module")
def down(firstboot_image, tmp_path_factory):  # noqa: ANN001
    from builder.model import load_model
    from builder.verify.session import guest_session

    workdir = tmp_path_factory.mktemp("atlas-down")
    t0 = time.monotonic()
    # boot_timeout: the guest must reach cloud-init's final message within the limit, or this fails.
    with guest_session(load_model(DEFAULT_MODEL), workdir, atlas_running=False, atlas_name=ATLAS_NAME,
                       boot_timeout=FIRST_BOOT_LIMIT) as s:
        s.timings["fixture_ready"] = round(time.monotonic() - t0, 1)
        yield s


def sudo(s, cmd: str, timeout: float = 90) -> str:  # noqa: ANN001
    r = s.host.sudo(cmd, timeout)
    assert r.ok, f"guest command failed: {cmd}: rc={r.rc} {r.stdout} {r.stderr}"
    return r.stdout


def run(s, *prefixes: str) -> dict[str, CheckResult]:  # noqa: ANN001
    chosen = [c for c in build_catalog(s.model) if c.id.startswith(prefixes)]
    return {r.check.id: r for r in run_checks(chosen, s.context())}


def nfs_mounted(s) -> set[str]:  # noqa: ANN001
    return set(s.host.run("findmnt -rn -t nfs4,nfs -o TARGET", 30).stdout.split())


def test_first_boot_finishes_without_atlas(down) -> None:  # noqa: ANN001
    print(f"atlas-down first boot timings: {down.access.timings}")
    assert down.model.nfs.server == ATLAS_NAME and not down.access.nfs.running
    assert down.access.timings["cloud_init_done"] <= FIRST_BOOT_LIMIT, down.access.timings
    # The name really is unresolvable on the guest, and nothing answers NFS.
    assert down.host.run(f"getent ahosts {ATLAS_NAME}", 30).rc != 0
    res = run(down, *FIRST_BOOT_IDS)
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

    # Atlas comes back: its name resolves (the harness plays the site's resolver) and NFS answers.
    sudo(down, f"printf '%s %s\\n' {down.services.guest_ip} {ATLAS_NAME} >> /etc/hosts")
    down.access.nfs.start()
    t0 = time.monotonic()
    want = {m.mountpoint for m in down.model.nfs.mounts}
    docker = ""
    while time.monotonic() - t0 < RECOVERY_LIMIT:
        docker = down.host.run("systemctl is-active docker.service", 30).stdout.strip()
        if nfs_mounted(down) >= want and docker == "active":
            break
        time.sleep(5)
    took = round(time.monotonic() - t0, 1)
    print(f"mounts and Docker up {took}s after Atlas answered")
    assert nfs_mounted(down) >= want and docker == "active", (nfs_mounted(down), docker, took)
    assert down.host.run(f"systemctl show -p SubState --value {ATLAS_UNIT}", 30).stdout.strip() == "exited"
    res = run(down, "nfs.", "docker.requires-mounts", "health.nfs-mounts")
    bad = {k: r.outcome.message for k, r in res.items() if r.status != "pass"}
    assert not bad, bad
