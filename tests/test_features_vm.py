"""One boot of the stand-in with BOTH optional features enabled (issue 12, must show): monitoring
(node exporter + host-health metrics + alert rules) and virtualization (libvirt hook and policy).

The harness Ubuntu mirror serves the REAL Debian prometheus-node-exporter and STANDIN stubs named
qemu-system-x86, qemu-utils, libvirt-daemon-system and libvirt-clients (builder.testbed.featurepkgs).
Shown here: node exporter answers on the SERVERS address and nowhere else, the listener audit
passes, every feature check passes and can fail, and the host-health textfile metrics follow the
host when an NFS mount stops answering and when the scratch filesystem fills past the threshold.
The boot is the session's variant boot (tests/conftest.py `variant_guest`: the default model with both
features on; its first boot had Atlas down and its MGMT is routed). The NFS fault comes last.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable

import pytest

from builder.seed import features as feat
from builder.verify.checks_features import HEALTH_FILE, fetch_command, parse_metrics
from builder.verify.core import CheckResult
from tests.conftest import restore_atlas
from tests.guest import checks_prefixed, sudo

pytestmark = pytest.mark.vm

FEATURE_PREFIXES = ("monitoring.", "virt.", "net.listeners", "health.nfs-mounts", "health.scratch-pressure")


@pytest.fixture(scope="module")
def session(variant_guest):  # noqa: ANN001
    restore_atlas(variant_guest)  # the variant boot starts with Atlas down (tests/test_atlas_down_vm.py)
    return variant_guest




def status(results: dict[str, CheckResult]) -> dict[str, str]:
    return {k: f"{r.status}: {r.outcome.message}" for k, r in results.items()}


def metrics(session) -> dict:  # noqa: ANN001
    return parse_metrics(sudo(session, f"cat {HEALTH_FILE}"))


def nfs_up(m: dict) -> dict[str, float]:
    return {dict(labels)["mountpoint"]: v for (name, labels), v in m.items() if name == "host_health_nfs_mount_up"}


def scratch_ratio(m: dict) -> float | None:
    return next((v for (name, _), v in m.items() if name == "host_health_scratch_used_ratio"), None)


def wait_metrics(session, pred: Callable[[dict], bool], what: str, timeout: float = 90) -> dict:  # noqa: ANN001
    """Poll the textfile (written by the timer, every INTERVAL s) until `pred` holds."""
    deadline = time.monotonic() + timeout
    m: dict = {}
    while time.monotonic() < deadline:
        m = metrics(session)
        if pred(m):
            return m
        time.sleep(3)
    raise AssertionError(f"host-health metrics never showed {what} within {timeout:.0f}s: {m}")


def test_every_feature_check_passes_and_nothing_new_listens(session) -> None:  # noqa: ANN001
    res = checks_prefixed(session, *FEATURE_PREFIXES)
    print("\n".join(f"{k}: {v}" for k, v in status(res).items()))
    assert {"monitoring.node-exporter", "monitoring.host-health", "monitoring.alert-rules", "virt.hook",
            "virt.policy", "virt.default-network", "virt.admin-libvirt-group", "net.listeners"} <= set(res)
    bad = {k: v for k, v in status(res).items() if not v.startswith("pass")
           and k != "monitoring.alert-rules.promtool"}
    assert not bad, bad
    assert res["monitoring.alert-rules.promtool"].status == "n/a"  # no promtool in the stand-in
    assert "promtool is not installed" in res["monitoring.alert-rules.promtool"].outcome.message
    srv = session.model.servers.ip
    assert f"{srv}:{feat.NODE_EXPORTER_PORT} (prometheus-node" in res["net.listeners"].outcome.found  # audited, allowed


def test_node_exporter_answers_on_servers_only(session) -> None:  # noqa: ANN001
    srv, mgmt = session.model.servers.ip, session.model.mgmt.ip
    port = feat.NODE_EXPORTER_PORT
    out = session.host.run(fetch_command(f"http://{srv}:{port}/metrics", "node_exporter_build_info",
                                         "host_health_"))
    assert out.ok and out.stdout.startswith("HTTP 200"), out
    assert "node_exporter_build_info" in out.stdout and "host_health_nfs_mount_up" in out.stdout, out.stdout
    for addr in ("127.0.0.1", mgmt):
        other = session.host.run(fetch_command(f"http://{addr}:{port}/metrics", "node_"))
        assert not other.ok and "ERROR" in other.stdout, f"node exporter answers on {addr}: {other.stdout[:200]}"


def test_virtualization_state(session) -> None:  # noqa: ANN001
    admin = session.model.admin.name
    assert "libvirt" in session.host.run(f"id -nG {admin}").stdout.split()
    nets = sudo(session, f"{feat.VIRSH} net-list --all")
    assert " default " in nets and "inactive" in nets and " no " in nets, nets  # stub state after runcmd
    # the hook really is the policy: it refuses a non-passthrough guest and accepts a conforming one
    xml = "<domain type='kvm'><name>g</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>{cpu}</domain>"
    host = "PROMETHEUS_POLICY_HOST_CPUS=8 PROMETHEUS_POLICY_HOST_MEMORY_KIB=16777216"  # the VM is smaller
    passthrough = "<cpu mode='host-passthrough'/>"
    bad = session.host.sudo(f"echo {shlex.quote(xml.format(cpu=''))} | {host} {feat.HOOK_PATH} g prepare begin -")
    assert bad.rc != 0 and "host-passthrough" in bad.stderr, bad
    good = session.host.sudo(f"echo {shlex.quote(xml.format(cpu=passthrough))} | {host} {feat.HOOK_PATH} "
                             "g prepare begin -")
    assert good.ok, good


FAULTS = [
    ("virt.default-network", f"{feat.VIRSH} net-start default && {feat.VIRSH} net-autostart default",
     f"{feat.VIRSH} net-destroy default && {feat.VIRSH} net-autostart --disable default", "active"),
    ("virt.admin-libvirt-group", "gpasswd -d {admin} libvirt", "usermod -aG libvirt {admin}", "not in the libvirt"),
    ("virt.hook", f"chmod -x {feat.HOOK_PATH}", f"chmod 0755 {feat.HOOK_PATH}", "not executable"),
    ("virt.policy", f"cp {feat.POLICY_PATH} /root/policy.bak && sed -i 's/\"cpu_overcommit\": false/"
                    f"\"cpu_overcommit\": true/' {feat.POLICY_PATH}",
     f"mv /root/policy.bak {feat.POLICY_PATH}", "cpu_overcommit"),
    ("monitoring.alert-rules", f"cp {feat.RULES_PATH} /root/rules.bak && sed -i 's/for: \"2m\"/for: \"9m\"/' "
                               f"{feat.RULES_PATH}", f"mv /root/rules.bak {feat.RULES_PATH}", "differs"),
    ("monitoring.node-exporter", "systemctl stop prometheus-node-exporter.service",
     "systemctl start prometheus-node-exporter.service", "did not answer"),
]


@pytest.mark.parametrize("cid,breaks,repairs,needle", FAULTS, ids=[f[0] for f in FAULTS])
def test_feature_check_fails_when_broken(session, cid: str, breaks: str, repairs: str,  # noqa: ANN001
                                         needle: str) -> None:
    admin = session.model.admin.name
    sudo(session, breaks.format(admin=admin))
    try:
        r = checks_prefixed(session, cid)[cid]
        assert r.status == "fail" and needle in r.outcome.message, (r.status, r.outcome.message)
    finally:
        sudo(session, repairs.format(admin=admin))
    if cid == "monitoring.node-exporter":
        time.sleep(2)
    r = checks_prefixed(session, cid)[cid]
    assert r.status == "pass", r.outcome.message


def test_metrics_follow_scratch_filling_past_the_threshold(session) -> None:  # noqa: ANN001
    scratch = feat.scratch_mountpoint(session.model)
    assert scratch
    limit = session.model.features.monitoring.scratch_usage_alert_percent / 100
    base = wait_metrics(session, lambda m: scratch_ratio(m) is not None, "a scratch ratio")
    ratio0 = scratch_ratio(base)
    assert ratio0 is not None and ratio0 < limit
    find = f"p={shlex.quote(scratch)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; echo \"$p\""
    where = sudo(session, find).strip()
    fill = f"{where.rstrip('/')}/.builder-test-fill"
    size, used, avail = (int(x) for x in sudo(session, f"df -B1 --output=size,used,avail {where} | tail -1").split())
    want = int((limit + 0.05) * (used + avail)) - used
    sudo(session, f"fallocate -l {want} {fill}")
    try:
        full = wait_metrics(session, lambda m: (scratch_ratio(m) or 0) > limit, f"scratch above {limit:.0%}")
        print(f"scratch ratio {ratio0:.3f} -> {scratch_ratio(full):.3f} (fallocate {want >> 20} MiB in {where})")
        r = checks_prefixed(session, "health.scratch-pressure", "monitoring.host-health")
        assert r["health.scratch-pressure"].status == "fail", r["health.scratch-pressure"].outcome.message
        assert r["monitoring.host-health"].status == "pass", r["monitoring.host-health"].outcome.message
    finally:
        sudo(session, f"rm -f {fill}")
    wait_metrics(session, lambda m: (scratch_ratio(m) or 1) < limit, "scratch back below the threshold")


def test_metrics_file_is_exported_by_node_exporter(session) -> None:  # noqa: ANN001
    out = session.host.run(fetch_command(f"http://{session.model.servers.ip}:{feat.NODE_EXPORTER_PORT}/metrics",
                                         "host_health_scratch_used_ratio", "node_textfile_scrape_error"))
    assert out.ok, out
    m = parse_metrics(out.stdout)
    assert scratch_ratio(m) is not None, out.stdout
    assert m.get(("node_textfile_scrape_error", ())) == 0.0, out.stdout


def test_metrics_follow_an_nfs_mount_that_stops_answering(session) -> None:  # noqa: ANN001
    mounts = [mt.mountpoint for mt in session.model.nfs.mounts]
    before = wait_metrics(session, lambda m: set(nfs_up(m)) == set(mounts) and all(nfs_up(m).values()),
                          "every mount up")
    assert all(v == 1 for v in nfs_up(before).values())
    nfs = session.access.nfs
    nfs.stop()
    try:
        down = wait_metrics(session, lambda m: all(v == 0 for v in nfs_up(m).values()), "every mount down")
        assert set(nfs_up(down)) == set(mounts)
        r = checks_prefixed(session, "monitoring.host-health", "health.nfs-mounts")
        assert r["health.nfs-mounts"].status == "fail"
        # the metrics tell the truth about a host with Atlas gone: the consistency check passes
        assert r["monitoring.host-health"].status == "pass", r["monitoring.host-health"].outcome.message
    finally:
        nfs.start()
    # the hard mounts retry on their own once Atlas answers again (timeo/retrans bound how soon)
    wait_metrics(session, lambda m: all(v == 1 for v in nfs_up(m).values()), "every mount back up", timeout=180)
