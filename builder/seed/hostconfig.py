"""Host configuration that must hold on the first boot *and* every boot after it.

render.py asks this module for netplan extras, write_files entries, bootcmd/runcmd steps and the
installer's late/error commands. Every decision below is written down here because the stand-in
test bed cannot show most of it (see ../shared/UBUNTU-FACTS.md).

Network
  * MGMT gets source policy routing: `from <MGMT ip>` -> table `1000 + VLAN` (never one of the
    reserved tables 253-255), which holds the on-link MGMT subnet and a default via the MGMT
    gateway. Replies to admin hosts on other subnets leave through MGMT; the main table keeps its
    single default route via SERVERS.
  * MGMT is always `optional: true`: nothing at boot needs MGMT (sshd binds it with FreeBind /
    ip_nonlocal_bind), so a MGMT port without carrier must not hold netplan's wait-online for
    120 s. With MGMT optional, "online" means SERVERS (the only non-optional NIC). No model field:
    there is no configuration of this host in which boot should wait for the admin VLAN.
  * DHCP NICs send their MAC as client identifier (`dhcp-identifier: mac`) so a MAC-keyed
    reservation applies (networkd sends a DUID otherwise).
  * What needs SERVERS waits for SERVERS itself, not for network-online (netplan >= 1.1 reaches it
    as soon as *any* NIC is routable): remote-fs-pre.target, docker.service and the Atlas unit
    want and are ordered after `systemd-networkd-wait-online@<srv>:routable.service`, and
    `net.ipv4.ip_nonlocal_bind=1` lets sshd/dockerd bind addresses that are not up yet.

NFS (Atlas)
  The fstab entries (still written by cloud-init's `mounts:`, so `findmnt --fstab` shows them)
  carry `noauto` and `x-systemd.mount-timeout=30s`: cc_mounts' `mount -a` in the init stage skips
  them, so the first boot never blocks before users and SSH settings exist, and no mount attempt
  can last longer than the timeout. They are mounted by
  * docker.service's `RequiresMountsFor=` (the RW shares Docker writes to): when Atlas is down
    Docker fails its dependency and never writes to the local disk;
  * `prometheus-atlas.service` (enabled, Type=simple, so it never delays boot): `systemctl start`
    of every share and docker.service, repeated every 30 s until it succeeds; mounts and Docker
    come up by themselves once Atlas answers, at first boot and at every boot;
  * one bounded attempt in runcmd on the first boot, so a healthy first boot ends with everything
    mounted and Docker running.
  Automount (`x-systemd.automount`) was not chosen: the shares nest under the RO root share, so
  every child automount would need the parent mounted at boot anyway, and a failed automount
  returns errors to whoever touches the path instead of retrying on its own.

SSH
  `ssh.socket.d/10-prometheus-listen.conf` (ListenStream reset, `<MGMT>:<port>`, FreeBind) is
  written by the installer's late-commands, so on Ubuntu (socket activation) the socket listens on
  MGMT only from its very first start and its address set never changes afterwards (sshd's
  socket generator derives the same address from ListenAddress). The same file is in write_files
  for systems installed without the autoinstall (the stand-in). Where sshd runs from ssh.service
  (Debian), `ip_nonlocal_bind=1` makes the bind succeed before MGMT is up, and a drop-in clears
  `RestartPreventExitStatus=255` so sshd is restarted rather than left dead. The old first-boot
  "restart ssh / ssh.socket" step is gone: restarting ssh.socket was what changed its address
  set. A `try-reload-or-restart ssh.service` remains for ssh.service systems, whose listener may
  have started before cloud-init wrote the hardening drop-in; with socket activation it is a
  no-op until the first connection and harmless after it (SIGHUP re-reads the same config).

Listeners
  rpcbind (pulled in by nfs-common) is masked: at install time (late-commands), in bootcmd (before
  the first-boot package stage can start it) and with `mask --now` in runcmd. NFSv4 clients need no
  rpcbind; only rpc.statd (NFSv3 locking) does, and it is never started for vers=4.x mounts.

Docker storage
  containerd's root moves onto the scratch disk (`/etc/containerd/config.toml`, root =
  `<scratch>/containerd-root`): with Docker >= 29 images live in containerd's store, with older
  Docker in data-root; both are then on the scratch disk whatever the backend. Turning the
  containerd snapshotter off would keep the legacy graph-driver path alive only until Docker drops
  it, and pinning Docker < 29 would freeze the runtime. cloud-init installs packages with
  `--force-confold`, so the file written before the package stays. The `docker` group is created
  in bootcmd with a fixed GID (`docker.group_gid`, default 2375: above the system range that
  package postinsts and systemd-sysusers allocate from the top down, 999 and below, and far above
  where useradd starts, 1000), so files and sockets keep their group across rebuilds.

Install end
  `shutdown: poweroff` (a reboot could boot the stick/PXE again and reinstall), a success marker as
  the last late-command and a failure marker from error-commands, both on the console and ttyS0.
  The installer's console arguments are carried into GRUB by curtin (get_carryover_params writes
  them to GRUB_CMDLINE_LINUX_DEFAULT in /etc/default/grub); late-commands override that with
  `/etc/default/grub.d/99-prometheus-cmdline.cfg` (sourced after it) holding only what the model
  asks for (`os.host_serial_console`, e.g. the BMC's SOL port), then run update-grub in the target.
"""

