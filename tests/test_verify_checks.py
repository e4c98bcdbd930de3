"""Every check passes on a healthy canned guest, and each fault fails exactly the matching check(s)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from builder.model import load_model
from builder.verify.catalog import build_catalog
from builder.verify.core import Context, run_checks
from builder.verify.host import FakeHost, HostUnreachable, Result
from builder.verify.targets import STANDIN, Target, ssh_target
from tests.verify_canned import (
    ENDPOINTS,
    EPHEMERAL,
    FakeOutside,
    audit_report,
    daemon_json,
    healthy_responses,
    ip_addr,
    mounts_json,
    routes,
    sources,
    sshd_t,
)

MODEL = load_model(None)
U = MODEL.users[0]
DRV = MODEL.nvidia.driver
SRV_IP = MODEL.network.interfaces["servers"].ip


def verify(responses: dict[str, Any] | None = None, outside: FakeOutside | None = None,
           endpoints: Any = ENDPOINTS, target: Target = STANDIN) -> dict[str, Any]:
    host = FakeHost(responses if responses is not None else healthy_responses(MODEL))
    ctx = Context(host, MODEL, endpoints, outside or FakeOutside(MODEL), extra_authorized_keys=(EPHEMERAL,),
                  target=target)
    return {r.check.id: r for r in run_checks(build_catalog(MODEL), ctx)}


def statuses(results: dict[str, Any], status: str) -> set[str]:
    return {k for k, r in results.items() if r.status == status}


def test_healthy_guest_passes_every_check() -> None:
    results = verify()
    assert statuses(results, "fail") == set(), {k: r.outcome.message for k, r in results.items()
                                                   if r.status == "fail"}
    assert statuses(results, "n/a") == {"nvidia.smi", "health.gpu", "nvidia.gpu-name", "docker.storage-on-scratch"}
    assert "no GPU inside QEMU" in results["nvidia.smi"].outcome.message
    assert len(results) >= 35


def test_every_check_records_what_it_ran() -> None:
    for cid, r in verify().items():
        assert r.commands or r.check.skip_reason("standin"), f"{cid} ran nothing"
        assert r.check.seed.line > 0 and r.check.seed.text


def _ro_rw(mp: str) -> Callable[[str], Result]:
    def probe(cmd: str) -> Result:
        if "if touch" in cmd and mp in cmd:
            return Result(0, "WROTE\n")
        if "if touch" in cmd:
            return Result(0, "", "touch: cannot touch 'x': Read-only file system")
        return Result(0, "ok\n")
    return probe


def _nfs_down(cmd: str) -> Result:
    return Result(137, "", "")


MANAGED = "/mnt/atlas/managed-media"
FAULTS: list[tuple[str, dict[str, Any], set[str], str]] = [
    ("cloud-init error", {"cloud-init status --long": Result(1, "status: error\n")},
     {"system.cloud-init"}, "status is 'error'"),
    ("cloud-init errors in result.json",
     {"cat /run/cloud-init/result.json": Result(0, json.dumps({"v1": {"errors": ["mounts failed"]}}))},
     {"system.cloud-init"}, "mounts failed"),
    ("cloud-init still running", {"cloud-init status --long": Result(0, "status: running\n")},
     {"system.cloud-init"}, "running"),
    ("failed unit", {"systemctl list-units --failed": Result(0, "broken.service loaded failed failed false\n")},
     {"system.failed-units"}, "broken.service"),
    ("hostname", {"hostname": Result(0, "debian\n")}, {"system.hostname"}, "'debian'"),
    ("uid", {f"getent passwd {U.name}": Result(0, f"{U.name}:x:1000:{U.gid}::/home/{U.name}:/bin/bash\n")},
     {"users.ops.account"}, "uid 1000 != 3000"),
    ("group", {f"id -nG {U.name}": Result(0, f"{U.name} sudo\n")}, {"users.ops.account"}, "docker"),
    ("no user", {f"getent passwd {U.name}": Result(2, "")}, {"users.ops.account"}, "does not exist"),
    ("extra key", {f"/home/{U.name}/.ssh/authorized_keys": Result(
        0, "\n".join([*U.ssh_authorized_keys, EPHEMERAL, "ssh-rsa AAAAB3Nza intruder"]))},
     {"users.ops.ssh-key"}, "unexpected: ssh-rsa AAAAB3Nza"),
    ("missing key", {f"/home/{U.name}/.ssh/authorized_keys": Result(0, EPHEMERAL + "\n")},
     {"users.ops.ssh-key"}, "missing"),
    ("admin password", {f"passwd -S {U.name}": Result(0, f"{U.name} P 2026-01-23 0 99999 7 -1\n")},
     {"users.ops.password"}, "usable password"),
    ("root password", {"passwd -S root": Result(0, "root P 2026-01-23 0 99999 7 -1\n")},
     {"users.root.password"}, "status is P"),
    ("password auth", {"/usr/sbin/sshd -T": Result(0, sshd_t(MODEL, passwordauthentication="yes"))},
     {"ssh.sshd-effective"}, "passwordauthentication yes (want no)"),
    ("root login", {"/usr/sbin/sshd -T": Result(0, sshd_t(MODEL, permitrootlogin="prohibit-password"))},
     {"ssh.sshd-effective"}, "permitrootlogin prohibit-password"),
    ("weak kex", {"/usr/sbin/sshd -T": Result(0, sshd_t(
        MODEL, kexalgorithms=",".join([*MODEL.ssh.crypto.kex, "diffie-hellman-group14-sha1"])))},
     {"ssh.sshd-effective"}, "unexpected: diffie-hellman-group14-sha1"),
    ("max auth tries", {"/usr/sbin/sshd -T": Result(0, sshd_t(MODEL, maxauthtries="6"))},
     {"ssh.sshd-effective"}, "maxauthtries 6"),
    ("x11", {"/usr/sbin/sshd -T": Result(0, sshd_t(MODEL, x11forwarding="yes"))},
     {"ssh.sshd-effective"}, "x11forwarding yes"),
    ("sshd -T broken", {"/usr/sbin/sshd -T": Result(1, "", "/etc/ssh/sshd_config.d/x.conf line 1: Bad")},
     {"ssh.sshd-effective"}, "Bad"),
    ("small moduli", {"/etc/ssh/moduli": Result(0, "400 250\n")}, {"ssh.moduli"}, "250 of 400"),
    ("sshd on SERVERS", {"ss -Htln": Result(0, f"LISTEN 0 128 10.99.0.20:22 0.0.0.0:*\n"
                                               f"LISTEN 0 128 {SRV_IP}:22 0.0.0.0:*\n")},
     {"ssh.listeners"}, SRV_IP),
    ("sshd on all", {"ss -Htln": Result(0, "LISTEN 0 128 0.0.0.0:22 0.0.0.0:*\nLISTEN 0 128 [::]:22 [::]:*\n")},
     {"ssh.listeners"}, "0.0.0.0, ::"),
    ("NIC renamed", {"ip -j addr show": Result(0, ip_addr(MODEL, {"srv0": "eth9"})),
                     "ip -j -4 route show default": Result(0, routes(MODEL, dev="eth9"))},
     {"network.nic.servers", "network.default-route"}, "is named 'eth9'"),
    ("default via MGMT", {"ip -j -4 route show default": Result(0, json.dumps([
        {"dst": "default", "gateway": "10.60.0.1", "dev": "srv0"},
        {"dst": "default", "gateway": "10.99.0.1", "dev": "mgmt0"}]))},
     {"network.default-route"}, "non-SERVERS"),
    ("no default", {"ip -j -4 route show default": Result(0, "[]")}, {"network.default-route"}, "no IPv4"),
    ("RO remounted rw", {"findmnt -J -l -o TARGET,SOURCE,FSTYPE,OPTIONS": Result(
        0, mounts_json(MODEL, fstab=False, access={MANAGED: "rw"})), ".builder-verify-write-test": _ro_rw(MANAGED)},
     {f"nfs.mounted:{MANAGED}", f"nfs.access:{MANAGED}"}, "mounted rw (want ro)"),
    ("not mounted", {"findmnt -J -l -o TARGET,SOURCE,FSTYPE,OPTIONS": Result(
        0, mounts_json(MODEL, fstab=False, skip="/mnt/atlas/appdata"))},
     {"nfs.mounted:/mnt/atlas/appdata"}, "not mounted"),
    ("fstab lacks hard", {"findmnt -J -l -o TARGET,SOURCE,FSTYPE,OPTIONS --fstab": Result(
        0, mounts_json(MODEL, fstab=True).replace("hard,", ""))},
     {f"nfs.mounted:{m.mountpoint}" for m in MODEL.nfs.mounts}, "fstab options lack hard"),
    ("NFS server down", {"sh -c 'ls ": Result(137, ""), ".builder-verify-write-test": _nfs_down},
     {f"nfs.{k}:{m.mountpoint}" for m in MODEL.nfs.mounts for k in ("mounted", "access")},
     "NFS server down"),
    ("RW not writable", {".builder-verify-write-test": lambda c: Result(1, "", "Permission denied")
                         if "echo ok" in c and "appdata" in c else Result(0, "", "Read-only file system")
                         if "if touch" in c else Result(0, "ok")},
     {"nfs.access:/mnt/atlas/appdata"}, "Permission denied"),
    ("docker source unsigned", {"grep -rsH ''": Result(0, sources(MODEL, docker_opts=""))},
     {"apt.docker.signed-by"}, "no signed-by"),
    ("docker source trusted", {"grep -rsH ''": Result(0, sources(MODEL, docker_opts="trusted=yes"))},
     {"apt.docker.signed-by"}, "trusted=yes"),
    ("keyring missing", {"test -s ": Result(1, "")}, {"apt.docker.signed-by", "apt.nvidia.signed-by"},
     "missing or empty"),
    ("docker snap", {"command -v snap": Result(0, "/usr/bin/snap\n"), "snap list docker": Result(0, "docker")},
     {"docker.no-snap"}, "snap"),
    ("docker-ce missing", {"${Package}|": Result(1, "docker-ce-cli|ii |5:27\n")}, {"docker.packages"},
     "docker-ce not installed"),
    ("TCP API", {"cat /etc/docker/daemon.json": Result(0, daemon_json(
        MODEL, hosts=["unix:///var/run/docker.sock", "tcp://0.0.0.0:2375"]))},
     {"docker.no-tcp-api"}, "tcp://0.0.0.0:2375"),
    ("TCP API in ExecStart", {"systemctl show -p ExecStart": Result(0, "argv[]=/usr/bin/dockerd -H tcp://0.0.0.0")},
     {"docker.no-tcp-api"}, "ExecStart"),
    ("bind all", {"cat /etc/docker/daemon.json": Result(0, daemon_json(MODEL, ip=None))},
     {"docker.bind-servers"}, f"want '{SRV_IP}'"),
    ("requires mounts", {"systemctl show -p LoadState -p RequiresMountsFor docker.service": Result(
        0, "LoadState=loaded\nRequiresMountsFor=/mnt/atlas/appdata\n")},
     {"docker.requires-mounts"}, "/mnt/atlas/datasets"),
    ("no docker unit", {"systemctl show -p LoadState -p RequiresMountsFor docker.service": Result(
        0, "LoadState=not-found\nRequiresMountsFor=\n")}, {"docker.requires-mounts"}, "not-found"),
    ("driver version", {f"Status-Abbrev}}|${{Version}}' {DRV.package}": Result(0, "ii |560.35.03-0ubuntu1")},
     {"nvidia.driver.version"}, "not the pinned"),
    ("driver removed", {f"Status-Abbrev}}|${{Version}}' {DRV.package}": Result(0, f"rc |{DRV.version}")},
     {"nvidia.driver.version"}, "is not installed"),
    ("hold removed", {"apt-mark showhold": Result(0, "linux-generic\nlinux-image-generic\nlinux-headers-generic\n")},
     {"nvidia.driver.hold"}, "not held"),
    ("pin removed", {f"apt-cache policy {DRV.package}": Result(0, "  Installed: x\n  Candidate: 560.35.03-0\n")},
     {"nvidia.driver.pin"}, "candidate for"),
    ("toolkit runtime", {"cat /etc/docker/daemon.json": Result(0, daemon_json(MODEL, runtimes=None))},
     {"nvidia.toolkit"}, "runtimes.nvidia"),
]


@pytest.mark.parametrize("name,changes,failing,needle", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_fails_exactly_the_matching_checks(name: str, changes: dict[str, Any], failing: set[str],
                                                 needle: str) -> None:
    responses = {**healthy_responses(MODEL), **changes}
    results = verify(responses)
    assert statuses(results, "fail") == failing
    messages = " | ".join(results[c].outcome.message for c in failing)
    assert needle in messages


def test_gpu_present_and_nvidia_smi_ok_passes() -> None:
    upstream = DRV.version.split("-")[0]
    results = verify({**healthy_responses(MODEL),
                      "grep -lix 0x10de": Result(0, "/sys/bus/pci/devices/0000:01:00.0/vendor\n"),
                      "nvidia-smi": Result(0, f"NVIDIA RTX 4000 Ada Generation, {upstream}\n")},
                     target=ssh_target("10.99.0.20", 22, "ops"))
    assert results["nvidia.smi"].status == "pass"


def test_sshd_reachable_on_servers_fails() -> None:
    results = verify(outside=FakeOutside(MODEL, banners={40023: "SSH-2.0-OpenSSH_9.2p1"}))
    assert statuses(results, "fail") == {"ssh.reachability"}
    assert "answers on SERVERS" in results["ssh.reachability"].outcome.message


def test_sshd_silent_on_mgmt_fails() -> None:
    results = verify(outside=FakeOutside(MODEL, banners={40022: None}))
    assert "does not answer on MGMT" in results["ssh.reachability"].outcome.message


def test_ssh_audit_fail_level_findings_fail() -> None:
    rep = audit_report(MODEL)
    rep["kex"].append({"algorithm": "diffie-hellman-group1-sha1",
                       "notes": {"fail": ["using small 1024-bit modulus"]}})
    rep["key"] = [{"algorithm": "rsa-sha2-512", "keysize": 2048, "notes": {}}]
    results = verify(outside=FakeOutside(MODEL, audit=Result(3, json.dumps(rep))))
    msg = results["ssh.ssh-audit"].outcome.message
    assert results["ssh.ssh-audit"].status == "fail"
    assert "using small 1024-bit modulus" in msg and "2048-bit" in msg and "unmodelled" in msg


def test_ssh_audit_critical_recommendation_fails() -> None:
    rep = audit_report(MODEL, recommendations={"critical": {"del": {"mac": [{"name": "hmac-sha1", "notes": ""}]}}})
    results = verify(outside=FakeOutside(MODEL, audit=Result(3, json.dumps(rep))))
    assert "MAC hmac-sha1" in results["ssh.ssh-audit"].outcome.message


def test_ssh_audit_without_json_fails() -> None:
    results = verify(outside=FakeOutside(MODEL, audit=Result(1, "", "connection refused")))
    assert results["ssh.ssh-audit"].status == "fail"
    assert "no JSON" in results["ssh.ssh-audit"].outcome.message


def test_no_outside_view_is_not_applicable() -> None:
    results = verify(endpoints=None)
    assert results["ssh.reachability"].status == "n/a"
    assert results["ssh.ssh-audit"].status == "n/a"


def test_unreachable_host_fails_every_guest_check_with_the_reason() -> None:
    def down(cmd: str) -> Result:
        raise HostUnreachable("SSH to ops@127.0.0.1:40022 failed: Connection refused")

    results = verify({"": down})
    guest = {k for k, r in results.items()
             if k not in ("ssh.reachability", "ssh.ssh-audit") and not r.check.skip_reason("standin")}
    assert statuses(results, "fail") >= guest
    assert "Connection refused" in results["system.hostname"].outcome.message


def test_crashing_check_is_a_failure_not_an_abort() -> None:
    results = verify({**healthy_responses(MODEL), "ip -j addr show": Result(0, "{not json")})
    assert results["network.nic.servers"].status == "fail"
    assert "check crashed" in results["network.nic.servers"].outcome.message
    assert results["system.hostname"].status == "pass"


def test_harness_key_in_model_and_extra_is_not_missing() -> None:
    """The VM harness adds its login key to the model *and* passes it as extra (regression)."""
    from dataclasses import replace

    admin = replace(U, ssh_authorized_keys=(*U.ssh_authorized_keys, EPHEMERAL))
    model = replace(MODEL, users=(admin, *MODEL.users[1:]))
    ctx = Context(FakeHost(healthy_responses(MODEL)), model, ENDPOINTS, FakeOutside(MODEL),
                  extra_authorized_keys=(EPHEMERAL,))
    res = {r.check.id: r for r in run_checks(build_catalog(model), ctx)}
    assert res["users.ops.ssh-key"].status == "pass", res["users.ops.ssh-key"].outcome.message
