"""Canned outputs of a healthy prometheus (default model) for the verify unit tests.

`healthy_responses(model)` returns the FakeHost response table; tests copy it and change one
answer to break the "guest" on purpose.
"""

from __future__ import annotations

import json
from typing import Any

from builder.verify.core import Endpoint, Endpoints, Outside
from builder.verify.host import Result

EPHEMERAL = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA builder-verify-ephemeral"
ENDPOINTS = Endpoints(Endpoint("127.0.0.1", 40022), Endpoint("127.0.0.1", 40023))
NFS_KERNEL_OPTS = "noatime,vers=4.1,rsize=1048576,wsize=1048576,namlen=255,hard,proto=tcp,timeo=600,retrans=2,sec=sys"


def sshd_t(model: Any, **override: str) -> str:
    s = model.ssh
    cfg = {
        "port": str(s.port),
        "permitrootlogin": "no",
        "passwordauthentication": "no",
        "kbdinteractiveauthentication": "no",
        "pubkeyauthentication": "yes",
        "x11forwarding": "no",
        "maxauthtries": str(s.max_auth_tries),
        "kexalgorithms": ",".join(s.crypto.kex),
        "ciphers": ",".join(s.crypto.ciphers),
        "macs": ",".join(s.crypto.macs),
        "hostkeyalgorithms": ",".join(s.crypto.host_key_algorithms),
        "listenaddress": f"{model.network.interfaces['mgmt'].ip}:{s.port}",
    }
    cfg.update(override)
    lines = [f"{k} {v}" for k, v in cfg.items()]
    lines += [f"allowusers {u}" for u in s.allow_users] + [f"allowgroups {g}" for g in s.allow_groups]
    return "\n".join(lines) + "\n"


def ip_addr(model: Any, rename: dict[str, str] | None = None) -> str:
    links = [{"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP"], "operstate": "UNKNOWN",
              "address": "00:00:00:00:00:00", "addr_info": [{"family": "inet", "local": "127.0.0.1",
                                                               "prefixlen": 8}]}]
    for i, iface in enumerate(model.network.interfaces.values(), start=2):
        prefix = int((iface.address or iface.subnet).split("/")[1])
        name = (rename or {}).get(iface.name, iface.name)
        links.append({"ifindex": i, "ifname": name, "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
                      "operstate": "UP", "address": iface.mac,
                      "addr_info": [{"family": "inet", "local": iface.ip, "prefixlen": prefix}]})
    return json.dumps(links)


def routes(model: Any, dev: str | None = None) -> str:
    srv = model.network.interfaces["servers"]
    return json.dumps([{"dst": "default", "gateway": srv.gateway, "dev": dev or srv.name, "protocol": "dhcp"}])


def mounts_json(model: Any, *, fstab: bool, access: dict[str, str] | None = None, skip: str = "") -> str:
    fs = []
    for m in model.nfs.mounts:
        if m.mountpoint == skip:
            continue
        src = f"{model.nfs.server}:/{m.export.strip('/')}"
        acc = (access or {}).get(m.mountpoint, m.access)
        if fstab:
            opts = ",".join([*model.nfs.options, acc])
            fs.append({"target": m.mountpoint, "source": src, "fstype": "nfs4", "options": opts})
        else:
            fs.append({"target": m.mountpoint, "source": "systemd-1", "fstype": "autofs", "options": "rw"})
            fs.append({"target": m.mountpoint, "source": src, "fstype": "nfs4",
                       "options": f"{acc},{NFS_KERNEL_OPTS}"})
    return json.dumps({"filesystems": fs})


