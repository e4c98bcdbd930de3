"""What `builder verify` checks: a target kind and how it is reached.

Three kinds, one catalog:
- `standin`: the Debian stand-in image booted in QEMU with the model's first-boot seed (the default);
- `disk`: a built disk image (Packer output, qcow2 or raw) booted in QEMU by its own firmware;
- `ssh`: a live host reached over SSH as the admin (`ssh://user@host[:port]`), no QEMU.

Checks declare the kinds they cannot judge (`Check.not_on`), e.g. the GPU inside QEMU.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from builder.errors import BuilderError

TargetKind = Literal["standin", "disk", "ssh"]
KINDS: tuple[TargetKind, ...] = ("standin", "disk", "ssh")
QEMU_KINDS: tuple[TargetKind, ...] = ("standin", "disk")
IMAGE_SUFFIXES = (".qcow2", ".raw", ".img")
FORMS = "standin, disk:PATH (or a path to a .qcow2/.raw/.img file), ssh://user@host[:port]"


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    description: str  # for people: what is checked
    path: Path | None = None  # disk: the image file
    sha256: str | None = None  # disk: digest of the booted image (filled when it is booted)
    user: str | None = None  # ssh: login user (None: the model's admin)
    host: str | None = None  # ssh
    port: int = 22  # ssh

    @property
    def in_qemu(self) -> bool:
        return self.kind in QEMU_KINDS

    @property
    def address(self) -> str:
        """user@host:port for an ssh target ('' otherwise)."""
        return _address(self.user, self.host or "", self.port) if self.kind == "ssh" else ""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "description": self.description}
        if self.kind == "disk":
            data["path"] = str(self.path)
            data["sha256"] = self.sha256
        if self.kind == "ssh":
            data.update(user=self.user, host=self.host, port=self.port)
        return data


STANDIN = Target("standin", "QEMU stand-in (Debian image booted with the model's first-boot seed)")


def disk_target(path: Path, sha256: str | None = None) -> Target:
    return Target("disk", f"built disk image {path} booted in QEMU by its firmware", path=Path(path), sha256=sha256)


def _address(user: str | None, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{user + '@' if user else ''}{shown}:{port}"


def ssh_target(host: str, port: int = 22, user: str | None = None) -> Target:
    desc = f"live host {_address(user, host, port)} over SSH (no QEMU)"
    return Target("ssh", desc, user=user, host=host, port=port)


def parse_target(text: str) -> Target:
    """`standin` | `disk:PATH` | PATH of an image file | `ssh://[user@]host[:port]`."""
    raw = (text or "").strip()
    if raw in ("standin", "stand-in"):
        return STANDIN
    if raw.startswith("disk:"):
        path = raw[len("disk:"):]
        if not path:
            raise BuilderError("--target disk: needs a path, e.g. disk:output/prometheus.qcow2", hint=FORMS)
        return disk_target(Path(path))
    if raw.startswith("ssh:"):
        return _parse_ssh(raw)
    if "://" in raw:
        raise BuilderError(f"unknown target scheme in {raw!r}", hint=f"targets: {FORMS}")
    if raw and (raw.endswith(IMAGE_SUFFIXES) or Path(raw).is_file()):
        return disk_target(Path(raw))
    raise BuilderError(f"unknown target {raw!r}", hint=f"targets: {FORMS}")


def _parse_ssh(raw: str) -> Target:
    bad = f"bad SSH target {raw!r}: expected ssh://user@host[:port]"
    if not raw.startswith("ssh://"):
        raise BuilderError(bad)
    try:
        u = urllib.parse.urlsplit(raw)
        port = u.port  # raises ValueError when not a number or out of range
    except ValueError as exc:
        raise BuilderError(f"{bad} ({exc})") from None
    if not u.hostname:
        raise BuilderError(f"{bad} (no host)")
    if u.path not in ("", "/") or u.query or u.fragment or u.password is not None:
        raise BuilderError(f"{bad} (no path, query or password allowed)")
    if port == 0:
        raise BuilderError(f"{bad} (port 0)")
    user = urllib.parse.unquote(u.username) if u.username else None
    return ssh_target(u.hostname, port or 22, user)


def not_on(kinds: tuple[TargetKind, ...], reason: str) -> tuple[tuple[TargetKind, str], ...]:
    """The `Check.not_on` declaration: the check is not applicable on `kinds`, because `reason`."""
    return tuple((k, reason) for k in kinds)


NO_GPU_IN_QEMU = not_on(QEMU_KINDS, "no GPU inside QEMU: the GPU is judged on the live host (--target ssh://...)")
