"""Semantic rules of the host model, beyond types. Each rule adds problems to the collector."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from builder.model.rules_features import check_features, check_seed_policy
from builder.model.typedparse import Collector

if TYPE_CHECKING:
    from builder.model.schema import HostModel

MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
IFNAME_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$")
USERNAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
CRYPT_RE = re.compile(r"^\$(1|2[abxy]?|5|6|y|gy|7)\$[./A-Za-z0-9$=,]+$|^!\*?$|^\*$")
SSH_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh.com"
    r"|sk-ecdsa-sha2-nistp256@openssh.com) [A-Za-z0-9+/]+=*( .*)?$"
)
GLOB_CHARS = set("*?[]")
REQUIRED_INTERFACES = {"servers": "services", "mgmt": "management"}


def check_model(m: HostModel, c: Collector) -> None:
    for rule in (_host, _network, _users, _ssh, _storage, _nfs, _apt, _docker, _nvidia, _secrets, _hostconfig):
        rule(m, c)
    check_features(m, c)
    check_seed_policy(m, c)


def _text_file_problem(path: Path, what: str) -> str | None:
    """Why a file the model names cannot be used as UTF-8 text (None when it can)."""
    try:
        path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return f"{what} not found: {path}"
    except IsADirectoryError:
        return f"{what} is a folder, expected a file: {path}"
    except PermissionError:
        return f"{what} is not readable: {path}"
    except OSError as exc:
        return f"{what} cannot be read: {path} ({exc.strerror or exc})"
    except UnicodeDecodeError as exc:
        return f"{what} is not UTF-8 text (byte {exc.start}): {path}"
    return None


def _host(m: HostModel, c: Collector) -> None:
    if not HOSTNAME_RE.match(m.host.hostname):
        c.add(("host", "hostname"), f"expected an RFC 1123 host label (a-z, 0-9, '-'), found {m.host.hostname!r}")
    if m.host.authoritative_for_data:
        c.add(("host", "authoritative_for_data"),
              "prometheus is disposable and must not be authoritative for data; expected false")
    if m.host.source_date_epoch < 0:
        c.add(("host", "source_date_epoch"), "expected seconds since 1970 (>= 0)")
    if not re.fullmatch(r"[0-9a-f]{64}", m.os.iso.sha256):
        c.add(("os", "iso", "sha256"), f"expected 64 lowercase hex digits, found {m.os.iso.sha256!r}")


def _net(value: str, path: tuple, c: Collector) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        c.add(path, f"expected a network in CIDR form like 10.60.0.0/24, found {value!r} ({exc})")
        return None


def _addr(value: str, path: tuple, c: Collector) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        c.add(path, f"expected an IP address, found {value!r}")
        return None


def _network(m: HostModel, c: Collector) -> None:
    ifaces = m.network.interfaces
    for key, purpose in REQUIRED_INTERFACES.items():
        if key not in ifaces:
            c.add(("network", "interfaces"), f"missing interface '{key}' (the {purpose} NIC)")
    macs: Counter[str] = Counter()
    names: Counter[str] = Counter()
    for key, i in ifaces.items():
        base = ("network", "interfaces", key)
        if key in REQUIRED_INTERFACES and i.purpose != REQUIRED_INTERFACES[key]:
            c.add((*base, "purpose"), f"expected {REQUIRED_INTERFACES[key]!r}, found {i.purpose!r}")
        if not 1 <= i.vlan <= 4094:
            c.add((*base, "vlan"), f"expected a VLAN id from 1 to 4094, found {i.vlan}")
        if not MAC_RE.match(i.mac.lower()):
            c.add((*base, "mac"), f"expected a MAC like 52:54:00:12:34:56, found {i.mac!r}")
        elif int(i.mac[:2], 16) & 1:
            c.add((*base, "mac"), f"{i.mac} is a multicast address, not a NIC's MAC")
        macs[i.mac.lower()] += 1
        names[i.name] += 1
        if not IFNAME_RE.match(i.name):
            c.add((*base, "name"), f"expected an interface name of at most 15 characters, found {i.name!r}")
        subnet = _net(i.subnet, (*base, "subnet"), c)
        if i.dhcp and i.address:
            c.add((*base, "address"), "a static address is given but dhcp is true; use reserved_address")
        if not i.dhcp and not i.address:
            c.add((*base, "address"), "dhcp is false: a static address in CIDR form is required")
        if i.address:
            try:
                iface = ipaddress.ip_interface(i.address)
                if "/" not in i.address:
                    raise ValueError("no prefix length")
                if subnet and iface.ip not in subnet:
                    c.add((*base, "address"), f"{i.address} is outside the subnet {i.subnet}")
                if subnet and iface.network != subnet:
                    c.add((*base, "address"), f"prefix of {i.address} does not match the subnet {i.subnet}")
            except ValueError:
                c.add((*base, "address"), f"expected an address in CIDR form like 10.99.0.20/24, found {i.address!r}")
        for fld in ("gateway", "reserved_address"):
            val = getattr(i, fld)
            if val is None:
                continue
            ip = _addr(val, (*base, fld), c)
            if ip and subnet and ip not in subnet:
                c.add((*base, fld), f"{val} is outside the subnet {i.subnet}")
            if ip and subnet and ip in (subnet.network_address, subnet.broadcast_address):
                c.add((*base, fld), f"{val} is the network or broadcast address of {i.subnet}")
    for mac, n in macs.items():
        if n > 1:
            c.add(("network", "interfaces"), f"MAC {mac} is used by {n} interfaces; each NIC needs its own")
    for name, n in names.items():
        if n > 1:
            c.add(("network", "interfaces"), f"interface name {name!r} is used {n} times")
    dr = m.network.default_route
    if dr == "mgmt":
        c.add(("network", "default_route"), "the default route must not use the MGMT NIC; expected 'servers'")
    elif dr not in ifaces:
        c.add(("network", "default_route"), f"expected one of {sorted(ifaces)}, found {dr!r}")
    elif ifaces[dr].gateway is None and not ifaces[dr].dhcp:
        c.add(("network", "interfaces", dr, "gateway"), "the default-route NIC needs a gateway")
    for k, ns in enumerate(m.network.nameservers):
        _addr(ns, ("network", "nameservers", k), c)
    srv = ifaces.get("servers")
    if srv and srv.dhcp:
        c.add(("network", "interfaces", "servers", "dhcp"),
              "SERVERS uses DHCP (a known limitation): services bind to "
              f"{srv.reserved_address or 'an unknown address'}; keep a DHCP reservation for it",
              "warning")


def _users(m: HostModel, c: Collector) -> None:
    if not m.users:
        c.add(("users",), "at least one admin user is required")
        return
    for kind in ("uid", "gid"):
        seen: dict[int, str] = {}
        for n, u in enumerate(m.users):
            val = getattr(u, kind)
            if not 1000 <= val <= 59999:
                c.add(("users", n, kind), f"expected a regular {kind} from 1000 to 59999, found {val}")
            if kind == "uid" and val in seen:
                c.add(("users", n, kind), f"uid {val} is already used by user {seen[val]!r}")
            seen.setdefault(val, u.name)
    names = Counter(u.name for u in m.users)
    for n, u in enumerate(m.users):
        if not USERNAME_RE.match(u.name) or u.name == "root":
            c.add(("users", n, "name"), f"expected a lowercase login name (not root), found {u.name!r}")
        if names[u.name] > 1:
            c.add(("users", n, "name"), f"user {u.name!r} is defined more than once")
        if not u.ssh_authorized_keys:
            c.add(("users", n, "ssh_authorized_keys"), "at least one SSH public key is required (SSH keys only)")
        for k, key in enumerate(u.ssh_authorized_keys):
            if not SSH_KEY_RE.match(key.strip()):
                c.add(("users", n, "ssh_authorized_keys", k),
                      f"expected an OpenSSH public key line ('ssh-ed25519 AAAA… comment'), found {key[:40]!r}")
        if u.password is not None:
            c.add(("users", n, "password"),
                  "plaintext passwords are not allowed; use password_hash (crypt string) or password_file")
        if u.password_hash is not None and not CRYPT_RE.match(u.password_hash):
            c.add(("users", n, "password_hash"),
                  "expected a crypt(3) hash like $6$salt$… (this looks like a plaintext password)")
        if u.password_hash and u.password_file:
            c.add(("users", n, "password_file"), "give either password_hash or password_file, not both")
        if u.password_file:
            problem = _text_file_problem(m.resolve(u.password_file), "secret file")
            if problem is None and not m.resolve(u.password_file).read_text(encoding="utf-8").strip():
                problem = f"secret file is empty: {m.resolve(u.password_file)}"
            if problem:
                c.add(("users", n, "password_file"), problem)


def _ssh(m: HostModel, c: Collector) -> None:
    s = m.ssh
    if s.listen_on != "mgmt":
        c.add(("ssh", "listen_on"), f"SSH must listen on the MGMT NIC only; expected 'mgmt', found {s.listen_on!r}")
    elif "mgmt" in m.network.interfaces and m.mgmt.ip is None:
        c.add(("network", "interfaces", "mgmt", "address"), "sshd needs a known MGMT address to listen on")
    if s.permit_root_login:
        c.add(("ssh", "permit_root_login"), "root login must be disabled; expected false")
    if s.password_authentication:
        c.add(("ssh", "password_authentication"), "SSH is keys only; expected false")
    if not 1 <= s.max_auth_tries <= 4:
        c.add(("ssh", "max_auth_tries"), f"expected 1 to 4, found {s.max_auth_tries}")
    if not 1 <= s.port <= 65535:
        c.add(("ssh", "port"), f"expected a TCP port, found {s.port}")
    if not s.allow_users and not s.allow_groups:
        c.add(("ssh",), "set allow_users or allow_groups so only admins can log in")
    admins = {u.name for u in m.users}
    for n, user in enumerate(s.allow_users):
        if user not in admins:
            c.add(("ssh", "allow_users", n), f"{user!r} is not a user of this model ({sorted(admins)})")
    for fld in ("kex", "ciphers", "macs", "host_key_algorithms"):
        if not getattr(s.crypto, fld):
            c.add(("ssh", "crypto", fld), "expected at least one algorithm")
    if s.crypto.min_moduli_bits < 2048:
        c.add(("ssh", "crypto", "min_moduli_bits"), "expected at least 2048 (3072 recommended)")


def _storage(m: HostModel, c: Collector) -> None:
    from builder.model.disks import check_disks

    check_disks(m, c)
    scratch = m.storage.scratch
    if scratch and not 1 <= scratch.pressure_percent <= 99:
        c.add(("storage", "scratch", "pressure_percent"), "expected a percentage from 1 to 99")


def _nfs(m: HostModel, c: Collector) -> None:
    root = m.nfs.root.rstrip("/") or "/"
    if not m.nfs.root.startswith("/"):
        c.add(("nfs", "root"), f"expected an absolute path, found {m.nfs.root!r}")
    if m.nfs.version not in ("3", "4", "4.0", "4.1", "4.2"):
        c.add(("nfs", "version"), f"expected one of 3, 4, 4.0, 4.1, 4.2, found {m.nfs.version!r}")
    points: Counter[str] = Counter(mt.mountpoint.rstrip("/") for mt in m.nfs.mounts)
    for n, mt in enumerate(m.nfs.mounts):
        base = ("nfs", "mounts", n)
        mp = mt.mountpoint.rstrip("/")
        if mp != root and not mp.startswith(root + "/"):
            c.add((*base, "mountpoint"), f"{mt.mountpoint} is outside the declared NFS root {m.nfs.root}")
        if points[mp] > 1:
            c.add((*base, "mountpoint"), f"duplicate mountpoint {mt.mountpoint}")
        if not mt.export.startswith("/"):
            c.add((*base, "export"), f"expected an absolute export path, found {mt.export!r}")
        opts = set(mt.options) | set(m.nfs.options)
        if mt.access == "ro" and "rw" in opts:
            c.add((*base, "options"), "access is ro but the options contain 'rw'; RO intent must be enforced")
        if mt.access == "rw" and "ro" in opts:
            c.add((*base, "options"), "access is rw but the options contain 'ro'")
    if root not in points:
        c.add(("nfs", "mounts"), f"the NFS root {m.nfs.root} is required but has no mount")
    declared = set(points)
    for n, req in enumerate(m.docker.requires_mounts):
        if req.rstrip("/") not in declared:
            c.add(("docker", "requires_mounts", n), f"{req} is not one of the NFS mountpoints")


def _apt(m: HostModel, c: Collector) -> None:
    for key in ("docker", "nvidia"):
        repo = getattr(m.apt, key)
        base = ("apt", key)
        if not re.match(r"^https?://", repo.url):
            c.add((*base, "url"), f"expected an http(s) URL, found {repo.url!r}")
        fp = repo.key_fingerprint.replace(" ", "")
        if not re.fullmatch(r"[0-9A-F]{40}", fp):
            c.add((*base, "key_fingerprint"), "expected a 40-digit uppercase hex OpenPGP fingerprint")
        path = m.resolve(repo.key_file)
        if (problem := _text_file_problem(path, "key file")) is not None:
            c.add((*base, "key_file"), problem)
        elif b"-----BEGIN PGP PUBLIC KEY BLOCK-----" not in path.read_bytes():
            c.add((*base, "key_file"), f"{path} is not an ASCII-armored OpenPGP public key")
    for fld in ("ubuntu_mirror", "ubuntu_security_mirror"):
        url = getattr(m.apt, fld)
        if url is not None and not re.match(r"^https?://", url):
            c.add(("apt", fld), f"expected an http(s) URL, found {url!r}")


def _docker(m: HostModel, c: Collector) -> None:
    d = m.docker
    if d.tcp_api:
        c.add(("docker", "tcp_api"), "the Docker API must not be exposed over TCP; expected false")
    if d.bind_published_ports_to != "servers":
        c.add(("docker", "bind_published_ports_to"),
              f"services bind only to the SERVERS NIC; expected 'servers', found {d.bind_published_ports_to!r}")
    elif "servers" in m.network.interfaces and m.servers.ip is None:
        c.add(("network", "interfaces", "servers", "reserved_address"),
              "Docker binds published ports to the SERVERS address, but it is unknown: "
              "give reserved_address (DHCP reservation) or a static address")
    if "snap" in " ".join(d.packages) or any(p == "docker.io" for p in d.packages):
        c.add(("docker", "packages"), "Docker comes from Docker's APT repository (docker-ce), never snap/docker.io")
    if "docker-compose-plugin" not in d.packages:
        c.add(("docker", "packages"), "the Compose plugin (docker-compose-plugin) is part of the baseline runtime")


DEB_VERSION_RE = re.compile(r"^(\d+:)?\d[A-Za-z0-9.+~-]*$")  # exact Debian version: no globs, shell-safe
NVIDIA_BRANCH_RE = re.compile(r"^\d{3}(-server)?(-open)?$")


def _nvidia(m: HostModel, c: Collector) -> None:
    drv = m.nvidia.driver
    v = drv.version
    if not v or not DEB_VERSION_RE.match(v):
        c.add(("nvidia", "driver", "version"),
              f"the NVIDIA driver must be pinned to an exact version (e.g. 580.173.02-0ubuntu0.24.04.1), found {v!r}")
    if not NVIDIA_BRANCH_RE.match(drv.branch):
        c.add(("nvidia", "driver", "branch"),
              f"expected an Ubuntu driver branch like '580-server' (nvidia-headless-no-dkms-<branch>), "
              f"found {drv.branch!r}")
    flavour_ok = re.match(r"^[a-z0-9][a-z0-9.+-]*$", drv.kernel_flavour)
    if not flavour_ok or m.os.kernel_package != f"linux-{drv.kernel_flavour}":
        c.add(("nvidia", "driver", "kernel_flavour"),
              f"the prebuilt modules ({drv.modules_package}) must match the installed kernel: os.kernel_package is "
              f"{m.os.kernel_package!r}, so the flavour must be {m.os.kernel_package.removeprefix('linux-')!r}")
    tk = m.nvidia.container_toolkit
    if tk.enabled and tk.version is not None and not DEB_VERSION_RE.match(tk.version):
        c.add(("nvidia", "container_toolkit", "version"),
              f"expected an exact Debian version (e.g. 1.18.2-1), found {tk.version!r}")
    if tk.package != "nvidia-container-toolkit":
        c.add(("nvidia", "container_toolkit", "package"),
              "the toolkit family is pinned as a whole starting from nvidia-container-toolkit; expected that package")
    if not m.nvidia.driver.hold:
        c.add(("nvidia", "driver", "hold"), "the pinned driver must be held (driver/kernel compatibility)", "warning")


def _secrets(m: HostModel, c: Collector) -> None:
    """No private key material anywhere in the model's strings."""

    def walk(value: object, path: tuple) -> None:
        if isinstance(value, str) and "PRIVATE KEY" in value:
            c.add(path, "looks like a private key; the model holds public keys only")
        elif isinstance(value, tuple):
            for i, v in enumerate(value):
                walk(v, (*path, i))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, (*path, k))
        elif hasattr(value, "__dataclass_fields__"):
            for k in value.__dataclass_fields__:
                walk(getattr(value, k), (*path, k))

    walk(m, ())


def _hostconfig(m: HostModel, c: Collector) -> None:
    sc = m.os.host_serial_console
    if sc is not None and not re.fullmatch(r"ttyS\d+(,\d+([noe][5-8])?)?", sc):
        c.add(("os", "host_serial_console"), f"expected a serial port like 'ttyS1,115200n8' or null, found {sc!r}")
    gid = m.docker.group_gid
    if not 1000 <= gid < 60000 or gid in {u.gid for u in m.users}:
        c.add(("docker", "group_gid"), f"expected a GID in 1000..59999 used by no modelled user, found {gid} "
              "(system GIDs below 1000 are handed out by packages and may already be taken)")
