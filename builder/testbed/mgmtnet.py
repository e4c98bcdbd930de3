"""MGMT as a real routed network for one test boot: the guest's MGMT NIC ends on a tap device in a
network namespace that plays the router at the MGMT gateway address, and a second namespace plays
an admin client on another subnet, routed through it.

    guest mgmt0 (10.99.0.20) ==QEMU dgram socket== relay == tap in ROUTER (10.99.0.1/24)
    ROUTER veth (192.0.2.1/24) ---- CLIENT veth (192.0.2.10/24, default via 192.0.2.1)

QEMU stays in this machine's namespace (its SERVERS user network and guestfwd helpers need this
machine's loopback); its MGMT NIC is `-netdev dgram` over two unix sockets (files: they work across
namespaces), and a small relay started inside ROUTER (`python -m builder.testbed.mgmtnet relay`)
copies frames between that socket and a tap device it creates there. The harness reaches the
guest from ROUTER (on-link: replies never depend on routing); the client's SSH works only when the
guest sends replies from its MGMT address back via the MGMT gateway (policy routing).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuilderError
from builder.run import require_tool, run, stop_process_group

CLIENT_NET = "192.0.2.0/24"  # TEST-NET-1 (RFC 5737): "another subnet" for the admin client
ROUTER_CLIENT_IP = "192.0.2.1"
CLIENT_IP = "192.0.2.10"
TAP = "mgmt-tap"
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


@dataclass(frozen=True)
class RoutedMgmt:
    router_ns: str
    client_ns: str
    qemu_sock: Path  # QEMU's end of the dgram link (it binds this)
    relay_sock: Path  # the relay's end

    def netdev(self) -> str:
        """The `-netdev dgram` options (after `dgram,id=...`) for the guest's MGMT NIC."""
        return (f"local.type=unix,local.path={self.qemu_sock},"
                f"remote.type=unix,remote.path={self.relay_sock}")

    def proxy_command(self) -> str:
        """ssh ProxyCommand reaching the guest from the router namespace (on-link on MGMT)."""
        return f"ip netns exec {self.router_ns} nc -q 2 %h %p"

    def in_client(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.client_ns, *argv]


def _ip(*args: str, ns: str | None = None) -> None:
    argv = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    run(argv, timeout=30)


@contextlib.contextmanager
def routed_mgmt(model: object, workdir: Path) -> Iterator[RoutedMgmt]:
    """Create ROUTER and CLIENT namespaces, the relay and the addresses; everything removed on exit."""
    require_tool("ip", "iproute2")
    if os.geteuid() != 0:
        raise BuilderError("a routed MGMT network needs root (network namespaces, tap devices)")
    mgmt = model.mgmt  # type: ignore[attr-defined]
    if not mgmt.gateway or not mgmt.ip:
        raise BuilderError("a routed MGMT network needs the MGMT address and gateway in the model")
    prefix = ipaddress.ip_network(mgmt.subnet, strict=False).prefixlen
    tag = f"{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
    lay = RoutedMgmt(f"bv-rtr-{tag}", f"bv-cli-{tag}", workdir / "mgmt-qemu.sock", workdir / "mgmt-relay.sock")
    workdir.mkdir(parents=True, exist_ok=True)
    for p in (lay.qemu_sock, lay.relay_sock):
        p.unlink(missing_ok=True)
    relay: subprocess.Popen[bytes] | None = None
    made: list[str] = []
    try:
        for ns in (lay.router_ns, lay.client_ns):
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
        log = open(workdir / "mgmt-relay.log", "wb")  # noqa: SIM115 - closed with the relay below
        relay = subprocess.Popen(
            ["ip", "netns", "exec", lay.router_ns, sys.executable, "-m", "builder.testbed.mgmtnet", "relay",
             str(lay.relay_sock), str(lay.qemu_sock), TAP],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while not lay.relay_sock.exists():
            if relay.poll() is not None or time.monotonic() > deadline:
                raise BuilderError("the MGMT relay did not start: "
                                   + (workdir / "mgmt-relay.log").read_text(errors="replace")[-1000:])
            time.sleep(0.1)
        _ip("addr", "add", f"{mgmt.gateway}/{prefix}", "dev", TAP, ns=lay.router_ns)
        _ip("link", "set", TAP, "up", ns=lay.router_ns)
        run(["ip", "netns", "exec", lay.router_ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], timeout=30)
        _ip("link", "add", "veth-rtr", "type", "veth", "peer", "name", "veth-cli", "netns", lay.client_ns,
            ns=lay.router_ns)
        _ip("addr", "add", f"{ROUTER_CLIENT_IP}/24", "dev", "veth-rtr", ns=lay.router_ns)
        _ip("link", "set", "veth-rtr", "up", ns=lay.router_ns)
        _ip("addr", "add", f"{CLIENT_IP}/24", "dev", "veth-cli", ns=lay.client_ns)
        _ip("link", "set", "veth-cli", "up", ns=lay.client_ns)
        _ip("route", "add", "default", "via", ROUTER_CLIENT_IP, ns=lay.client_ns)
        yield lay
    finally:
        if relay is not None:
            stop_process_group(relay, grace=5)
        for ns in made:
            with contextlib.suppress(BuilderError):
                _ip("netns", "del", ns)
        for p in (lay.qemu_sock, lay.relay_sock):
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def mgmt_forward(lay: RoutedMgmt, address: str, port: int) -> Iterator[int]:
    """A TCP port on this machine's loopback that reaches `address:port` on MGMT from ROUTER (on-link),
    for the probes run from outside (SSH banner, ssh-audit), which connect from this namespace. Each
    connection is one `nc` in ROUTER, as the harness's own ssh ProxyCommand. Yields the local port."""
    import threading

    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def pump(conn: socket.socket) -> None:
        nc = subprocess.Popen(["ip", "netns", "exec", lay.router_ns, "nc", "-q", "2", address, str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert nc.stdin is not None and nc.stdout is not None
        out_fd, in_fd = nc.stdout.fileno(), nc.stdin.fileno()
        try:
            while not stop.is_set():
                ready, _, _ = select.select([conn.fileno(), out_fd], [], [], 1.0)
                if conn.fileno() in ready:
                    data = conn.recv(65536)
                    if not data:
                        break
                    os.write(in_fd, data)
                if out_fd in ready:
                    data = os.read(out_fd, 65536)
                    if not data:
                        break
                    conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
            nc.kill()
            nc.wait()

    def accept() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([server], [], [], 0.5)
            if ready:
                conn, _ = server.accept()
                threading.Thread(target=pump, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def relay_main(relay_sock: str, qemu_sock: str, tap: str) -> None:
    """Copy Ethernet frames between a tap device (created here) and QEMU's dgram unix socket."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    import fcntl

    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", tap.encode(), IFF_TAP | IFF_NO_PI))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(relay_sock)
    sock_fd = sock.fileno()
    while True:
        ready, _, _ = select.select([fd, sock_fd], [], [])
        if fd in ready:
            frame = os.read(fd, 65536)
            with contextlib.suppress(OSError):  # QEMU not (yet) listening: drop, like a cable unplugged
                sock.sendto(frame, qemu_sock)
        if sock_fd in ready:
            frame = sock.recv(65536)
            with contextlib.suppress(OSError):  # the tap not up yet
                os.write(fd, frame)


if __name__ == "__main__":  # pragma: no cover - runs inside the router namespace
    if len(sys.argv) == 5 and sys.argv[1] == "relay":
        relay_main(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("usage: python -m builder.testbed.mgmtnet relay RELAY_SOCK QEMU_SOCK TAP")
