"""Checks of what must hold on every boot (builder.seed.hostconfig): listeners, MGMT policy routing,
Docker/containerd storage on the scratch disk, kernel metapackages held with the driver."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass

from builder.model import HostModel
from builder.seed.hostconfig import kernel_metapackages, mgmt_route_table, scratch_mountpoint
from builder.verify.checks_nvidia import is_installed
from builder.verify.core import SEED, Check, Context, Outcome, failed, not_applicable, passed
from builder.verify.targets import not_on

LISTENERS_CMD = "ss -Htulnp"
SSH_PROCESSES = {"sshd", "systemd"}  # systemd holds ssh.socket until the first connection
CONTAINERD_DEFAULT_ROOT = "/var/lib/containerd"


@dataclass(frozen=True)
class Listener:
    proto: str
    addr: str  # without brackets or %iface; "*" for any
    port: int
    process: str  # first process name, "" for kernel sockets

    def __str__(self) -> str:
        addr = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"{self.proto} {addr}:{self.port} ({self.process or 'kernel'})"


# The direct-boot stand-in is the image without an installer run: no scratch disk was partitioned,
# formatted or put into fstab. The installed disk (--target disk:) and the live host are judged.
NO_SCRATCH_ON_STANDIN = not_on(("standin",), "the direct-boot stand-in has no installer-made scratch disk: "
                                            "judged on the installed disk (--target disk:) and the live host")

def parse_listeners(text: str) -> list[Listener]:
    """`ss -Htulnp` lines -> listeners (tcp LISTEN and udp UNCONN sockets)."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 5:
            continue
        host, _, port = f[4].rpartition(":")
        host = host.strip("[]").split("%", 1)[0]
        m = re.search(r'\(\("([^"]+)"', " ".join(f[6:]))
        try:
            out.append(Listener(f[0], host or "*", int(port), m.group(1) if m else ""))
        except ValueError:
            continue
    return out


