"""The first-boot/every-boot host configuration (builder.seed.hostconfig) as rendered, and the
checks that prove it on a running host (builder.verify.checks_hostconfig) on canned outputs."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.model import load_model
from builder.seed import hostconfig
from builder.seed.render import render_host
from builder.verify.checks_hostconfig import Listener, hostconfig_checks, listener_problem, parse_listeners
from builder.verify.core import Context, run_checks
from builder.verify.host import FakeHost, Result
from builder.verify.targets import disk_target
from tests.conftest import default_model_data
from tests.verify_canned import ENDPOINTS, FakeOutside, healthy_responses, listeners, mgmt_table, rules

MODEL = load_model(None)
TABLE = 1099


def _render(model: Any = MODEL) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    files = render_host(model)
    ud = yaml.safe_load(files["first-boot/user-data"])
    auto = yaml.safe_load(files["autoinstall/user-data"])["autoinstall"]
    net = yaml.safe_load(files["first-boot/network-config"])["network"]
    return ud, auto, net


def _write_files(ud: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["content"] for f in ud["write_files"]}


def _installed_by_late_commands(auto: dict[str, Any]) -> dict[str, str]:
    """Files the late-commands write into /target: path -> decoded content."""
    out = {}
    for cmd in auto["late-commands"]:
        m = re.search(r"echo ([A-Za-z0-9+/=]+) \| base64 -d > /target(\S+)", cmd[-1])
        if m:
            out[m.group(2)] = base64.b64decode(m.group(1)).decode()
    return out


# --- render ---------------------------------------------------------------------------------------

def test_mgmt_policy_routing_and_optional_mgmt() -> None:
    _, _, net = _render()
    mgmt, srv = net["ethernets"]["mgmt0"], net["ethernets"]["srv0"]
    assert mgmt["routing-policy"] == [{"from": "10.99.0.20/32", "table": TABLE}]
    assert {"to": "default", "via": "10.99.0.1", "table": TABLE} in mgmt["routes"]
    assert {"to": "10.99.0.0/24", "scope": "link", "table": TABLE} in mgmt["routes"]
    assert mgmt["optional"] is True and "optional" not in srv  # SERVERS alone decides "online"
    assert srv["dhcp-identifier"] == "mac" and "routing-policy" not in srv


@pytest.mark.skipif(not shutil.which("netplan"), reason="netplan.io not installed")
def test_netplan_generates_policy_rule_and_optional(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "netplan" / "50-cloud-init.yaml"
    conf.parent.mkdir(parents=True)
    conf.write_bytes(render_host(MODEL)["first-boot/network-config"])
    conf.chmod(0o600)
    subprocess.run(["netplan", "generate", "--root-dir", str(tmp_path)], check=True, capture_output=True)
    mgmt = (tmp_path / "run/systemd/network/10-netplan-mgmt0.network").read_text()
    srv = (tmp_path / "run/systemd/network/10-netplan-srv0.network").read_text()
    assert "[RoutingPolicyRule]\nFrom=10.99.0.20/32\nTable=1099" in mgmt
    assert "Gateway=10.99.0.1\nTable=1099" in mgmt and "RequiredForOnline=no" in mgmt
    assert "ClientIdentifier=mac" in srv and "RequiredForOnline" not in srv


def test_no_policy_routing_without_mgmt_gateway(write_model) -> None:
    data = default_model_data()
    del data["network"]["interfaces"]["mgmt"]["gateway"]
    _, _, net = _render(load_model(write_model(data)))
    assert "routing-policy" not in net["ethernets"]["mgmt0"] and "routes" not in net["ethernets"]["mgmt0"]


def test_ssh_socket_dropin_in_place_before_first_boot() -> None:
    ud, auto, _ = _render()
    want = "[Socket]\nListenStream=\nListenStream=10.99.0.20:22\nFreeBind=yes\n"
    assert want in _write_files(ud)[hostconfig.SSH_SOCKET_DROPIN]
    installed = _installed_by_late_commands(auto)
    assert installed[hostconfig.SSH_SOCKET_DROPIN] == _write_files(ud)[hostconfig.SSH_SOCKET_DROPIN]
    assert "net.ipv4.ip_nonlocal_bind = 1" in installed[hostconfig.SYSCTL_FILE]
    restart = installed[hostconfig.SSH_SERVICE_DROPIN]
    assert "RestartPreventExitStatus=\n" in restart and "Restart=on-failure" in restart
    # The ssh.socket restart (which changed its address set mid-boot) is gone.
    assert not any("ssh.socket" in " ".join(c) for c in ud["runcmd"])
    assert ["systemctl", "try-reload-or-restart", "ssh.service"] in ud["runcmd"]
    assert ["sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1"] in ud["bootcmd"]


def test_rpcbind_masked_at_install_first_boot_and_every_boot() -> None:
    ud, auto, _ = _render()
    for unit in ("rpcbind.socket", "rpcbind.service"):
        assert any(f"ln -sfn /dev/null /etc/systemd/system/{unit}" in c[-1] for c in ud["bootcmd"])
        assert any(f"ln -sfn /dev/null /target/etc/systemd/system/{unit}" in c[-1] for c in auto["late-commands"])
    assert ["systemctl", "mask", "--now", "rpcbind.socket", "rpcbind.service"] in ud["runcmd"]


def test_nfs_mounts_never_block_and_keep_ro_rw() -> None:
    ud, _, _ = _render()
    for mt in ud["mounts"]:
        opts = mt[3].split(",")
        assert "noauto" in opts and "x-systemd.mount-timeout=30s" in opts, mt
        assert ("ro" in opts) != ("rw" in opts)
    by_mp = {m[1]: m[3].split(",") for m in ud["mounts"]}
    assert "rw" in by_mp["/mnt/atlas/appdata"] and "ro" in by_mp["/mnt/atlas/shared-media"]
    unit = _write_files(ud)["/etc/systemd/system/prometheus-atlas.service"]
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert exec_start.endswith(" ".join(m.mountpoint for m in MODEL.nfs.mounts) + " docker.service")
    assert "$$@" in exec_start and "sleep 30" in exec_start
    assert "Type=simple" in unit and "WantedBy=multi-user.target" in unit
    assert "After=network-online.target remote-fs-pre.target systemd-networkd-wait-online@srv0:routable" in unit
    assert ["systemctl", "enable", "--now", "--no-block", "prometheus-atlas.service"] in ud["runcmd"]


def test_servers_gates_nfs_and_docker() -> None:
    wf = _write_files(_render()[0])
    for path in ("/etc/systemd/system/remote-fs-pre.target.d/10-prometheus-servers-online.conf",
                 "/etc/systemd/system/docker.service.d/20-prometheus-servers-online.conf"):
        assert "Wants=systemd-networkd-wait-online@srv0:routable.service" in wf[path]
        assert "After=systemd-networkd-wait-online@srv0:routable.service" in wf[path]


def test_docker_storage_and_group() -> None:
    ud, _, _ = _render()
    toml = _write_files(ud)["/etc/containerd/config.toml"]
    assert 'root = "/var/lib/docker/containerd-root"' in toml
    assert ["sh", "-c", "getent group docker >/dev/null || groupadd --gid 2375 docker"] in ud["bootcmd"]


def test_no_containerd_config_without_scratch(write_model) -> None:
    data = default_model_data()
    del data["storage"]["scratch"]
    assert "/etc/containerd/config.toml" not in _write_files(_render(load_model(write_model(data)))[0])


def test_install_ends_with_poweroff_and_markers() -> None:
    _, auto, _ = _render()
    assert auto["shutdown"] == "poweroff"
    assert "PROMETHEUS-INSTALL-OK prometheus" in auto["late-commands"][-1][-1]
    assert "/dev/ttyS0" in auto["late-commands"][-1][-1]
    err = auto["error-commands"][0][-1]
    assert "PROMETHEUS-INSTALL-FAILED prometheus" in err and "/dev/console" in err and "curtin-install.log" in err
    assert ["curtin", "in-target", "--target=/target", "--", "update-grub"] in auto["late-commands"]


def test_no_console_carry_over_by_default() -> None:
    grub = _installed_by_late_commands(_render()[1])[hostconfig.GRUB_DROPIN]
    assert 'GRUB_CMDLINE_LINUX_DEFAULT=""' in grub and "console=" not in grub.split("\n", 3)[-1]
    assert "GRUB_SERIAL_COMMAND" not in grub


def test_host_serial_console_when_the_model_asks(write_model) -> None:
    data = default_model_data()
    data["os"]["host_serial_console"] = "ttyS1,115200n8"
    grub = _installed_by_late_commands(_render(load_model(write_model(data)))[1])[hostconfig.GRUB_DROPIN]
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="console=tty0 console=ttyS1,115200n8"' in grub
    assert 'GRUB_SERIAL_COMMAND="serial --unit=1 --speed=115200"' in grub


def test_kernel_metapackages() -> None:
    assert hostconfig.kernel_metapackages("linux-generic") == (
        "linux-generic", "linux-image-generic", "linux-headers-generic")
    assert hostconfig.kernel_metapackages("linux-generic-hwe-24.04")[1] == "linux-image-generic-hwe-24.04"
    hold = hostconfig.kernel_hold_command(MODEL)
    assert hold in _render()[0]["runcmd"] and "apt-mark hold" in hold[-1]


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_rendered_units_parse(tmp_path: Path) -> None:
    wf = _write_files(_render()[0])
    unit = tmp_path / "prometheus-atlas.service"
    unit.write_text(wf["/etc/systemd/system/prometheus-atlas.service"])
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    bad = [ln for ln in (proc.stdout + proc.stderr).splitlines()
           if "prometheus-atlas" in ln and ("nknown" in ln or "Invalid" in ln or "syntax" in ln)]
    assert not bad, proc.stderr


# --- checks on canned outputs ---------------------------------------------------------------------

def _verify(changes: dict[str, Any] | None = None, model: Any = MODEL) -> dict[str, Any]:
    host = FakeHost({**healthy_responses(model), **(changes or {})})
    # the installed disk: the direct-boot stand-in cannot judge the scratch disk (no installer ran)
    ctx = Context(host, model, ENDPOINTS, FakeOutside(model), target=disk_target(Path("installed.qcow2")))
    return {r.check.id: r for r in run_checks(hostconfig_checks(model), ctx)}


def test_healthy_host_passes_the_new_checks() -> None:
    res = _verify()
    assert {k: r.status for k, r in res.items()} == {
        "net.listeners": "pass", "net.mgmt-policy-routing": "pass", "docker.storage-on-scratch": "pass",
        "nvidia.kernel-held": "pass"}, {k: r.outcome.message for k, r in res.items()}


def test_parse_listeners_shapes() -> None:
    lns = parse_listeners(
        'tcp LISTEN 0 4096 [::]:111 [::]:* users:(("systemd",pid=1,fd=40))\n'
        "tcp LISTEN 0 64 0.0.0.0:40251 0.0.0.0:*\n"
        'udp UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:* users:(("systemd-resolve",pid=5,fd=1))\n'
        'tcp LISTEN 0 128 *:22 *:* users:(("sshd",pid=7,fd=3))\n')
    assert lns == [Listener("tcp", "::", 111, "systemd"), Listener("tcp", "0.0.0.0", 40251, ""),
                   Listener("udp", "127.0.0.53", 53, "systemd-resolve"), Listener("tcp", "*", 22, "sshd")]


@pytest.mark.parametrize("line,needle", [
    ('tcp LISTEN 0 1 0.0.0.0:4444 0.0.0.0:* users:(("nc",pid=9,fd=3))', "every address"),
    ('udp UNCONN 0 0 0.0.0.0:111 0.0.0.0:* users:(("rpcbind",pid=8,fd=5))', "every address"),
    ('tcp LISTEN 0 4096 [::]:111 [::]:* users:(("systemd",pid=1,fd=40))', "every address"),
    ('tcp LISTEN 0 128 *:22 *:* users:(("sshd",pid=7,fd=3))', "every address"),
    ('tcp LISTEN 0 4096 10.99.0.20:9100 0.0.0.0:* users:(("node_exporter",pid=9,fd=3))', "only sshd"),
    ('tcp LISTEN 0 128 10.60.0.50:22 0.0.0.0:* users:(("sshd",pid=7,fd=3))', "sshd beyond MGMT"),
    ("tcp LISTEN 0 64 192.168.1.5:8080 0.0.0.0:*", "neither loopback"),
])
def test_listener_faults_fail(line: str, needle: str) -> None:
    res = _verify({"ss -Htulnp": Result(0, listeners(MODEL, line + "\n"))})["net.listeners"]
    assert res.status == "fail" and needle in res.outcome.message, res.outcome.message


def test_allowed_listeners() -> None:
    srv, mgmt = "10.60.0.50", "10.99.0.20"
    assert listener_problem(Listener("tcp", "::1", 631, "cupsd"), srv, mgmt, 22) is None
    assert listener_problem(Listener("tcp", "::ffff:10.60.0.50", 8080, "docker-proxy"), srv, mgmt, 22) is None
    assert listener_problem(Listener("tcp", mgmt, 22, "systemd"), srv, mgmt, 22) is None  # ssh.socket
    assert listener_problem(Listener("udp", mgmt, 22, "sshd"), srv, mgmt, 22) is not None


@pytest.mark.parametrize("changes,needle", [
    ({"ip -j -4 rule show": Result(0, rules(MODEL))}, "no rule 'from 10.99.0.20 lookup 1099'"),
    ({f"ip -j -4 route show table {TABLE}": Result(0, mgmt_table(MODEL, gateway="10.99.0.254"))},
     "no default via 10.99.0.1"),
    ({f"ip -j -4 route show table {TABLE}": Result(0, "[]")}, "no default via"),
])
def test_policy_routing_faults_fail(changes: dict[str, Any], needle: str) -> None:
    res = _verify(changes)["net.mgmt-policy-routing"]
    assert res.status == "fail" and needle in res.outcome.message, res.outcome.message


def test_policy_routing_na_without_gateway(write_model) -> None:
    data = default_model_data()
    del data["network"]["interfaces"]["mgmt"]["gateway"]
    assert _verify(model=load_model(write_model(data)))["net.mgmt-policy-routing"].status == "n/a"


def test_storage_on_os_disk_fails() -> None:
    def findmnt(cmd: str) -> Result:
        on_root = "containerd" in cmd and "containerd-root" not in cmd
        return Result(0, "/ /dev/sda2\n" if on_root else "/var/lib/docker /dev/nvme0n1p1\n")

    # No root in config.toml: containerd keeps its default /var/lib/containerd on the OS disk.
    res = _verify({"cat /etc/containerd/config.toml": Result(0, 'disabled_plugins = ["cri"]\n'),
                   "findmnt -n -o TARGET,SOURCE -T": findmnt})["docker.storage-on-scratch"]
    assert res.status == "fail" and "containerd root /var/lib/containerd is on /" in res.outcome.message
    res = _verify({"findmnt -n -o TARGET,SOURCE -T": Result(0, "/ /dev/sda2\n")})["docker.storage-on-scratch"]
    assert res.status == "fail" and "Docker root /var/lib/docker is on /" in res.outcome.message
    # docker not answering: data-root from daemon.json still decides.
    res = _verify({"docker info -f": Result(1, "", "Cannot connect")})["docker.storage-on-scratch"]
    assert res.status == "pass", res.outcome.message


@pytest.mark.parametrize("changes,needle", [
    ({"apt-mark showhold": Result(0, "nvidia-driver-550-server\n")}, "not held: linux-generic"),
    ({"linux-generic linux-image-generic linux-headers-generic": Result(0, "linux-image-generic|ii \n")},
     "is not installed"),
])
def test_kernel_hold_faults_fail(changes: dict[str, Any], needle: str) -> None:
    res = _verify(changes)["nvidia.kernel-held"]
    assert res.status == "fail" and needle in res.outcome.message, res.outcome.message
