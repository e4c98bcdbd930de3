"""A small testinfra-like `Host`: run a shell line on the machine under test, get rc/stdout/stderr.

Backends: `SshHost` (the QEMU guest or the real machine, as the admin user over SSH), `LocalHost`
(a subprocess on this machine) and `FakeHost` (canned outputs for unit tests). Root-only commands
go through `Host.sudo()`, which wraps them in `sudo -n` unless the backend already is root.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.run import run

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class Result:
    rc: int
    stdout: str
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def brief(self, limit: int = 300) -> str:
        """One line for a message: stderr if any, else stdout, trimmed."""
        text = (self.stderr.strip() or self.stdout.strip()).replace("\n", " | ")
        return text if len(text) <= limit else text[: limit - 3] + "..."


class HostUnreachable(Exception):
    """The transport failed (SSH refused, timed out): no check can be judged on this host."""


class Host:
    """Base class. Subclasses implement `_exec`; `is_root` says whether sudo is needed."""

    name = "host"
    is_root = False

    def run(self, cmd: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        return self._exec(cmd, timeout)

    def sudo(self, cmd: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        return self._exec(cmd if self.is_root else sudo_wrap(cmd), timeout)

    def _exec(self, cmd: str, timeout: float) -> Result:  # pragma: no cover - abstract
        raise NotImplementedError


def sudo_wrap(cmd: str) -> str:
    return f"sudo -n sh -c {shlex.quote(cmd)}"


class LocalHost(Host):
    """This machine: `sh -c` through builder.run (for a real host checked locally, and tests)."""

    name = "local"

    def __init__(self) -> None:
        self.is_root = os.geteuid() == 0

    def _exec(self, cmd: str, timeout: float) -> Result:
        try:
            proc = run(["sh", "-c", cmd], check=False, timeout=timeout)
        except BuilderError as exc:
            return Result(124, "", str(exc))
        return Result(proc.returncode, _text(proc.stdout), _text(proc.stderr))


class SshHost(Host):
    """The machine under test over SSH as the admin user (MGMT), built on builder.verify.ssh.

    By default one multiplexed connection (ControlMaster) carries every command: a check run costs
    one key exchange instead of ~90, which matters on a TCG guest. `runner` replaces the transport
    (a function like `ssh_run(access, cmd, timeout=...)`), e.g. in tests.
    """

    def __init__(self, access: Any, runner: Callable[..., Any] | None = None, multiplex: bool = True) -> None:
        self.access = access
        self.name = f"{access.user}@{access.ssh_host}:{access.ssh_port}"
        self._control: str | None = None
        if runner is None and multiplex:
            self._control = tempfile.mkdtemp(prefix="vssh-")
            runner = self._mux_run
        elif runner is None:
            from builder.verify.ssh import ssh_run

            runner = ssh_run
        self._runner: Callable[..., Any] = runner

    def _mux_run(self, access: Any, cmd: str, timeout: float) -> Any:
        from builder.verify.ssh import ssh_command

        argv = ssh_command(access, cmd)
        argv[1:1] = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._control}/%C",
                     "-o", "ControlPersist=120"]
        try:
            return run(argv, check=False, timeout=timeout)
        except BuilderError:
            return subprocess.CompletedProcess(argv, 124, b"", f"ssh timed out after {timeout}s".encode())

    def close(self) -> None:
        """Stop the shared connection (it also exits by itself after 120 s idle)."""
        if self._control:
            sockets = list(Path(self._control).glob("*"))
            for sock in sockets:
                with contextlib.suppress(BuilderError):
                    run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], check=False, timeout=10)
            shutil.rmtree(self._control, ignore_errors=True)
            self._control = None

    def _exec(self, cmd: str, timeout: float) -> Result:
        proc = self._runner(self.access, cmd, timeout=timeout)
        rc, out, err = proc.returncode, _text(proc.stdout), _text(proc.stderr)
        # ssh exits 255 when it cannot connect or authenticate; the command itself never ran.
        if rc == 255 and _looks_like_ssh_failure(err):
            raise HostUnreachable(f"SSH to {self.name} failed: {err.strip()[-500:]}")
        if rc == 255 and not err.strip():
            return Result(255, out, "remote command was killed by a signal (ssh exit 255)")
        if rc == 124 and "ssh timed out" in err:
            return Result(124, out, f"no answer within {timeout:.0f}s (ssh timed out)")
        return Result(rc, out, err)


def _looks_like_ssh_failure(stderr: str) -> bool:
    s = stderr.lower()
    return any(
        k in s
        for k in ("connection refused", "connection closed", "connection reset", "permission denied",
                  "timed out", "no route", "kex_exchange_identification", "could not resolve",
                  "broken pipe")
    )


Response = Result | Callable[[str], Result]


@dataclass
class FakeHost(Host):
    """Canned outputs for unit tests. `responses` maps a substring of the command to a Result
    (or a function of the command); the longest matching key wins. Unknown commands give rc 127.
    `calls` records (command, as_root) for assertions."""

    responses: Mapping[str, Response] = field(default_factory=dict)
    is_root: bool = False
    calls: list[tuple[str, bool]] = field(default_factory=list)
    name: str = "fake"

    def run(self, cmd: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        self.calls.append((cmd, False))
        return self._answer(cmd)

    def sudo(self, cmd: str, timeout: float = DEFAULT_TIMEOUT) -> Result:
        self.calls.append((cmd, True))
        return self._answer(cmd)

    def _answer(self, cmd: str) -> Result:
        keys = sorted((k for k in self.responses if k in cmd), key=len, reverse=True)
        if not keys:
            return Result(127, "", f"fake host: no canned output for: {cmd}")
        resp = self.responses[keys[0]]
        return resp(cmd) if callable(resp) else resp


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")