def daemon_json(model: Any, **override: Any) -> str:
    data = {"data-root": model.docker.data_root, "ip": model.network.interfaces["servers"].ip,
            "log-driver": "json-file", "log-opts": {"max-size": model.docker.log_max_size},
            "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
    data.update(override)
    return json.dumps({k: v for k, v in data.items() if v is not None})


def sources(model: Any, docker_opts: str = "signed-by=/etc/apt/keyrings/docker.asc") -> str:
    d, n = model.apt.docker, model.apt.nvidia
    return "\n".join([
        "/etc/apt/sources.list:deb http://deb.debian.org/debian trixie main",
        f"/etc/apt/sources.list.d/docker.list:deb [arch=amd64 {docker_opts}] {d.url} {d.suite} {d.component}",
        f"/etc/apt/sources.list.d/nvidia-container-toolkit.list:deb "
        f"[signed-by=/etc/apt/keyrings/nvidia-container-toolkit.asc] {n.url} {n.suite}",
    ])


def write_probe(cmd: str) -> Result:
    if "if touch" in cmd:  # read-only mounts refuse root
        return Result(0, "", "touch: cannot touch '/x/.builder-verify-write-test': Read-only file system")
    return Result(0, "ok\n")


def listeners(model: Any, extra: str = "") -> str:
    """`ss -Htulnp` of a healthy host: resolver and chrony on loopback, DHCP client on SERVERS, sshd on MGMT."""
    srv, mgmt = model.network.interfaces["servers"], model.network.interfaces["mgmt"]
    return (f"udp UNCONN 0 0 127.0.0.54:53 0.0.0.0:* users:((\"systemd-resolve\",pid=501,fd=20))\n"
            f"udp UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:* users:((\"systemd-resolve\",pid=501,fd=18))\n"
            f"udp UNCONN 0 0 {srv.ip}%{srv.name}:68 0.0.0.0:* users:((\"systemd-network\",pid=480,fd=21))\n"
            f"udp UNCONN 0 0 [::1]:323 [::]:* users:((\"chronyd\",pid=610,fd=6))\n"
            f"tcp LISTEN 0 4096 127.0.0.53%lo:53 0.0.0.0:* users:((\"systemd-resolve\",pid=501,fd=19))\n"
            f"tcp LISTEN 0 128 {mgmt.ip}:{model.ssh.port} 0.0.0.0:* users:((\"sshd\",pid=700,fd=3))\n" + extra)


def rules(model: Any, table: int | None = None) -> str:
    mgmt = model.network.interfaces["mgmt"]
    out = [{"priority": 0, "src": "all", "table": "local"}]
    if table is not None:
        out.append({"priority": 32765, "src": mgmt.ip, "table": str(table)})
    out += [{"priority": 32766, "src": "all", "table": "main"}, {"priority": 32767, "src": "all", "table": "default"}]
    return json.dumps(out)


def mgmt_table(model: Any, gateway: str | None = None) -> str:
    mgmt = model.network.interfaces["mgmt"]
    return json.dumps([{"dst": "default", "gateway": gateway or mgmt.gateway, "dev": mgmt.name, "flags": []},
                       {"dst": mgmt.subnet, "dev": mgmt.name, "scope": "link", "flags": []}])


def nfs_probe(model: Any, down: dict[str, tuple[int, str]] | None = None) -> Result:
    """The health NFS probe's answer: every mount 'nfs' unless `down` gives (rc, text) for it."""
    lines = [f"{m.mountpoint}|{(down or {}).get(m.mountpoint, (0, 'nfs'))[0]}|"
             f"{(down or {}).get(m.mountpoint, (0, 'nfs'))[1]}" for m in model.nfs.mounts]
    return Result(0, "\n".join(lines) + "\n")


def df_scratch(model: Any, used_percent: float, on: str | None = None) -> Result:
    mp = on or model.storage.scratch.mountpoint
    total = 500 * 2**30
    used = int(total * used_percent / 100)
    return Result(0, "Filesystem 1-blocks Used Available Capacity Mounted on\n"
                     f"/dev/nvme0n1p1 {total} {used} {total - used} {round(used_percent)}% {mp}\n")


def healthy_responses(model: Any) -> dict[str, Any]:
    u = model.users[0]
    drv, tk = model.nvidia.driver, model.nvidia.container_toolkit
    docker_pkgs = "\n".join(f"{p}|ii |5:27.3.1-1~ubuntu.24.04~noble" for p in model.docker.packages)
    return {
        "cloud-init status --long": Result(0, "status: done\nboot_status_code: enabled-by-generator\n"
                                              "detail:\nDataSourceNoCloud [seed=/dev/sr0][dsmode=net]\n"),
        "cat /run/cloud-init/result.json": Result(0, json.dumps({"v1": {"datasource": "NoCloud", "errors": []}})),
        "systemctl list-units --failed": Result(0, ""),
        "hostname": Result(0, model.host.hostname + "\n"),
        "cat /etc/hostname": Result(0, model.host.hostname + "\n"),
        f"getent passwd {u.name}": Result(0, f"{u.name}:x:{u.uid}:{u.gid}:{u.gecos},,,:/home/{u.name}:{u.shell}\n"),
        f"getent passwd {u.name} | cut": Result(0, f"/home/{u.name}\n"),
        f"id -nG {u.name}": Result(0, " ".join([u.name, *u.groups]) + "\n"),
        f"/home/{u.name}/.ssh/authorized_keys": Result(0, "\n".join([*u.ssh_authorized_keys, EPHEMERAL]) + "\n"),
        f"passwd -S {u.name}": Result(0, f"{u.name} L 2026-01-23 0 99999 7 -1\n"),
        "passwd -S root": Result(0, "root L 2026-01-23 0 99999 7 -1\n"),
        "/usr/sbin/sshd -T": Result(0, sshd_t(model)),
        "/etc/ssh/moduli": Result(0, "151 0\n"),
        "ss -Htln": Result(0, f"LISTEN 0 128 {model.network.interfaces['mgmt'].ip}:22 0.0.0.0:*\n"
                              "LISTEN 0 4096 127.0.0.54:53 0.0.0.0:*\n"),
        "ss -Htln '( sport = :2375": Result(0, ""),
        "ip -j addr show": Result(0, ip_addr(model)),
        "ip -j -4 route show default": Result(0, routes(model)),
        "sh -c 'ls ": Result(0, "nfs\n"),
        "findmnt -J -l -o TARGET,SOURCE,FSTYPE,OPTIONS --fstab": Result(0, mounts_json(model, fstab=True)),
        "findmnt -J -l -o TARGET,SOURCE,FSTYPE,OPTIONS": Result(0, mounts_json(model, fstab=False)),
        ".builder-verify-write-test": write_probe,
        "grep -rsH ''": Result(0, sources(model)),
        "test -s ": Result(0, ""),
        "test -e /snap/bin/docker": Result(1, ""),
        "command -v snap": Result(1, ""),
        "${Package}|": Result(0, docker_pkgs + "\n"),
        "cat /etc/docker/daemon.json": Result(0, daemon_json(model)),
        "systemctl show -p ExecStart": Result(0, "{ path=/usr/bin/dockerd ; argv[]=/usr/bin/dockerd -H fd:// "
                                                 "--containerd=/run/containerd/containerd.sock }\n"),
        "systemctl show -p LoadState -p RequiresMountsFor docker.service": Result(
            0, "LoadState=loaded\nRequiresMountsFor=" + " ".join(model.docker.requires_mounts) + "\n"),
        f"Status-Abbrev}}|${{Version}}' {drv.package}": Result(0, f"hi |{drv.version}"),  # held
        f"Status-Abbrev}}|${{Version}}' {tk.package}": Result(0, f"ii |{tk.version}"),
        f"apt-cache policy {drv.package}": Result(0, f"{drv.package}:\n  Installed: {drv.version}\n"
                                                      f"  Candidate: {drv.version}\n  Version table:\n"),
        "grep -lix 0x10de": Result(2, ""),
        # builder.verify.checks_hostconfig
        "ss -Htulnp": Result(0, listeners(model)),
        "ip -j -4 rule show": Result(0, rules(model, 1000 + model.network.interfaces["mgmt"].vlan)),
        f"ip -j -4 route show table {1000 + model.network.interfaces['mgmt'].vlan}": Result(0, mgmt_table(model)),
        "docker info -f": Result(0, model.docker.data_root + "\n"),
        "cat /etc/containerd/config.toml": Result(0, f'version = 2\nroot = "{model.docker.data_root}/containerd-root"\n'
                                                     'disabled_plugins = ["cri"]\n\n[plugins."io.containerd.x"]\n'
                                                     '  root = "/elsewhere"\n'),
        "findmnt -n -o TARGET,SOURCE -T": Result(0, f"{model.docker.data_root} /dev/nvme0n1p1\n"),
        "linux-generic linux-image-generic linux-headers-generic": Result(
            0, "linux-generic|hi \nlinux-image-generic|hi \nlinux-headers-generic|hi \n"),
        "apt-mark showhold": Result(0, "\n".join([drv.package, "linux-generic", "linux-headers-generic",
                                                 "linux-image-generic"]) + "\n"),
        "for mp in ": nfs_probe(model),
        "df -P -B1 ": df_scratch(model, 41.5),
    }


def audit_report(model: Any, **changes: Any) -> dict[str, Any]:
    c = model.ssh.crypto

    def entries(algs: Any) -> list[dict[str, Any]]:
        return [{"algorithm": a, "notes": {"info": ["available since OpenSSH 6.5"]}} for a in algs]

    rep: dict[str, Any] = {
        "banner": {"raw": "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3"},
        "kex": entries([*c.kex, "kex-strict-s-v00@openssh.com"]),
        "key": entries(c.host_key_algorithms),
        "enc": entries(c.ciphers),
        "mac": entries(c.macs),
        "recommendations": {},
    }
    for e in rep["key"]:
        if e["algorithm"].startswith("rsa-"):
            e["keysize"] = 3072
    rep.update(changes)
    return rep


class FakeOutside(Outside):
    def __init__(self, model: Any, banners: dict[int, str | None] | None = None,
                 audit: Result | None = None) -> None:
        self.banners = {40022: "SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3", 40023: None}
        self.banners.update(banners or {})
        self.audit = audit or Result(0, json.dumps(audit_report(model)))

    def ssh_banner(self, ep: Endpoint, timeout: float = 10.0) -> tuple[str | None, str]:
        b = self.banners.get(ep.port)
        return (b, "answered") if b else (None, "connection closed without an SSH banner")

    def ssh_audit(self, ep: Endpoint, timeout: float = 120.0) -> Result:
        return self.audit
