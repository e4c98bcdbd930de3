"""The second boot (issue 10, "What to build" 8) on the shared stand-in guest: the path `builder verify`
takes (`verify_boots`): the first boot's checks, a clean power-off, the same disk booted again, and what a
later boot must show (reachability, listeners, routing, mounts, Docker) checked again. A later boot runs no
first-boot commands, so between the two boots faults are made that a running system does not show (the
persistent policy-routing config removed, prometheus-atlas.service disabled): the second boot fails
exactly the checks those faults touch and passes every other one.

One reboot, at the very end of the shared guest's tests (this file sorts after test_verify_vm.py). That
the default model passes every check on both boots, unfaulted, is shown by tests/test_build_vm.py on the
disk Packer built (its verify stage boots that disk twice).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from builder.verify.report import render_table, write_report
from builder.verify.session import SECOND_BOOT_CHECKS, verify_boots
from tests.guest import sudo

pytestmark = pytest.mark.vm

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
# what the faults may touch besides the checks that must fail: the RO shares' other checks and the alert
TOUCHED = ("net.mgmt-policy-routing", "nfs.", "health.nfs-mounts")


@pytest.fixture(scope="module")
def session(verify_guest_session):  # noqa: ANN001
    return verify_guest_session


def failures(results) -> dict[str, str]:  # noqa: ANN001
    return {r.check.id: r.outcome.message for r in results if r.status == "fail"}


def test_second_boot_shows_what_persists(session, tmp_path: Path) -> None:  # noqa: ANN001
    from builder.seed.hostconfig import ATLAS_UNIT, mgmt_route_table

    mgmt_ip, table = session.model.mgmt.ip, mgmt_route_table(session.model)
    first_serial = Path(session.access.serial_log)

    def plant_faults(s) -> None:  # noqa: ANN001
        sudo(s, f"rm -rf {NETPLAN_BACKUP} && cp -a /etc/netplan {NETPLAN_BACKUP} && "
                f"python3 -c {shlex.quote(DROP_POLICY)} && ! grep -rq routing-policy /etc/netplan && "
                f"systemctl disable {ATLAS_UNIT}")

    try:
        report = verify_boots(session, only=list(SECOND_BOOT_CHECKS), before_reboot=plant_faults)
    finally:  # nothing runs on this guest afterwards, but leave it as the model says
        session.host.sudo(f"test -d {NETPLAN_BACKUP} && rm -rf /etc/netplan && cp -a {NETPLAN_BACKUP} /etc/netplan; "
                          f"(ip rule show | grep -q 'from {mgmt_ip} lookup {table}' || "
                          f"ip rule add from {mgmt_ip}/32 lookup {table}); systemctl enable --now {ATLAS_UNIT}", 150)
    print(render_table(report))
    assert [b.name for b in report.sections] == ["boot 1 (first boot)", "boot 2"]
    boot2 = report.boots[0]
    assert {r.check.id for r in boot2.results} == {r.check.id for r in report.results}
    assert len(boot2.results) >= 15, [r.check.id for r in boot2.results]
    assert not failures(report.results)  # the first boot, before the faults
    failed = failures(boot2.results)
    # the boot after the faults fails what they touch ...
    assert f"no rule 'from {mgmt_ip} lookup {table}'" in failed.get("net.mgmt-policy-routing", ""), failed
    for mp in RO_SHARES:
        assert "not mounted" in failed.get(f"nfs.mounted:{mp}", ""), failed
    # ... Docker's own RequiresMountsFor still mounts the RW share it needs: only what the unit did is gone
    assert "nfs.mounted:/mnt/atlas/appdata" not in failed, failed
    # ... and nothing else: reachability, listeners, Docker and the rest persist
    assert not [cid for cid in failed if not cid.startswith(TOUCHED)], failed
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
    assert data["ok"] is False and data["boots"][1]["ok"] is False and data["boots"][0]["ok"] is True
    assert (out / "serial-boot2.log").stat().st_size > 0
    assert "== boot 2: " in (out / "report.txt").read_text()