def _ip(addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def listener_problem(ln: Listener, servers_ip: str | None, mgmt_ip: str | None, ssh_port: int) -> str | None:
    """Why a listener is not allowed, or None: loopback, the SERVERS address, sshd on MGMT only."""
    ip = _ip(ln.addr)
    if ip is None or ip.is_unspecified:
        return f"{ln} listens on every address (MGMT included)"
    if ip.is_loopback:
        return None
    if ln.process == "sshd" and str(ip) != mgmt_ip:
        return f"{ln}: sshd beyond MGMT"
    if servers_ip and str(ip) == servers_ip:
        return None
    if mgmt_ip and str(ip) == mgmt_ip:
        if ln.proto == "tcp" and ln.port == ssh_port and ln.process in SSH_PROCESSES:
            return None
        return f"{ln} on MGMT: only sshd may listen there"
    return f"{ln} on {ip}, neither loopback nor the SERVERS address"


def listeners_check(model: HostModel) -> Check:
    srv, mgmt, port = model.servers.ip, model.mgmt.ip, model.ssh.port
    expect = f"loopback, {srv} (SERVERS), sshd on {mgmt}:{port} (MGMT) only"

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(LISTENERS_CMD, root=True)
        if not res.ok:
            return failed(f"ss failed: {res.brief()}", expected=expect)
        lns = parse_listeners(res.stdout)
        bad = [p for p in (listener_problem(ln, srv, mgmt, port) for ln in lns) if p]
        found = "; ".join(str(ln) for ln in lns) or "no listeners"
        if bad:
            return failed(f"{len(bad)} listener(s) beyond SERVERS/loopback: " + "; ".join(bad),
                          expected=expect, found=found)
        return passed(f"{len(lns)} listener(s), all allowed", found=found)

    return Check("net.listeners", "only loopback, the SERVERS address and sshd on MGMT listen", SEED["servers-binds"],
                 LISTENERS_CMD, expect, fn, family="network")


def mgmt_policy_routing_check(model: HostModel) -> Check:
    mgmt = model.mgmt
    table = mgmt_route_table(model)
    expect = f"from {mgmt.ip} lookup {table}; table {table}: default via {mgmt.gateway} dev {mgmt.name}"

    def fn(ctx: Context) -> Outcome:
        if not (mgmt.gateway and mgmt.ip):
            return not_applicable("the model gives MGMT no gateway: no policy routing to check")
        res = ctx.run("ip -j -4 rule show")
        if not res.ok:
            return failed(f"ip rule failed: {res.brief()}", expected=expect)
        rules = json.loads(res.stdout or "[]")
        ours = [r for r in rules if r.get("src") == mgmt.ip and int(r.get("srclen", 32)) == 32
                and str(r.get("table")) == str(table)]
        found_rules = ", ".join(f"from {r.get('src')} lookup {r.get('table')}" for r in rules)
        if not ours:
            return failed(f"no rule 'from {mgmt.ip} lookup {table}': replies from MGMT follow the main table "
                          "(default via SERVERS)", expected=expect, found=found_rules)
        rt = ctx.run(f"ip -j -4 route show table {table}")
        routes = json.loads(rt.stdout or "[]") if rt.ok else []
        found = found_rules + "; table: " + (", ".join(
            f"{r.get('dst')} via {r.get('gateway', '-')} dev {r.get('dev')}" for r in routes) or "empty")
        if not any(r.get("dst") == "default" and r.get("gateway") == mgmt.gateway and r.get("dev") == mgmt.name
                   for r in routes):
            return failed(f"table {table} has no default via {mgmt.gateway} dev {mgmt.name}", expected=expect,
                          found=found)
        return passed(f"from {mgmt.ip} lookup {table}, default via {mgmt.gateway}", found=found)

    return Check("net.mgmt-policy-routing", "replies from the MGMT address leave via the MGMT gateway",
                 SEED["mgmt-admin"], f"ip -j -4 rule show; ip -j -4 route show table {table}", expect, fn,
                 family="network")


def _findmnt_target(ctx: Context, path: str) -> tuple[str, str]:
    """(mount target, source) of the filesystem that holds `path`, or of its nearest existing parent:
    a root not created yet (daemon not started) would land there."""
    script = (f"p={shlex.quote(path)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
              "findmnt -n -o TARGET,SOURCE -T \"$p\"")
    res = ctx.run(f"sh -c {shlex.quote(script)}")
    target, _, source = res.stdout.strip().partition(" ")
    return (target, source.strip()) if res.ok and target else ("", res.brief() or "findmnt found nothing")


def _containerd_root(ctx: Context) -> str:
    res = ctx.run("cat /etc/containerd/config.toml", root=True)
    for line in res.stdout.splitlines() if res.ok else []:
        if line.lstrip().startswith("["):
            break  # only the top-level key, not a plugin's root
        m = re.match(r'\s*root\s*=\s*"([^"]+)"', line)
        if m:
            return m.group(1)
    return CONTAINERD_DEFAULT_ROOT


def _docker_root(ctx: Context, model: HostModel) -> str:
    res = ctx.run("docker info -f '{{.DockerRootDir}}'", root=True)
    if res.ok and res.stdout.strip().startswith("/"):
        return res.stdout.strip()
    daemon = ctx.run("cat /etc/docker/daemon.json", root=True)
    try:
        return str(json.loads(daemon.stdout).get("data-root") or "/var/lib/docker")
    except (ValueError, AttributeError):
        return "/var/lib/docker"


def storage_on_scratch_check(model: HostModel) -> Check:
    mp = scratch_mountpoint(model)

    def fn(ctx: Context) -> Outcome:
        if mp is None:
            return not_applicable("the model has no scratch disk")
        paths = {"Docker root": _docker_root(ctx, model), "containerd root": _containerd_root(ctx)}
        found, problems = [], []
        for what, path in paths.items():
            target, source = _findmnt_target(ctx, path)
            found.append(f"{what} {path} on {target or '?'} ({source})")
            if target != mp:
                problems.append(f"{what} {path} is on {target or 'an unknown filesystem'}, not the scratch disk {mp}")
        if problems:
            return failed("; ".join(problems), expected=f"both on the filesystem mounted at {mp}",
                          found="; ".join(found))
        return passed("; ".join(found), found="; ".join(found))

    return Check("docker.storage-on-scratch", "images and layers (Docker and containerd roots) on the scratch disk",
                 SEED["docker-disposable"], "docker info; /etc/containerd/config.toml; findmnt -T",
                 f"on {mp}", fn, family="docker", not_on=NO_SCRATCH_ON_STANDIN)


def kernel_held_check(model: HostModel) -> Check:
    metas = kernel_metapackages(model.os.kernel_package)

    def fn(ctx: Context) -> Outcome:
        if not model.nvidia.driver.hold:
            return not_applicable("the model does not hold the driver, so nothing holds the kernel either")
        res = ctx.run("dpkg-query -W -f='${Package}|${db:Status-Abbrev}\\n' " + " ".join(metas))
        installed = [ln.split("|")[0] for ln in res.stdout.splitlines()
                     if "|" in ln and is_installed(ln.split("|")[1])]
        held = set(ctx.run("apt-mark showhold").stdout.split())
        found = f"installed: {', '.join(installed) or 'none'}; held: {', '.join(sorted(held)) or 'none'}"
        if model.os.kernel_package not in installed:
            return failed(f"the kernel metapackage {model.os.kernel_package} is not installed",
                          expected=f"{' '.join(metas)} installed and held", found=found)
        loose = [p for p in installed if p not in held]
        if loose:
            return failed(f"kernel metapackage(s) not held: {', '.join(loose)}: an upgrade may bring a kernel "
                          "the pinned driver was not validated with", expected="held: " + " ".join(installed),
                          found=found)
        return passed(f"held with the driver: {', '.join(installed)}", found=found)

    return Check("nvidia.kernel-held", "kernel metapackages held together with the driver", SEED["gpu-upgrades"],
                 "dpkg-query -W " + " ".join(metas) + "; apt-mark showhold", "held: " + " ".join(metas), fn,
                 family="nvidia")


def hostconfig_checks(model: HostModel) -> list[Check]:
    return [listeners_check(model), mgmt_policy_routing_check(model), storage_on_scratch_check(model),
            kernel_held_check(model)]
