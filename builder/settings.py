"""Environment variables, read and checked in one place: a bad value is an error naming the variable."""

from __future__ import annotations

import os
from pathlib import Path

from builder.errors import BuilderError


def env_int(name: str, default: int | None = None, *, minimum: int = 0) -> int | None:
    """An integer environment variable; unset or empty gives `default`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BuilderError(f"environment variable {name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise BuilderError(f"environment variable {name}={raw!r}: expected a number >= {minimum}")
    return value


def env_float(name: str, default: float | None = None, *, minimum: float = 0.0) -> float | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BuilderError(f"environment variable {name}={raw!r}: expected a number of seconds") from None
    if not value > minimum:
        raise BuilderError(f"environment variable {name}={raw!r}: expected a number > {minimum:g}")
    return value


def env_choice(name: str, choices: tuple[str, ...]) -> str | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if raw not in choices:
        raise BuilderError(f"environment variable {name}={raw!r}: expected one of {', '.join(choices)}")
    return raw


def env_dir(name: str) -> Path | None:
    raw = os.environ.get(name, "").strip()
    return Path(raw).absolute() if raw else None


def source_date_epoch(default: int) -> int:
    """$SOURCE_DATE_EPOCH (checked), else the model's fixed value."""
    value = env_int("SOURCE_DATE_EPOCH", default)
    assert value is not None
    return value


VM_CPUS_DEFAULT = 2


def vm_cpus() -> int:
    """vCPUs of the machines builder boots itself (Packer's VM, the disk target, the stand-in):
    $BUILDER_VM_CPUS, else 2. Under TCG each vCPU is a host thread: on a small machine running
    several guests at once, 1 is faster (the test suite sets it)."""
    value = env_int("BUILDER_VM_CPUS", VM_CPUS_DEFAULT, minimum=1)
    assert value is not None
    return value


def check_environment() -> None:
    """Validate every variable builder reads, once, before any stage runs."""
    env_int("SOURCE_DATE_EPOCH")
    env_float("BUILDER_BOOT_TIMEOUT")
    env_choice("BUILDER_ACCEL", ("tcg", "kvm"))
    vm_cpus()
