"""The verification catalog: every check for a host model, in the order they run."""

from __future__ import annotations

from builder.model import HostModel
from builder.verify.checks_docker import docker_checks
from builder.verify.checks_features import feature_checks
from builder.verify.checks_health import health_checks
from builder.verify.checks_hostconfig import hostconfig_checks
from builder.verify.checks_network import network_checks
from builder.verify.checks_nfs import nfs_checks
from builder.verify.checks_nvidia import nvidia_checks
from builder.verify.checks_ssh import ssh_checks
from builder.verify.checks_system import system_checks
from builder.verify.core import Check


def build_catalog(model: HostModel) -> list[Check]:
    checks = [
        *system_checks(model),
        *ssh_checks(model),
        *network_checks(model),
        *nfs_checks(model),
        *docker_checks(model),
        *nvidia_checks(model),
        *hostconfig_checks(model),
        *health_checks(model),
        *feature_checks(model),
    ]
    ids = [c.id for c in checks]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"duplicate check ids: {sorted(dup)}")
    return checks


def select(checks: list[Check], patterns: list[str] | None) -> list[Check]:
    """Keep checks whose id starts with any pattern (all when no patterns)."""
    if not patterns:
        return checks
    return [c for c in checks if any(c.id.startswith(p) for p in patterns)]