from __future__ import annotations

import base64
import re
import shlex
from typing import Any

from builder.errors import BuilderError
from builder.seed.templating import render_template

MGMT_TABLE_BASE = 1000
NFS_MOUNT_TIMEOUT = 30  # seconds one mount attempt may take
ATLAS_RETRY_SECONDS = 30
ATLAS_UNIT = "prometheus-atlas.service"
INSTALL_OK_MARKER = "PROMETHEUS-INSTALL-OK"
INSTALL_FAILED_MARKER = "PROMETHEUS-INSTALL-FAILED"
SSH_SOCKET_DROPIN = "/etc/systemd/system/ssh.socket.d/10-prometheus-listen.conf"
SSH_SERVICE_DROPIN = "/etc/systemd/system/ssh.service.d/10-prometheus-restart.conf"
SYSCTL_FILE = "/etc/sysctl.d/60-prometheus-nonlocal-bind.conf"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"
GRUB_DROPIN = "/etc/default/grub.d/99-prometheus-cmdline.cfg"
MASKED_UNITS = ("rpcbind.socket", "rpcbind.service")
SERIAL_CONSOLE_RE = re.compile(r"^ttyS(\d+)(?:,(\d+)(?:[noe][5-8])?)?$")
INSTALLER_LOGS = ("/var/log/installer/subiquity-server-debug.log", "/var/log/installer/curtin-install.log")


def mgmt_route_table(model: Any) -> int:
    """The routing table that holds MGMT's own routes (1000 + MGMT VLAN id)."""
    return MGMT_TABLE_BASE + int(model.mgmt.vlan)


def servers_wait_unit(model: Any) -> str:
    """networkd's per-interface wait-online instance for the SERVERS NIC."""
    return f"systemd-networkd-wait-online@{model.servers.name}:routable.service"


def netplan_extras(role: str, nic: Any, model: Any) -> dict[str, Any]:
    """Keys to merge into one NIC's netplan layer-3 settings (see the module docstring)."""
    out: dict[str, Any] = {}
    if nic.dhcp:
        out["dhcp-identifier"] = "mac"
    if nic.purpose == "management":
        out["optional"] = True
        if nic.gateway and nic.ip:
            table = mgmt_route_table(model)
            out["routes"] = [
                {"to": nic.subnet, "scope": "link", "table": table},
                {"to": "default", "via": nic.gateway, "table": table},
            ]
            out["routing-policy"] = [{"from": f"{nic.ip}/32", "table": table}]
    return out


def nfs_mount_options() -> list[str]:
    """Options added to every Atlas fstab line: mounted on demand only, each attempt bounded."""
    return ["noauto", f"x-systemd.mount-timeout={NFS_MOUNT_TIMEOUT}s"]


def scratch_mountpoint(model: Any) -> str | None:
    s = model.storage.scratch
    if s is None:
        return None
    return s.mountpoint or model.docker.data_root


def containerd_root(model: Any) -> str | None:
    mp = scratch_mountpoint(model)
    return f"{mp.rstrip('/')}/containerd-root" if mp else None


def kernel_metapackages(kernel_package: str) -> tuple[str, ...]:
    """The metapackages that move the kernel: linux-generic -> itself, linux-image-generic, linux-headers-generic."""
    if not kernel_package.startswith("linux-") or kernel_package.startswith(("linux-image-", "linux-headers-")):
        return (kernel_package,)
    flavour = kernel_package[len("linux-"):]
    return (kernel_package, f"linux-image-{flavour}", f"linux-headers-{flavour}")


def serial_console(model: Any) -> tuple[str, int, int] | None:
    """(device, unit, speed) of the host's own serial console, or None."""
    value = getattr(model.os, "host_serial_console", None)
    if not value:
        return None
    m = SERIAL_CONSOLE_RE.match(value)
    if not m:
        raise BuilderError(f"os.host_serial_console: expected like 'ttyS1,115200n8', found {value!r}")
    return value, int(m.group(1)), int(m.group(2) or 9600)


def host_kernel_cmdline(model: Any) -> list[str]:
    """GRUB_CMDLINE_LINUX_DEFAULT of the installed host: no installer console unless the model asks."""
    sc = serial_console(model)
    return ["console=tty0", f"console={sc[0]}"] if sc else []


def _atlas_paths(model: Any) -> list[str]:
    return [m.mountpoint for m in model.nfs.mounts]


def _ctx(model: Any, ctx: dict[str, Any]) -> dict[str, Any]:
    sc = serial_console(model)
    return {
        **ctx,
        "srv_wait_unit": servers_wait_unit(model),
        "atlas_paths": _atlas_paths(model),
        "atlas_retry": ATLAS_RETRY_SECONDS,
        "containerd_root": containerd_root(model),
        "grub_cmdline": " ".join(host_kernel_cmdline(model)),
        "serial": sc,
    }


