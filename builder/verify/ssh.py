"""How the harness and the checks reach a booted guest: `GuestAccess` and `ssh_run`.

Everything goes through the MGMT forward (127.0.0.1:<port> -> MGMT address:22) as the model's
admin user, with an ephemeral key generated for the run. The SERVERS forward exists only so a
check can prove that SSH is *refused* there.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from builder.errors import BuilderError
from builder.run import require_tool, run


class ServiceControl(Protocol):
    """A harness-side service the guest depends on (e.g. the Atlas NFS stand-in)."""

    def stop(self) -> None: ...
    def start(self) -> None: ...
    @property
    def running(self) -> bool: ...


@dataclass(frozen=True)
class GuestAccess:
    ssh_host: str  # "127.0.0.1"
    ssh_port: int  # -> MGMT address:22
    servers_ssh_port: int  # -> SERVERS address:22 (expected refused)
    user: str  # admin user from the model
    identity_file: Path  # private key of the ephemeral key
    serial_log: Path
    timings: dict[str, float] = field(default_factory=dict)  # boot_to_login, cloud_init_done, ssh_ready
    # Optional handles for fault tests and diagnostics (None when not booted by booted_guest):
    nfs: ServiceControl | None = None  # stop()/start() the Atlas NFS stand-in
    vm: Any = None  # builder.qemu.RunningVm: serial_text(), wait_for_text()
    power: Any = None  # builder.testbed.boot.GuestPower: reboot() boots the same machine again
    proxy_command: str | None = None  # ssh ProxyCommand (a routed MGMT: reached from the router namespace)


SSH_OPTIONS = (
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "GlobalKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "BatchMode=yes",
    "-o", "IdentitiesOnly=yes",
    "-o", "PasswordAuthentication=no",
    "-o", "ConnectTimeout=15",
    "-o", "ServerAliveInterval=10",
    "-o", "ServerAliveCountMax=3",
)


def ssh_command(
    access: GuestAccess, cmd: str | Sequence[str], *, port: int | None = None, user: str | None = None
) -> list[str]:
    """argv for running `cmd` (a shell line, or argv that is quoted for you) on the guest."""
    ssh = require_tool("ssh", "openssh-client")
    remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
    proxy = ["-o", f"ProxyCommand={access.proxy_command}"] if getattr(access, "proxy_command", None) else []
    return [
        ssh, "-i", str(access.identity_file), "-p", str(port or access.ssh_port), *SSH_OPTIONS, *proxy,
        f"{user or access.user}@{access.ssh_host}", "--", remote,
    ]


def ssh_run(
    access: GuestAccess,
    cmd: str | Sequence[str],
    timeout: float = 60,
    *,
    input: str | None = None,
    port: int | None = None,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` on the guest over SSH; never raises for a failing command.

    Returns the CompletedProcess (text). rc 255 = ssh itself failed (refused, auth, ...);
    rc 124 = timed out (stderr says so).
    """
    argv = ssh_command(access, cmd, port=port, user=user)
    try:
        proc = run(
            argv, check=False, timeout=timeout, input=input.encode() if input is not None else None
        )
    except BuilderError as exc:
        if isinstance(exc.__cause__, subprocess.TimeoutExpired):
            return subprocess.CompletedProcess(argv, 124, "", f"ssh timed out after {timeout}s")
        raise
    return subprocess.CompletedProcess(
        argv,
        proc.returncode,
        (proc.stdout or b"").decode(errors="replace"),
        (proc.stderr or b"").decode(errors="replace"),
    )


def wait_for_ssh(access: GuestAccess, timeout: float = 120, interval: float = 2.0) -> float:
    """Retry `true` over SSH until it works; return the seconds waited. Raise with the last error."""
    start = time.monotonic()
    last: subprocess.CompletedProcess[str] | None = None
    while time.monotonic() - start < timeout:
        last = ssh_run(access, "true", timeout=30)
        if last.returncode == 0:
            return time.monotonic() - start
        time.sleep(interval)
    detail = (last.stderr.strip() if last else "") or "no answer"
    raise BuilderError(
        f"SSH to {access.user}@{access.ssh_host}:{access.ssh_port} did not work within {timeout:.0f}s: "
        f"{detail}",
        hint=f"see the serial log {access.serial_log}",
    )


def generate_keypair(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    """Make an ephemeral ed25519 key in `directory`; return (private key path, public key line)."""
    keygen = require_tool("ssh-keygen", "openssh-client")
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / name
    for p in (key, key.with_suffix(".pub")):
        p.unlink(missing_ok=True)
    run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", "builder-verify-ephemeral", "-f", key])
    key.chmod(0o600)
    return key, key.with_name(name + ".pub").read_text().strip()
