"""Table of bad host models: each must give exit 2, name the field (and line), no traceback,
and leave nothing under the output folder."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builder.cli import main
from tests.conftest import default_model_data, schema_args


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        node: Any = d
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()


def _append_mount(entry: dict) -> Callable[[dict], None]:
    return lambda d: d["nfs"]["mounts"].append(entry)


def _second_user(**kw: Any) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        u = copy.deepcopy(d["users"][0])
        u.update({"name": "ops2", **kw})
        d["users"].append(u)

    return mutate


# (id, mutation, expected field path in the message, expected text in the message)
CASES: list[tuple[str, Callable[[dict], None], str, str]] = [
    ("wrong-type-hostname", _set("host.hostname", 42), "host.hostname", "expected a string"),
    ("bad-hostname", _set("host.hostname", "Prometheus_01"), "host.hostname", "RFC 1123"),
    ("missing-section", _set("ssh", _DELETE), "(top)", "missing required field 'ssh'"),
    ("unknown-field", _set("host.colour", "red"), "host.colour", "unknown field"),
    ("wrong-type-vlan", _set("network.interfaces.servers.vlan", "sixty"), "network.interfaces.servers.vlan",
     "expected an integer"),
    ("vlan-out-of-range", _set("network.interfaces.mgmt.vlan", 4095), "network.interfaces.mgmt.vlan", "1 to 4094"),
    ("vlan-zero", _set("network.interfaces.servers.vlan", 0), "network.interfaces.servers.vlan", "1 to 4094"),
    ("malformed-mac", _set("network.interfaces.servers.mac", "52:54:00:60:00"), "network.interfaces.servers.mac",
     "expected a MAC"),
    ("duplicate-mac", _set("network.interfaces.mgmt.mac", "52:54:00:60:00:01"), "network.interfaces",
     "used by 2 interfaces"),
    ("bad-cidr", _set("network.interfaces.mgmt.subnet", "10.99.0.0/33"), "network.interfaces.mgmt.subnet", "CIDR"),
    ("address-outside-subnet", _set("network.interfaces.mgmt.address", "10.98.0.20/24"),
     "network.interfaces.mgmt.address", "outside the subnet"),
    ("gateway-outside-subnet", _set("network.interfaces.servers.gateway", "192.0.2.1"),
     "network.interfaces.servers.gateway", "outside the subnet"),
    ("bad-gateway", _set("network.interfaces.mgmt.gateway", "10.99.0.300"), "network.interfaces.mgmt.gateway",
     "expected an IP address"),
    ("default-route-on-mgmt", _set("network.default_route", "mgmt"), "network.default_route", "must not use the MGMT"),
    ("missing-mgmt-nic", _set("network.interfaces.mgmt", _DELETE), "network.interfaces", "missing interface 'mgmt'"),
    ("static-without-address", _set("network.interfaces.mgmt.address", _DELETE), "network.interfaces.mgmt.address",
     "static address"),
    ("ro-mount-with-rw", _set("nfs.mounts.3.options", ["rw"]), "nfs.mounts[3].options", "access is ro"),
    ("mount-outside-root", _append_mount({"mountpoint": "/srv/data", "export": "/data", "access": "rw"}),
     "nfs.mounts[5].mountpoint", "outside the declared NFS root"),
    ("duplicate-mountpoint", _append_mount({"mountpoint": "/mnt/atlas/appdata", "export": "/x", "access": "rw"}),
     "nfs.mounts[1].mountpoint", "duplicate mountpoint"),
    ("bad-access", _set("nfs.mounts.1.access", "write"), "nfs.mounts[1].access", "expected 'ro' or 'rw'"),
    ("uid-collision", _second_user(uid=3000, gid=3001), "users[1].uid", "already used"),
    ("system-uid", _set("users.0.uid", 0), "users[0].uid", "1000 to 59999"),
    ("no-ssh-key", _set("users.0.ssh_authorized_keys", []), "users[0].ssh_authorized_keys", "SSH public key"),
    ("malformed-ssh-key", _set("users.0.ssh_authorized_keys", ["not a key"]), "users[0].ssh_authorized_keys[0]",
     "OpenSSH public key"),
    ("plaintext-password", _set("users.0.password", "hunter2"), "users[0].password", "plaintext"),
    ("plaintext-in-hash-field", _set("users.0.password_hash", "hunter2"), "users[0].password_hash", "crypt(3)"),
    ("private-key-in-model", _set("users.0.gecos", "-----BEGIN OPENSSH PRIVATE KEY-----"), "users[0].gecos",
     "private key"),
    ("storage-wildcard", _set("storage.os_disk.match.serial", "S6PN*"), "storage.os_disk.match.serial",
     "more than one disk"),
    ("storage-no-match", _set("storage.os_disk.match", {}), "storage.os_disk.match", "exactly one"),
    ("storage-two-ways", _set("storage.os_disk.match.id_serial", "Samsung_SSD_870_EVO_1TB_S6PNNX0T000001"),
     "storage.os_disk.match", "exactly one"),
    ("storage-same-disk", _set("storage.scratch.match", {"serial": "S6PNNX0T000001", "bus": "sata"}),
     "storage.scratch.match.serial", "same disk as storage.os_disk"),
    ("storage-glob-overlap", _set("storage.scratch.match", {"id_serial": "Samsung_SSD_870_EVO_1TB_S6PNNX0T000001"}),
     "storage.scratch.match.id_serial", "same disk as storage.os_disk"),
    ("storage-suffix-overlap", _set("storage.scratch.match", {"serial": "X_S6PNNX0T000001", "bus": "scsi"}),
     "storage.scratch.match.serial", "same disk as storage.os_disk"),
    ("storage-serial-too-long", _set("storage.os_disk.match.serial", "S6PNNX0T000001S6PNNX0T"),
     "storage.os_disk.match.serial", "20-character"),
    ("storage-serial-no-bus", _set("storage.os_disk.match", {"serial": "S6PNNX0T000001"}),
     "storage.os_disk.match.bus", "sata, nvme"),
    ("storage-bad-bus", _set("storage.os_disk.match.bus", "usb"), "storage.os_disk.match.bus", "expected"),
    ("storage-by-id-gone", _set("storage.os_disk.match", {"by_id": "/dev/disk/by-id/ata-X"}),
     "storage.os_disk.match.by_id", "unknown field"),
    ("storage-sata-wwn", _set("storage.os_disk.match", {"wwn": "eui.0025388b91b2c3d4"}),
     "storage.os_disk.match.wwn", "SATA or NVMe"),
    ("firmware", _set("host.firmware", "efi"), "host.firmware", "'uefi' or 'bios'"),
    ("unpinned-nvidia", _set("nvidia.driver.version", None), "nvidia.driver.version", "exact version"),
    ("wildcard-nvidia", _set("nvidia.driver.version", "550.*"), "nvidia.driver.version", "exact version"),
    ("ssh-on-servers", _set("ssh.listen_on", "servers"), "ssh.listen_on", "MGMT"),
    ("root-login", _set("ssh.permit_root_login", True), "ssh.permit_root_login", "disabled"),
    ("password-auth", _set("ssh.password_authentication", True), "ssh.password_authentication", "keys only"),
    ("docker-tcp-api", _set("docker.tcp_api", True), "docker.tcp_api", "TCP"),
    ("bool-as-string", _set("docker.tcp_api", "no"), "docker.tcp_api", "expected true/false"),
    ("missing-key-file", _set("apt.docker.key_file", "keys/nope.asc"), "apt.docker.key_file", "not found"),
    ("schema-version", _set("schema_version", 2), "schema_version", "expected 1"),
    ("host-serial-console", _set("os.host_serial_console", "console=ttyS1"), "os.host_serial_console",
     "ttyS1,115200n8"),
    ("docker-gid-system", _set("docker.group_gid", 999), "docker.group_gid", "1000..59999"),
    ("docker-gid-user", _set("docker.group_gid", 3000), "docker.group_gid", "no modelled user"),
]


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out + cap.err


@pytest.mark.parametrize("case_id,mutate,field,text", CASES, ids=[c[0] for c in CASES])
def test_bad_model_is_rejected(case_id, mutate, field, text, write_model, tmp_path, capsys) -> None:
    data = default_model_data()
    mutate(data)
    path = write_model(data)
    out_dir = tmp_path / "out"
    code, output = _run_cli(["render", "--host", str(path), "--out", str(out_dir)], capsys)
    assert code == 2, output
    assert field in output, output
    assert text in output, output
    assert "Traceback" not in output
    assert f"{path}:" in output  # file named, and a line where the YAML has one
    line_part = output.split(f"{path}:", 1)[1].split(":", 1)[0]
    if field != "(top)":
        assert line_part.isdigit(), output
    assert not out_dir.exists() or not any(out_dir.rglob("*")), list(out_dir.rglob("*"))


def test_many_problems_reported_at_once(write_model, capsys) -> None:
    data = default_model_data()
    for case in ("vlan-out-of-range", "malformed-mac", "root-login", "unpinned-nvidia"):
        dict((c[0], c[1]) for c in CASES)[case](data)
    code, output = _run_cli(["validate", "--host", str(write_model(data))], capsys)
    assert code == 2
    assert re.search(r"(?<!\d)4 problem\(s\) in the ", output), output  # not "14 problem(s)"
    for field in ("network.interfaces.mgmt.vlan", "servers.mac", "ssh.permit_root_login", "nvidia.driver.version"):
        assert field in output


@pytest.mark.parametrize(
    "text,expected",
    [
        ("host: [unclosed\n", "YAML syntax error"),
        ("", "the file is empty"),
        ("- just\n- a list\n", "expected a mapping"),
        ("host: {hostname: a}\nhost: {hostname: b}\n", "duplicate key"),
    ],
    ids=["syntax-error", "empty-file", "not-a-mapping", "duplicate-key"],
)
def test_unparseable_model(text, expected, write_model, tmp_path, capsys) -> None:
    path = write_model(text=text)
    out_dir = tmp_path / "out"
    code, output = _run_cli(["render", "--host", str(path), "--out", str(out_dir)], capsys)
    assert code == 2
    assert expected in output
    assert str(path) in output
    assert not out_dir.exists()


def test_missing_model_file(tmp_path, capsys) -> None:
    code, output = _run_cli(["validate", "--host", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "file not found" in output


def test_cli_error_has_no_traceback_in_a_real_process(write_model, tmp_path: Path) -> None:
    path = write_model(text="host: [\n")
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "render", "--host", str(path), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{path}:2: (top): YAML syntax error" in proc.stderr


def test_servers_dhcp_is_a_warning_not_an_error(capsys) -> None:
    code, output = _run_cli(["validate", *schema_args()],
                            capsys)
    assert code == 0, output
    assert "warning: network.interfaces.servers.dhcp" in output
