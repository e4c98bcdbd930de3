"""The seed's optional features, rendered: virtualization policy and monitoring (exporters, host-health
metrics, alert rules). Pure functions of the model; the renderer merges their output into the
first-boot user-data (packages, write_files, runcmd).

Choices (seed "Virtualization Stack (Optional)"):
- Guests default to host-passthrough by policy, not by a libvirt setting: libvirt has no global default
  CPU mode (qemu.conf has none), so the QEMU hook refuses every guest whose definition is not
  `<cpu mode='host-passthrough'/>` and says what to add. virt-install/virt-manager already create
  x86 KVM guests with host-passthrough.
- The admin joins the `libvirt` group in runcmd (`usermod`), after the package created it as a system
  group: naming it in cloud-init `users[].groups` would create it first as a normal group, and
  libvirt-daemon-system's `addgroup --system libvirt` refuses an existing non-system group.
- libvirt's default NAT network (virbr0 + dnsmasq, 192.168.122.1) is destroyed and not autostarted:
  it would be a listener off the SERVERS address.
"""

from __future__ import annotations

import json
from typing import Any

import jinja2

from builder.errors import BuilderError
from builder.model import HostModel
from builder.seed.templating import environment, render_template

FILES = "cloud-init/files"
HOOK_PATH = "/etc/libvirt/hooks/qemu"
POLICY_PATH = "/etc/libvirt/hooks/prometheus-policy.json"
HEALTH_SCRIPT = "/usr/local/lib/prometheus/host-health"
HEALTH_CONFIG = "/etc/prometheus-host-health.json"
HEALTH_UNIT = "prometheus-host-health"
TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # Debian/Ubuntu node exporter's textfile directory
RULES_PATH = "/etc/prometheus/rules/prometheus-host-alerts.yml"
NODE_EXPORTER_PORT = 9100
DCGM_PORT = 9400
VIRT_PACKAGES = ("qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients")
ALERTS = ("gpu-unavailable", "nfs-mounts-unavailable", "scratch-disk-pressure")  # seed "Alerts (recommended)"
ALERT_FOR = {"gpu_for": "5m", "nfs_for": "2m", "scratch_for": "10m"}
VIRSH = "virsh --connect qemu:///system"


def _raw(env: jinja2.Environment, name: str) -> str:
    """A data file shipped verbatim (a script): read through the template loader, never rendered."""
    assert env.loader is not None
    try:
        return env.loader.get_source(env, name)[0]
    except jinja2.TemplateNotFound:
        raise BuilderError(f"template not found: {name}") from None


def _ctx(model: HostModel, ctx: dict[str, Any]) -> dict[str, Any]:
    mon = model.features.monitoring
    return {
        **ctx, "mon": mon, "virt": model.features.virtualization, "servers": model.servers, "host": model.host,
        "node_exporter_port": NODE_EXPORTER_PORT, "dcgm_port": DCGM_PORT, "textfile_dir": TEXTFILE_DIR,
        "scratch_ratio": f"{mon.scratch_usage_alert_percent / 100:g}", **ALERT_FOR,
    }


def scratch_mountpoint(model: HostModel) -> str | None:
    scratch = model.storage.scratch
    if scratch is None:
        return None
    return scratch.mountpoint or model.docker.data_root


def libvirt_policy(model: HostModel) -> dict[str, Any]:
    """What the QEMU hook enforces (written as JSON beside it)."""
    v = model.features.virtualization
    return {
        "cpu_mode": v.cpu_mode, "cpu_overcommit": v.cpu_overcommit, "memory_overcommit": v.memory_overcommit,
        "gpu_passthrough": v.gpu_passthrough, "memory_reserve_mib": v.memory_reserve_mib,
    }


def health_config(model: HostModel) -> dict[str, Any]:
    mon = model.features.monitoring
    return {
        "textfile_dir": TEXTFILE_DIR,
        "probe_timeout_seconds": mon.probe_timeout_seconds,
        "nfs_mounts": [mt.mountpoint for mt in model.nfs.mounts],
        "scratch_mountpoint": scratch_mountpoint(model),
    }


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def _health_enabled(model: HostModel) -> bool:
    mon = model.features.monitoring
    return mon.enabled and mon.node_exporter  # the metrics reach Prometheus through the textfile collector


