"""The second boot (issue 10, "What to build" 8): the shared stand-in guest is powered off and booted
again on the same disk; what a later boot must show (reachability, listeners, routing, mounts,
Docker) is checked again. Then a fault that a running system does not show (the persistent
policy-routing config removed, prometheus-atlas.service disabled) is made, and only the boot after
it fails the matching checks.

This file sorts after test_verify_vm.py on purpose: it reuses the one shared boot at the end of the
VM tests (two reboots, no extra first boot), and a reboot also clears what earlier faults left.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from builder.verify.report import render_table, write_report
from builder.verify.session import SECOND_BOOT_CHECKS, settle, verify_boots, verify_second_boot
from tests.guest import checks, sudo

pytestmark = pytest.mark.vm

STANDIN_GAPS: dict[str, str] = {}  # as test_verify_vm.STANDIN_GAPS: the stand-in fails no second-boot check

RO_SHARES = ("/mnt/atlas/managed-media", "/mnt/atlas/shared-media")  # mounted by prometheus-atlas only
NETPLAN_BACKUP = "/root/netplan-verify-backup"
# Drop every `routing-policy` from the netplan files cloud-init wrote on the first boot.
DROP_POLICY = """
import glob, yaml
for p in glob.glob('/etc/netplan/*.yaml'):
    d = yaml.safe_load(open(p)) or {}
    for kind in ('ethernets', 'vlans'):
        for nic in (d.get('network', {}).get(kind) or {}).values():
            nic.pop('routing-policy', None)
    yaml.safe_dump(d, open(p, 'w'))
"""


@pytest.fixture(scope="module")
def session(verify_guest_session):  # noqa: ANN001
    return verify_guest_session




def failures(results) -> dict[str, str]:  # noqa: ANN001
    return {r.check.id: r.outcome.message for r in results if r.status == "fail"}


def test_second_boot_section_passes_for_the_default_model(session, tmp_path: Path) -> None:  # noqa: ANN001
    first_serial = Path(session.access.serial_log)
    report = verify_boots(session, only=list(SECOND_BOOT_CHECKS))  # the path `builder verify` takes
    print(render_table(report))
    assert [b.name for b in report.sections] == ["boot 1 (first boot)", "boot 2"]
    boot2 = report.boots[0]
    assert {r.check.id for r in boot2.results} == {r.check.id for r in report.results}
    assert len(boot2.results) >= 15, [r.check.id for r in boot2.results]
    for results in (report.results, boot2.results):
        failed = failures(results)
        gaps = {cid: failed.pop(cid) for cid in list(failed) if cid in STANDIN_GAPS}
        assert not failed, failed
        for cid, msg in gaps.items():
            assert STANDIN_GAPS[cid] in msg, (cid, msg)
    # (boot_to_login is there only when the login prompt reached the console before cloud-init's
    # final message: on a later boot they race.)
    for k in ("poweroff", "cloud_init_done", "ssh_ready", "settled", "checks_seconds"):
        assert k in boot2.timings, boot2.timings
    # A new console log for the new boot; the first boot's stays as it was.
    assert boot2.serial_log and Path(boot2.serial_log) != first_serial
    assert "finished" in Path(boot2.serial_log).read_text(errors="replace")
    # The second boot ran no first-boot commands: the semaphore of cloud-init's per-instance user
    # scripts (runcmd) was last written before this boot began.
    sem, boot = sudo(session, "stat -c %Y /var/lib/cloud/instance/sem/config_scripts_user && "
                              "date -d \"$(uptime -s)\" +%s").split()
    assert int(sem) < int(boot), "cloud-init ran the first-boot scripts again on the second boot"
    out = write_report(report, tmp_path / "verify", serial_log=Path(report.serial_log or first_serial))
    data = json.loads((out / "report.json").read_text())
    assert [b["name"] for b in data["boots"]] == ["boot 1 (first boot)", "boot 2"]
    assert (out / "serial-boot2.log").stat().st_size > 0
    assert "== boot 2: " in (out / "report.txt").read_text()


def test_fault_that_only_a_later_boot_shows(session) -> None:  # noqa: ANN001
    from builder.seed.hostconfig import ATLAS_UNIT, mgmt_route_table

    mgmt_ip, table = session.model.mgmt.ip, mgmt_route_table(session.model)
    ids = ("net.mgmt-policy-routing", *(f"nfs.mounted:{mp}" for mp in RO_SHARES), "nfs.mounted:/mnt/atlas/appdata")
    sudo(session, f"rm -rf {NETPLAN_BACKUP} && cp -a /etc/netplan {NETPLAN_BACKUP} && "
                  f"python3 -c {shlex.quote(DROP_POLICY)} && ! grep -rq routing-policy /etc/netplan && "
                  f"systemctl disable {ATLAS_UNIT}")
    try:
        live = checks(session, *ids)
        assert not failures(live.values()), "the fault must not show on the running boot"
        section = verify_second_boot(session, only=list(ids), name="boot 3")
        assert section is not None
        res = {r.check.id: r for r in section.results}
        assert res["net.mgmt-policy-routing"].status == "fail"
        assert f"no rule 'from {mgmt_ip} lookup {table}'" in res["net.mgmt-policy-routing"].outcome.message
        for mp in RO_SHARES:
            r = res[f"nfs.mounted:{mp}"]
            assert r.status == "fail" and "not mounted" in r.outcome.message, r.outcome.message
        # Docker's own RequiresMountsFor still mounts the RW share it needs: only what the unit did is gone.
        assert res["nfs.mounted:/mnt/atlas/appdata"].status == "pass", res["nfs.mounted:/mnt/atlas/appdata"]
    finally:
        sudo(session, f"rm -rf /etc/netplan && cp -a {NETPLAN_BACKUP} /etc/netplan && rm -rf {NETPLAN_BACKUP} && "
                      f"(ip rule show | grep -q 'from {mgmt_ip} lookup {table}' || "
                      f"ip rule add from {mgmt_ip}/32 lookup {table}) && systemctl enable --now {ATLAS_UNIT}",
             timeout=150)
        settle(session.host, 180)  # the Atlas unit mounts the RO shares again
    ok = checks(session, *ids)
    assert not failures(ok.values())