def files(model: Any, env: Any, ctx: dict[str, Any]) -> list[dict[str, str]]:
    """write_files entries owned by this module (path, mode, content)."""
    c = _ctx(model, ctx)

    def t(name: str) -> str:
        return render_template(env, f"cloud-init/files/{name}", c)

    out = [
        {"path": SYSCTL_FILE, "mode": "0644", "content": t("sysctl-nonlocal-bind.conf.j2")},
        {"path": SSH_SOCKET_DROPIN, "mode": "0644", "content": t("ssh-socket-listen.conf.j2")},
        {"path": SSH_SERVICE_DROPIN, "mode": "0644", "content": t("ssh-service-restart.conf.j2")},
        {"path": "/etc/systemd/system/remote-fs-pre.target.d/10-prometheus-servers-online.conf", "mode": "0644",
         "content": t("servers-online.conf.j2")},
        {"path": "/etc/systemd/system/docker.service.d/20-prometheus-servers-online.conf", "mode": "0644",
         "content": t("servers-online.conf.j2")},
        {"path": f"/etc/systemd/system/{ATLAS_UNIT}", "mode": "0644", "content": t("prometheus-atlas.service.j2")},
    ]
    if c["containerd_root"]:
        out.append({"path": CONTAINERD_CONFIG, "mode": "0644", "content": t("containerd-config.toml.j2")})
    return out


def bootcmd(model: Any) -> list[list[str]]:
    """Every boot, before users and packages: docker group with its fixed GID, nonlocal bind, rpcbind masked."""
    gid = int(model.docker.group_gid)
    masks = " && ".join(f"ln -sfn /dev/null /etc/systemd/system/{u}" for u in MASKED_UNITS)
    return [
        ["sh", "-c", f"getent group docker >/dev/null || groupadd --gid {gid} docker"],
        ["sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1"],
        ["sh", "-c", masks],
    ]


def kernel_hold_command(model: Any) -> list[str]:
    """Hold the installed kernel metapackages (with the driver): a new kernel ABI only with a validated driver."""
    names = " ".join(shlex.quote(p) for p in kernel_metapackages(model.os.kernel_package))
    return ["sh", "-c", f"for p in {names}; do if dpkg-query -W -f='${{Status}}' \"$p\" 2>/dev/null "
                        f"| grep -q 'ok installed'; then apt-mark hold \"$p\"; fi; done"]


def runcmd(model: Any) -> list[list[str]]:
    """First-boot steps after the package stage (run after `systemctl daemon-reload`)."""
    start = " ".join(shlex.quote(p) for p in _atlas_paths(model))
    cmds: list[list[str]] = [
        ["systemctl", "mask", "--now", *MASKED_UNITS],
        # One bounded attempt now (each mount gives up after NFS_MOUNT_TIMEOUT), then the unit retries.
        ["sh", "-c", f"systemctl start {start} docker.service || true"],
        ["systemctl", "enable", "--now", "--no-block", ATLAS_UNIT],
        ["systemctl", "try-reload-or-restart", "ssh.service"],
    ]
    if model.nvidia.driver.hold:
        cmds.insert(0, kernel_hold_command(model))
    return cmds


def _install_file(path: str, content: str, mode: str = "0644") -> list[str]:
    b64 = base64.b64encode(content.encode()).decode()
    target = shlex.quote("/target" + path)
    return ["sh", "-c", f"mkdir -p \"$(dirname {target})\" && echo {b64} | base64 -d > {target} "
                        f"&& chmod {mode} {target}"]


def _console(lines: str) -> list[str]:
    """Print to the console and the first serial port (each may be absent: never fail)."""
    return ["sh", "-c", f"for t in /dev/console /dev/ttyS0; do {{ {lines}; }} > \"$t\" 2>/dev/null || true; done"]


def late_commands(model: Any, env: Any, ctx: dict[str, Any], first_boot_files: list[dict[str, str]]) -> list[Any]:
    """Installer late-commands: boot-critical files into the target, GRUB cmdline, success marker (last)."""
    wanted = {SSH_SOCKET_DROPIN, SSH_SERVICE_DROPIN, SYSCTL_FILE}
    cmds: list[Any] = [_install_file(f["path"], f["content"], f["mode"]) for f in first_boot_files
                       if f["path"] in wanted]
    cmds.append(["sh", "-c", " && ".join(f"ln -sfn /dev/null /target/etc/systemd/system/{u}" for u in MASKED_UNITS)])
    grub = render_template(env, "autoinstall/files/grub-cmdline.cfg.j2", _ctx(model, ctx))
    cmds.append(_install_file(GRUB_DROPIN, grub))
    cmds.append(["curtin", "in-target", "--target=/target", "--", "update-grub"])
    cmds.append(_console(f"echo {INSTALL_OK_MARKER} {shlex.quote(model.host.hostname)}"))
    return cmds


def error_commands(model: Any) -> list[Any]:
    """Installer error-commands: the installer's last log lines, then the failure marker."""
    logs = " ".join(INSTALLER_LOGS)
    return [_console(f"tail -n 25 {logs} 2>/dev/null; echo {INSTALL_FAILED_MARKER} {shlex.quote(model.host.hostname)}")]