def feature_packages(model: HostModel) -> list[str]:
    pkgs: list[str] = []
    if model.features.virtualization.enabled:
        pkgs += VIRT_PACKAGES
    if _health_enabled(model):
        pkgs.append("prometheus-node-exporter")
    return pkgs


def feature_files(model: HostModel, env: jinja2.Environment, ctx: dict[str, Any]) -> list[dict[str, str]]:
    """write_files entries: {path, mode, content}. `ctx` is the renderer's template context."""
    c = _ctx(model, ctx)
    files: list[dict[str, str]] = []
    if model.features.virtualization.enabled:
        files += [
            {"path": HOOK_PATH, "mode": "0755", "content": _raw(env, f"{FILES}/libvirt-qemu-hook.py")},
            {"path": POLICY_PATH, "mode": "0644", "content": _json(libvirt_policy(model))},
        ]
    mon = model.features.monitoring
    if _health_enabled(model):
        timeout_start = mon.probe_timeout_seconds * (len(model.nfs.mounts) + 2) + 30
        files += [
            {"path": "/etc/default/prometheus-node-exporter", "mode": "0644",
             "content": render_template(env, f"{FILES}/node-exporter.default.j2", c)},
            {"path": "/etc/systemd/system/prometheus-node-exporter.service.d/10-servers-address.conf",
             "mode": "0644", "content": render_template(env, f"{FILES}/node-exporter-servers.conf.j2", c)},
            {"path": HEALTH_SCRIPT, "mode": "0755", "content": _raw(env, f"{FILES}/host-health.py")},
            {"path": HEALTH_CONFIG, "mode": "0644", "content": _json(health_config(model))},
            {"path": f"/etc/systemd/system/{HEALTH_UNIT}.service", "mode": "0644",
             "content": render_template(env, f"{FILES}/host-health.service.j2", {**c, "timeout_start": timeout_start})},
            {"path": f"/etc/systemd/system/{HEALTH_UNIT}.timer", "mode": "0644",
             "content": render_template(env, f"{FILES}/host-health.timer.j2", c)},
        ]
    if mon.enabled and mon.dcgm_exporter:
        files.append({"path": "/etc/systemd/system/dcgm-exporter.service", "mode": "0644",
                      "content": render_template(env, f"{FILES}/dcgm-exporter.service.j2", c)})
    if mon.enabled and mon.alerts:
        files.append({"path": RULES_PATH, "mode": "0644", "content": alert_rules_text(model, env, ctx)})
    return files


def feature_runcmd(model: HostModel) -> list[list[str]]:
    """Commands for after the base runcmd's `systemctl daemon-reload` (packages are installed by then)."""
    cmds: list[list[str]] = []
    if model.features.virtualization.enabled:
        cmds += [
            ["sh", "-c", f"{VIRSH} net-destroy default 2>/dev/null || true"],
            ["sh", "-c", f"{VIRSH} net-autostart --disable default 2>/dev/null || true"],
            ["usermod", "--append", "--groups", "libvirt", model.admin.name],
            # libvirt looks for hook scripts when its daemon starts.
            ["sh", "-c", "systemctl try-restart virtqemud.service libvirtd.service || true"],
        ]
    mon = model.features.monitoring
    if _health_enabled(model):
        cmds += [
            ["systemctl", "try-restart", "prometheus-node-exporter.service"],
            ["systemctl", "enable", "--now", f"{HEALTH_UNIT}.timer"],
        ]
    if mon.enabled and mon.dcgm_exporter:
        cmds.append(["systemctl", "enable", "--now", "--no-block", "dcgm-exporter.service"])
    return cmds


def alert_rules_text(model: HostModel, env: jinja2.Environment | None = None,
                     ctx: dict[str, Any] | None = None) -> str:
    """The Prometheus rules file for the model's alerts (also for loading into an existing Prometheus)."""
    env = env or environment()
    c = _ctx(model, {"managed": "Managed by builder (prometheus host model); do not edit by hand.", **(ctx or {})})
    return render_template(env, f"{FILES}/prometheus-host-alerts.yml.j2", c)
