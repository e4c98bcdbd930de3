"""Verify a live host over SSH (`builder verify --target ssh://user@host[:port] --identity KEY`).

No QEMU: the catalog runs through `SshHost` as the model's admin. Before anything connects, the
identity's public half must be one of the user's keys in the model (a key the rebuilt host would not
have is a mistake to report, not a login to try). A preflight login then turns every transport
problem (unreachable host, wrong port, refused key, no sudo) into one clear error.
The outside checks probe the address that was reached (MGMT) and the model's SERVERS address.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.model import HostModel, User
from builder.run import require_tool, run
from builder.verify.catalog import build_catalog, select
from builder.verify.core import CheckResult, Context, Endpoint, Endpoints, run_checks
from builder.verify.host import SshHost
from builder.verify.report import Report
from builder.verify.targets import Target, ssh_target

PREFLIGHT_MARK = "builder-verify-preflight"


@dataclass(frozen=True)
class LiveAccess:
    """What `builder.verify.ssh.ssh_command` needs to reach a live host (GuestAccess' SSH part)."""

    ssh_host: str
    ssh_port: int
    user: str
    identity_file: Path


def key_id(line: str) -> str:
    """'type base64' of a public key or authorized_keys line (options and comment dropped)."""
    parts = line.split()
    for i, p in enumerate(parts[:-1]):
        if p.startswith(("ssh-", "ecdsa-", "sk-")):
            return f"{p} {parts[i + 1]}"
    return line.strip()


def fingerprint(line: str) -> str:
    """OpenSSH's SHA256 fingerprint of a public key line ('SHA256:...'), or '?' when unreadable."""
    try:
        blob = base64.b64decode(key_id(line).split()[1], validate=True)
    except (IndexError, ValueError):
        return "?"
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def public_key_of(identity: Path) -> str:
    """The public half of a private key file (`ssh-keygen -y`), or IDENTITY.pub for an encrypted key."""
    identity = Path(identity)
    if not identity.is_file():
        raise BuilderError(f"identity file not found: {identity}",
                           hint="--identity FILE is the admin's private SSH key (e.g. ~/.ssh/id_ed25519)")
    keygen = require_tool("ssh-keygen", "openssh-client")
    proc = run([keygen, "-y", "-P", "", "-f", identity], check=False, timeout=30)
    out = (proc.stdout or b"").decode(errors="replace").strip()
    err = (proc.stderr or b"").decode(errors="replace").strip()
    if proc.returncode == 0 and out:
        return out.splitlines()[0]
    if "bad permissions" in err or "too open" in err:
        raise BuilderError(f"identity file {identity} is readable by others: ssh refuses to use it",
                           hint=f"chmod 600 {identity}")
    pub = identity.with_name(identity.name + ".pub")
    if "passphrase" in err and pub.is_file():  # an encrypted key (an agent may hold it): use its .pub
        return pub.read_text().strip().splitlines()[0]
    last = err.splitlines()[-1] if err else f"exit {proc.returncode}"
    raise BuilderError(f"cannot read the public half of {identity}: {last}",
                       hint="--identity takes an OpenSSH private key file")


def model_user(model: HostModel, name: str | None) -> Any:
    user = model.admin if name is None else next((u for u in model.users if u.name == name), None)
    if user is None:
        names = ", ".join(u.name for u in model.users)
        raise BuilderError(f"user {name!r} is not in the host model (users: {names})",
                           hint=f"log in as the admin: ssh://{model.admin.name}@HOST")
    return user


def check_identity_in_model(model: HostModel, user: User, identity: Path) -> str:
    """The identity's public key line; raise when the model does not list it for `user` (no network)."""
    pub = public_key_of(identity)
    modelled = [key_id(k) for k in user.ssh_authorized_keys]
    if key_id(pub) not in modelled:
        listed = ", ".join(fingerprint(k) for k in user.ssh_authorized_keys) or "none"
        raise BuilderError(
            f"the key {identity} ({pub.split()[0]} {fingerprint(pub)}) is not one of {user.name}'s keys in the "
            f"host model {model.source_path} (users[].ssh_authorized_keys: {listed})",
            hint="a host rebuilt from this model only accepts the modelled keys: pass the matching private key, "
                 "or add its public half to the model",
        )
    return pub


def parse_endpoint(text: str, default_port: int) -> Endpoint:
    """HOST or HOST:PORT (or [v6]:PORT) -> Endpoint."""
    raw = text.strip()
    host, port = raw, default_port
    if raw.startswith("["):
        host, _, rest = raw[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], raw)
    elif raw.count(":") == 1:
        host, p = raw.split(":")
        port = _port(p, raw)
    if not host:
        raise BuilderError(f"bad endpoint {text!r}: expected HOST[:PORT]")
    return Endpoint(host, port)


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BuilderError(f"bad port in {whole!r}: expected 1-65535")
    return int(text)


