"""Harness services the first-boot guest needs, on loopback, and the model overrides pointing at them.

`harness_services(model, workdir)` starts the Atlas NFS stand-in (nfs-ganesha) and a signed local
APT repository served by a small HTTP server thread. The guest sees both at one address inside its
SERVERS network (QEMU `guestfwd`, port 80 for HTTP and 2049 for NFS). `harness_model()` returns the
model with only the repository URLs and keys, the NFS server and one extra (ephemeral) admin key
changed — everything else is the model as written.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import ThreadingHTTPServer
from pathlib import Path

from builder.media.serve import serving
from builder.model import HostModel
from builder.testbed.aptrepo import RepoLayout, build_repos
from builder.testbed.gpgkeys import SigningKey, archive_key, cache_root, make_key
from builder.testbed.nfs import GaneshaServer, nfs_server

log = logging.getLogger("builder.testbed.services")

HTTP_GUEST_PORT = 80
NFS_GUEST_PORT = 2049


def service_address(model: HostModel) -> str:
    """A free address in the SERVERS subnet for "Atlas" and the mirrors (not gateway/DNS/DHCP pool)."""
    srv = model.servers
    net = ipaddress.ip_network(srv.subnet, strict=False)
    taken = {str(net[3])}  # QEMU user-net DNS
    for a in (srv.gateway, srv.ip, srv.reserved_address):
        if a:
            taken.add(a)
    pool_start = ipaddress.ip_address(srv.reserved_address) if srv.reserved_address else net[15]
    pool = {str(pool_start + i) for i in range(16)}  # QEMU's DHCP pool is 16 addresses
    for i in range(10, net.num_addresses - 1):
        cand = str(net[i])
        if cand not in taken and cand not in pool:
            return cand
    raise ValueError(f"no free service address in {srv.subnet}")


@dataclass(frozen=True)
class GuestFwd:
    """A TCP endpoint inside the guest's network forwarded to a loopback port on the host."""

    guest_ip: str
    guest_port: int
    host_port: int

    def helper_argv(self) -> list[str]:
        # -q: quit soon after the guest side closes (else nc lingers while the server keeps the
        # TCP connection open, e.g. NFS).
        return ["nc", "-q", "2", "127.0.0.1", str(self.host_port)]

    def netdev_option(self) -> str:
        # QEMU spawns the command per guest connection in a session of its own (setsid), so it does
        # not die with QEMU's process group: reap_helpers() cleans up what is left.
        return f"guestfwd=tcp:{self.guest_ip}:{self.guest_port}-cmd:{' '.join(self.helper_argv())}"

    def reap_helpers(self) -> int:
        """SIGTERM the leftover `nc` helpers of this forward (matched by exact argv); return count."""
        want = [a.encode() for a in self.helper_argv()]
        killed = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")[:-1]
            except OSError:
                continue
            if argv and Path(argv[0].decode(errors="replace")).name == "nc" and argv[1:] == want[1:]:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(proc.name), signal.SIGTERM)
                    killed += 1
        return killed


@dataclass
class HarnessServices:
    guest_ip: str
    http: ThreadingHTTPServer  # builder.media.serve: the signed APT repositories
    nfs: GaneshaServer
    docker_key: SigningKey
    nvidia_key: SigningKey
    archive_key: SigningKey

    def guestfwds(self) -> tuple[GuestFwd, ...]:
        return (GuestFwd(self.guest_ip, HTTP_GUEST_PORT, self.http.server_address[1]),
                GuestFwd(self.guest_ip, NFS_GUEST_PORT, self.nfs.port))

    @property
    def base_url(self) -> str:
        return f"http://{self.guest_ip}"


def harness_model(model: HostModel, services: HarnessServices, extra_ssh_key: str | None = None,
                  atlas_name: str | None = None) -> HostModel:
    """The model as the test guest must see it: repo URLs/keys and NFS server point at the harness
    (the NFS server as `atlas_name` when given: a name the guest must resolve)."""
    lay = RepoLayout()
    base = services.base_url
    apt = replace(
        model.apt,
        ubuntu_mirror=f"{base}/{lay.ubuntu}",
        ubuntu_security_mirror=f"{base}/{lay.ubuntu}",
        docker=replace(model.apt.docker, url=f"{base}/{lay.docker}",
                       key_file=str(services.docker_key.public_asc),
                       key_fingerprint=services.docker_key.fingerprint),
        nvidia=replace(model.apt.nvidia, url=f"{base}/{lay.nvidia}",
                       key_file=str(services.nvidia_key.public_asc),
                       key_fingerprint=services.nvidia_key.fingerprint),
    )
    users = model.users
    if extra_ssh_key:
        admin = replace(users[0], ssh_authorized_keys=(*users[0].ssh_authorized_keys, extra_ssh_key))
        users = (admin, *users[1:])
    return replace(model, apt=apt, nfs=replace(model.nfs, server=atlas_name or services.guest_ip), users=users)


@contextlib.contextmanager
def harness_services(model: HostModel, workdir: Path, nfs_running: bool = True) -> Iterator[HarnessServices]:
    """Start NFS + signed APT repo on loopback; both are stopped on exit (also on Ctrl-C).
    `nfs_running=False`: the NFS stand-in gets its port but is not started ("Atlas down")."""
    workdir = workdir.absolute()  # every path handed to another program must be absolute
    workdir.mkdir(parents=True, exist_ok=True)
    sde = model.host.source_date_epoch
    keys = cache_root() / "firstboot" / "repo-keys"  # stable: a test seed renders identically
    docker = make_key(keys / "docker", "STANDIN Docker Release (test only) <standin-docker@invalid>")
    nvidia = make_key(keys / "nvidia", "STANDIN NVIDIA toolkit (test only) <standin-nvidia@invalid>")
    archive = archive_key()
    http_root = workdir / "http"
    if not (http_root / "ubuntu" / "dists").exists():
        build_repos(http_root, archive=archive, docker=docker, nvidia=nvidia, sde=sde)
    admin = model.admin
    with serving(http_root, access_log=workdir / "http-access.log") as http, \
            nfs_server(workdir / "nfs", admin.uid, admin.gid, start=nfs_running) as nfs:
        yield HarnessServices(service_address(model), http, nfs, docker, nvidia, archive)
