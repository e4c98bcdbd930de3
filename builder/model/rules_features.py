"""Model rules for the seed's optional features and its fixed policy (release, install source, mount table).

Every message cites the seed line it comes from, so a refused model says which promise it breaks.
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING

from builder.model.typedparse import Collector

if TYPE_CHECKING:
    from builder.model.schema import HostModel

ALERTS = ("gpu-unavailable", "nfs-mounts-unavailable", "scratch-disk-pressure")
SEED_ALERTS = 'seed: "Alerts (recommended): GPU unavailable, NFS mounts unavailable, Disk pressure on local scratch"'
CPU_MODES = ("host-passthrough",)
LTS_RE = re.compile(r"^(\d{2})\.04$")

# The seed's "Storage Layout" table: share below the NFS root -> (access, severity if different, seed row).
SEED_MOUNTS: dict[str, tuple[str, str, str]] = {
    "appdata": ("rw", "error", '"/mnt/atlas/appdata | Container runtime state (RW) | Durable, stored on Atlas"'),
    "datasets": ("rw", "warning", '"/mnt/atlas/datasets | Compute datasets (RW as needed)"'),
    "managed-media": ("ro", "error", '"/mnt/atlas/managed-media | Media libraries (RO) | Authoritative"'),
    "shared-media": ("ro", "error", '"/mnt/atlas/shared-media | Family media (RO) | Not service-owned"'),
}


def check_features(m: HostModel, c: Collector) -> None:
    _virtualization(m, c)
    _monitoring(m, c)


def check_seed_policy(m: HostModel, c: Collector) -> None:
    _release(m, c)
    _mount_table(m, c)
    _docker_on_scratch(m, c)


SEED_DOCKER_ROW = '"/var/lib/docker | Container images/layers | Disposable" on "Local Scratch / NVMe"'


def _docker_on_scratch(m: HostModel, c: Collector) -> None:
    """Docker's data root (and containerd's root, `<scratch>/containerd-root`, builder.seed.hostconfig) must
    be on the scratch disk: the scratch mountpoint or below it. Else images and layers fill the OS disk."""
    scratch = m.storage.scratch
    if scratch is None or not scratch.mountpoint:
        return  # no scratch disk, or one mounted at the data root itself
    mp = posixpath.normpath(scratch.mountpoint)
    root = posixpath.normpath(m.docker.data_root) if m.docker.data_root else ""
    if not root.startswith("/") or (root != mp and not root.startswith(mp.rstrip("/") + "/")):
        c.add(("docker", "data_root"),
              f"expected the scratch mountpoint {mp} or a folder below it, found {m.docker.data_root!r}: images and "
              f"layers (Docker's data root, and containerd's root {mp.rstrip('/')}/containerd-root) belong on the "
              f"scratch disk, not the OS disk (seed: {SEED_DOCKER_ROW})")


def _virtualization(m: HostModel, c: Collector) -> None:
    v = m.features.virtualization
    base = ("features", "virtualization")
    if v.cpu_mode not in CPU_MODES:
        c.add((*base, "cpu_mode"), f"expected 'host-passthrough', found {v.cpu_mode!r} "
                                   '(seed: "CPU mode: host-passthrough")')
    if v.cpu_overcommit:
        c.add((*base, "cpu_overcommit"), 'expected false (seed: "CPU overcommit: disabled")')
    if v.memory_overcommit:
        c.add((*base, "memory_overcommit"), 'expected false (seed: "Memory overcommit: disabled")')
    if v.memory_reserve_mib < 0:
        c.add((*base, "memory_reserve_mib"),
              f"expected the MiB of host memory kept from guests (>= 0), found {v.memory_reserve_mib} "
              '(seed: "Memory overcommit: disabled")')
    if v.enabled and v.gpu_passthrough:
        c.add((*base, "gpu_passthrough"),
              "guests may take PCI devices (the GPU) away from the host and its containers "
              '(seed: "GPU passthrough: not default (container GPU runtime preferred)")', "warning")


def _monitoring(m: HostModel, c: Collector) -> None:
    mon = m.features.monitoring
    base = ("features", "monitoring")
    seen: set[str] = set()
    for n, name in enumerate(mon.alerts):
        if name not in ALERTS:
            c.add((*base, "alerts", n), f"unknown alert {name!r}; expected one of {', '.join(ALERTS)} ({SEED_ALERTS})")
        elif name in seen:
            c.add((*base, "alerts", n), f"alert {name!r} is listed twice")
        seen.add(name)
    if mon.dcgm_exporter:
        if not mon.enabled:
            c.add((*base, "dcgm_exporter"),
                  "the DCGM exporter is part of the monitoring stack: set features.monitoring.enabled true "
                  '(seed: "Host Metrics: ... (when monitoring stack is enabled)", "Optional DCGM exporter")')
        if not m.nvidia.container_toolkit.enabled:
            c.add((*base, "dcgm_exporter"),
                  "NVIDIA's DCGM exporter runs as a container with the NVIDIA runtime: enable "
                  'nvidia.container_toolkit (seed: "NVIDIA driver + NVIDIA Container Toolkit", '
                  '"Optional DCGM exporter")')
        image = mon.dcgm_exporter_image
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if not tag or tag == "latest":
            c.add((*base, "dcgm_exporter_image"),
                  f"expected an image with a pinned tag like nvcr.io/nvidia/k8s/dcgm-exporter:3.3.5-3.4.1-ubuntu22.04, "
                  f'found {image!r} (seed: "Prometheus is rebuilt using documented procedures")')
    if mon.enabled and mon.alerts and not mon.node_exporter:
        c.add((*base, "node_exporter"),
              "the alerts read host-health metrics served by node exporter's textfile collector: expected true "
              f"({SEED_ALERTS})")
    if "scratch-disk-pressure" in mon.alerts and mon.enabled and m.storage.scratch is None:
        c.add((*base, "alerts", mon.alerts.index("scratch-disk-pressure")),
              'scratch-disk-pressure needs storage.scratch (seed: "Local Scratch / NVMe: Disposable caches only")')
    if not 1 <= mon.scratch_usage_alert_percent <= 99:
        c.add((*base, "scratch_usage_alert_percent"),
              f"expected a percentage from 1 to 99, found {mon.scratch_usage_alert_percent} "
              '(seed: "Disk pressure on local scratch")')
    if not 10 <= mon.health_interval_seconds <= 3600:
        c.add((*base, "health_interval_seconds"),
              f"expected 10 to 3600 seconds, found {mon.health_interval_seconds} (seed: \"Alerts (recommended)\")")
    if not 1 <= mon.probe_timeout_seconds < mon.health_interval_seconds:
        c.add((*base, "probe_timeout_seconds"),
              f"expected at least 1 and less than health_interval_seconds, found {mon.probe_timeout_seconds} "
              '(seed: "NFS mounts unavailable": a mount slower than this counts as down)')


def _release(m: HostModel, c: Collector) -> None:
    match = LTS_RE.match(m.os.release)
    if not match or int(match.group(1)) % 2:
        c.add(("os", "release"), f"expected an Ubuntu LTS release (an even year .04, like 24.04), "
                                 f'found {m.os.release!r} (seed: "OS: Ubuntu Server (LTS)")')
    if m.os.install_source != "ubuntu-server-minimal":
        c.add(("os", "install_source"), f"expected 'ubuntu-server-minimal', found {m.os.install_source!r} "
                                        '(seed: "Installation Type: Minimal (no desktop)")')


def _mount_table(m: HostModel, c: Collector) -> None:
    root = m.nfs.root.rstrip("/") or "/"
    by_point = {mt.mountpoint.rstrip("/"): n for n, mt in enumerate(m.nfs.mounts)}
    for share, (access, severity, seed_row) in SEED_MOUNTS.items():
        point = f"{root}/{share}"
        n = by_point.get(point)
        if n is None:
            c.add(("nfs", "mounts"), f"the seed's mount {point} is missing (seed: {seed_row})")
            continue
        mt = m.nfs.mounts[n]
        if mt.access != access:
            c.add(("nfs", "mounts", n, "access"), f"expected {access!r} for {point}, found {mt.access!r} "
                                                  f"(seed: {seed_row})", severity)
    n = by_point.get(root)
    if n is not None and m.nfs.mounts[n].access == "rw":
        c.add(("nfs", "mounts", n, "access"),
              f"the whole of Atlas is mounted read-write at {root}; the seed gives write access per share only "
              '(seed: "Least-privilege mounts (RO/RW intent enforced via NFS)")', "warning")