def live_endpoints(model: HostModel, target: Target, servers: Endpoint | None = None) -> Endpoints:
    """MGMT: the address that is reached; SERVERS: the model's SERVERS address on the SSH port."""
    if servers is None:
        ip = model.network.interfaces["servers"].ip
        if not ip:
            raise BuilderError("the model has no SERVERS address to prove SSH is refused there "
                               "(network.interfaces.servers: no address or reserved_address)",
                               hint="pass --servers-ssh HOST[:PORT]")
        servers = Endpoint(ip, model.ssh.port)
    return Endpoints(Endpoint(target.host or "", target.port), servers)


def _ssh_failure(access: LiveAccess, stderr: str, model: HostModel) -> BuilderError:
    where = f"{access.ssh_host}:{access.ssh_port}"
    s = stderr.lower()
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    if "connection refused" in s:
        return BuilderError(f"cannot reach {where}: connection refused ({detail})",
                            hint=f"wrong port, or sshd is not listening on that address (the model's sshd listens "
                                 f"on the MGMT address, port {model.ssh.port})")
    if "permission denied" in s:
        return BuilderError(f"{where} refused the key {access.identity_file} for {access.user} ({detail})",
                            hint=f"the host does not accept this key for {access.user}: was it rebuilt from this "
                                 "model? (authorized_keys, AllowUsers/AllowGroups)")
    if "could not resolve" in s:
        return BuilderError(f"cannot resolve the host name {access.ssh_host} ({detail})")
    if any(k in s for k in ("timed out", "no route to host", "network is unreachable", "host is down")):
        return BuilderError(f"host unreachable: {where} ({detail})",
                            hint="is the host up, and is this machine on its MGMT network?")
    if any(k in s for k in ("kex_exchange_identification", "connection closed", "connection reset",
                            "banner exchange")):
        return BuilderError(f"{where} closed the connection before the SSH handshake ({detail})",
                            hint="not an SSH server on that port, or sshd turned this client away")
    return BuilderError(f"SSH to {access.user}@{where} failed: {detail}")


def preflight(access: LiveAccess, model: HostModel, timeout: float = 60.0) -> str:
    """Log in once and try sudo; return the remote hostname. Raise a clear BuilderError otherwise."""
    from builder.verify.ssh import ssh_run

    cmd = f"echo {PREFLIGHT_MARK}; hostname; if sudo -n true; then echo sudo-ok; fi"
    proc = ssh_run(access, cmd, timeout=timeout)  # type: ignore[arg-type]  # the SSH part of GuestAccess
    out, err = proc.stdout or "", proc.stderr or ""
    if proc.returncode == 124:
        raise BuilderError(f"host unreachable: no SSH session with {access.ssh_host}:{access.ssh_port} within "
                           f"{timeout:.0f}s")
    if PREFLIGHT_MARK not in out:
        raise _ssh_failure(access, err, model)
    lines = out.split(PREFLIGHT_MARK, 1)[1].split()
    if "sudo-ok" not in lines:
        raise BuilderError(f"{access.user} cannot use sudo without a password on {access.ssh_host} "
                           f"(sudo -n true: {err.strip().splitlines()[-1] if err.strip() else 'refused'})",
                           hint="the checks read root-only state; the model's admin has sudo NOPASSWD")
    return lines[0] if lines else "?"


def verify_live(
    model: HostModel, target: Target, identity: Path, *, servers: Endpoint | None = None,
    only: list[str] | None = None, on_result: Callable[[CheckResult], None] | None = None,
    started: float | None = None,
) -> Report:
    """Run the catalog (or `only` its matching part) on a live host over SSH and return the Report."""
    if target.kind != "ssh" or not target.host:
        raise BuilderError(f"verify_live needs an ssh:// target, not {target.kind}")
    t0 = time.monotonic()
    user = model_user(model, target.user)
    target = ssh_target(target.host, target.port, user.name)
    check_identity_in_model(model, user, Path(identity))
    endpoints = live_endpoints(model, target, servers)
    access = LiveAccess(target.host or "", target.port, user.name, Path(identity))
    remote_name = preflight(access, model)
    timings = {"connected": round(time.monotonic() - t0, 1)}
    host = SshHost(access)
    try:
        t = time.monotonic()
        ctx = Context(host, model, endpoints, target=target)
        results = run_checks(select(build_catalog(model), only), ctx, on_result)
        timings["checks_seconds"] = round(time.monotonic() - t, 1)
    finally:
        host.close()
    if started is not None:
        timings["checks_done"] = round(time.monotonic() - started, 1)
    reached = f"{target.address} (live host over SSH, hostname {remote_name}; SERVERS probed at " \
              f"{endpoints.servers.host}:{endpoints.servers.port})"
    return Report(model.host.hostname, reached, tuple(results), timings, None, target_info=target)
