"""Helpers for VM tests that drive a booted guest (a builder.verify.session.Session) over SSH."""

from __future__ import annotations

from typing import Any

from builder.verify.catalog import build_catalog
from builder.verify.core import CheckResult, run_checks


def sudo(session: Any, cmd: str, timeout: float = 90) -> str:
    """Run `cmd` as root on the guest; its stdout, or an assertion error quoting what went wrong."""
    r = session.host.sudo(cmd, timeout)
    assert r.ok, f"guest command failed: {cmd}: rc={r.rc} {r.stdout} {r.stderr}"
    return str(r.stdout)


def checks(session: Any, *ids: str) -> dict[str, CheckResult]:
    """Run the catalog checks with exactly these ids (each must exist) on the guest."""
    chosen = [c for c in build_catalog(session.model) if c.id in ids]
    assert len(chosen) == len(ids), f"unknown check id in {ids}"
    return {r.check.id: r for r in run_checks(chosen, session.context())}


def checks_prefixed(session: Any, *prefixes: str) -> dict[str, CheckResult]:
    """Run every catalog check whose id starts with one of `prefixes` (at least one must) on the guest."""
    chosen = [c for c in build_catalog(session.model) if c.id.startswith(prefixes)]
    assert chosen, f"no check id starts with {prefixes}"
    return {r.check.id: r for r in run_checks(chosen, session.context())}
