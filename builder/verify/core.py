"""The check model: what a check is, what it returns, and the runner that records what it ran."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from builder.model import HostModel
from builder.verify.host import DEFAULT_TIMEOUT, Host, HostUnreachable, Result
from builder.verify.targets import STANDIN, Target, TargetKind

Status = Literal["pass", "fail", "n/a"]
SEED_FILE = "prometheus.md"


@dataclass(frozen=True)
class SeedRef:
    """The line of the seed document (prometheus.md) that a check proves."""

    line: int
    text: str

    def __str__(self) -> str:
        return f"{SEED_FILE}:{self.line} {self.text}"


# Seed lines, verified against /work/shared/seed/prometheus.md by tests/test_verify_catalog.py.
SEED = {
    "hostname": SeedRef(3, "hostname: prometheus"),
    "rebuildable": SeedRef(13, "must be rebuildable without data loss"),
    "nic-servers": SeedRef(30, "NIC 1: SERVERS VLAN (60) — service runtime"),
    "nic-mgmt": SeedRef(31, "NIC 2: MGMT VLAN (99) — administrative access"),
    "gpu-driver": SeedRef(34, "Driver: NVIDIA proprietary driver"),
    "ssh-only": SeedRef(45, "Access: SSH only"),
    "no-snap-docker": SeedRef(46, "Package Management: APT (no snap-based Docker)"),
    "mgmt-admin": SeedRef(52, "**MGMT (99)** — administrative access only"),
    "servers-runtime": SeedRef(53, "**SERVERS (60)** — runtime/service traffic"),
    "servers-dhcp": SeedRef(55, "SERVERS VLAN: DHCP (current)"),
    "mgmt-static": SeedRef(56, "MGMT VLAN: Static or DHCP reservation recommended"),
    "nfs-hosted": SeedRef(68, "Durable and important data is hosted on Atlas and mounted via NFS."),
    "docker-disposable": SeedRef(73, "| `/var/lib/docker` | Container images/layers | Disposable |"),
    "mount:/mnt/atlas": SeedRef(74, "| `/mnt/atlas` | Atlas NFS root | Required |"),
    "mount:/mnt/atlas/appdata": SeedRef(75, "| `/mnt/atlas/appdata` | Container runtime state (RW) |"),
    "mount:/mnt/atlas/datasets": SeedRef(76, "| `/mnt/atlas/datasets` | Compute datasets (RW as needed) |"),
    "mount:/mnt/atlas/managed-media": SeedRef(77, "| `/mnt/atlas/managed-media` | Media libraries (RO) |"),
    "mount:/mnt/atlas/shared-media": SeedRef(78, "| `/mnt/atlas/shared-media` | Family media (RO) |"),
    "docker-baseline": SeedRef(90, "Docker Engine + Compose plugin (baseline runtime)"),
    "nvidia-toolkit": SeedRef(91, "NVIDIA driver + NVIDIA Container Toolkit"),
    "rebuilt-procedures": SeedRef(115, "Prometheus is rebuilt using documented procedures"),
    "nvidia-smi": SeedRef(129, "`nvidia-smi` baseline"),
    "admin-ssh-only": SeedRef(140, "SSH only"),
    "admin-mgmt-only": SeedRef(141, "MGMT VLAN only"),
    "key-auth": SeedRef(142, "Key-based authentication preferred"),
    "root-disabled": SeedRef(143, "Root login disabled"),
    "no-docker-api": SeedRef(145, "No remote Docker API exposure"),
    "servers-binds": SeedRef(146, "Services bind only to SERVERS VLAN IPs"),
    "least-privilege-mounts": SeedRef(147, "Least-privilege mounts (RO/RW intent enforced via NFS)"),
    "gpu-upgrades": SeedRef(157, "GPU driver/kernel compatibility must be validated during upgrades."),
    "uid-gid": SeedRef(158, "UID/GID consistency required between Prometheus and Atlas for NFS access."),
    "alert-gpu": SeedRef(132, "GPU unavailable"),
    "alert-nfs": SeedRef(133, "NFS mounts unavailable"),
    "alert-scratch": SeedRef(134, "Disk pressure on local scratch"),
    # optional features (builder.verify.checks_features)
    "gpu-model": SeedRef(33, "Model: **NVIDIA RTX A4000 Ada**"),
    "virt-policy": SeedRef(98, "## Virtualization Stack (Optional)"),
    "virt-libvirt": SeedRef(100, "Management: libvirt"),
    "host-metrics": SeedRef(127, "CPU, memory, disk, network (when monitoring stack is enabled)"),
    "dcgm": SeedRef(130, "Optional DCGM exporter"),
    "alerts": SeedRef(131, "Alerts (recommended):"),
}


@dataclass(frozen=True)
class Outcome:
    status: Status
    message: str
    expected: str = ""
    found: str = ""


def passed(message: str, found: str = "") -> Outcome:
    return Outcome("pass", message, found=found)


def failed(message: str, expected: str = "", found: str = "") -> Outcome:
    return Outcome("fail", message, expected=expected, found=found)


def not_applicable(reason: str) -> Outcome:
    return Outcome("n/a", reason)


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class Endpoints:
    """How the machine looks from outside: its SSH port on MGMT and the same port on SERVERS."""

    mgmt: Endpoint
    servers: Endpoint

    @classmethod
    def from_access(cls, access: Any) -> Endpoints:
        return cls(Endpoint(access.ssh_host, access.ssh_port), Endpoint(access.ssh_host, access.servers_ssh_port))


class Outside:
    """Probes run from this machine (not in the guest); replaced by a fake in unit tests."""

    def ssh_banner(self, ep: Endpoint, timeout: float = 10.0) -> tuple[str | None, str]:
        """(banner, detail): the SSH identification line, or None with why there was none."""
        try:
            with socket.create_connection((ep.host, ep.port), timeout=timeout) as s:
                s.settimeout(timeout)
                data = b""
                while b"\n" not in data and len(data) < 512:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    data += chunk
        except TimeoutError:
            return None, "no answer (timed out)"
        except OSError as exc:
            return None, f"connection failed ({exc.strerror or exc})"
        line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
        if line.startswith("SSH-"):
            return line, "answered"
        return None, "connection closed without an SSH banner" if not data else f"non-SSH answer {line!r}"

    def ssh_audit(self, ep: Endpoint, timeout: float = 120.0) -> Result:
        from builder.verify.sshaudit import run_ssh_audit

        return run_ssh_audit(ep.host, ep.port, timeout)


@dataclass(frozen=True)
class CommandLog:
    cmd: str
    root: bool
    rc: int
    seconds: float
    output: str  # tail of stdout+stderr, for the report


class Context:
    """What a check gets: the host, the model, the outside view, and a log of what it ran."""

    def __init__(
        self,
        host: Host,
        model: HostModel,
        endpoints: Endpoints | None = None,
        outside: Outside | None = None,
        extra_authorized_keys: tuple[str, ...] = (),
        target: Target = STANDIN,
    ) -> None:
        self.host = host
        self.target = target  # what is checked (standin, disk, ssh): decides which checks apply
        self.extra_authorized_keys = extra_authorized_keys
        self.model = model
        self.endpoints = endpoints
        self.outside = outside or Outside()
        self.log: list[CommandLog] = []

    def run(self, cmd: str, *, root: bool = False, timeout: float = DEFAULT_TIMEOUT) -> Result:
        start = time.monotonic()
        res = self.host.sudo(cmd, timeout) if root else self.host.run(cmd, timeout)
        out = (res.stdout + ("\n" + res.stderr if res.stderr else "")).strip()
        self.log.append(CommandLog(cmd, root, res.rc, round(time.monotonic() - start, 3), out[-2000:]))
        return res

    def note(self, what: str, res: Result) -> None:
        """Record an outside-the-guest action in the same log."""
        out = (res.stdout + ("\n" + res.stderr if res.stderr else "")).strip()
        self.log.append(CommandLog(what, False, res.rc, 0.0, out[-2000:]))


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    seed: SeedRef
    command: str  # what it runs, for the report (the actual commands are logged)
    expect: str
    fn: Callable[[Context], Outcome] = field(repr=False, compare=False)
    family: str = ""
    # Target kinds this check cannot judge, each with the not-applicable reason (see targets.not_on).
    not_on: tuple[tuple[TargetKind, str], ...] = ()

    def skip_reason(self, kind: TargetKind) -> str | None:
        """Why the check does not apply to a target of `kind` (None: it applies)."""
        return next((why for k, why in self.not_on if k == kind), None)


@dataclass(frozen=True)
class CheckResult:
    check: Check
    outcome: Outcome
    seconds: float
    commands: tuple[CommandLog, ...]

    @property
    def status(self) -> Status:
        return self.outcome.status


def run_check(check: Check, ctx: Context) -> CheckResult:
    ctx.log = []
    start = time.monotonic()
    skip = check.skip_reason(ctx.target.kind)
    try:
        outcome = not_applicable(skip) if skip is not None else check.fn(ctx)
    except HostUnreachable as exc:
        outcome = failed(f"could not run on the host: {exc}")
    except Exception as exc:  # a bug or an unexpected output must not hide the other checks
        outcome = failed(f"check crashed: {type(exc).__name__}: {exc}")
    return CheckResult(check, outcome, round(time.monotonic() - start, 3), tuple(ctx.log))


def run_checks(
    checks: Sequence[Check], ctx: Context, on_result: Callable[[CheckResult], None] | None = None
) -> list[CheckResult]:
    results = []
    for check in checks:
        res = run_check(check, ctx)
        results.append(res)
        if on_result:
            on_result(res)
    return results


def diff_sets(expected: Sequence[str], found: Sequence[str]) -> str:
    """'missing: a, b; unexpected: c' or '' when equal as sets."""
    e, f = set(expected), set(found)
    parts = []
    if e - f:
        parts.append("missing: " + ", ".join(sorted(e - f)))
    if f - e:
        parts.append("unexpected: " + ", ".join(sorted(f - e)))
    return "; ".join(parts)
