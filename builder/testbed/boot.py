"""Boot the STANDIN first-boot image in QEMU with the model's two NICs and a NoCloud seed.

`booted_guest()` builds the CIDATA seed ISO, a throwaway qcow2 overlay and two user-mode networks
(SERVERS: DHCP handing out the reserved address; MGMT: static). MGMT is `restrict=on`; SERVERS too
unless it uses DHCP (QEMU then withholds the router option, see nics_for). The guest is pointed only
at the harness services (guestfwd). SSH is forwarded from 127.0.0.1 to the MGMT
address, and a second forward to the SERVERS address lets a check prove SSH is refused there. It
waits (bounded) for the login prompt, cloud-init's final message and SSH, then yields GuestAccess.
QEMU and every guestfwd helper are stopped on exit, also on Ctrl-C or a failed check.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from builder import settings
from builder.errors import BuilderError
from builder.model import HostModel
from builder.qemu import Drive, Nic, RunningVm, VmSpec, start_vm
from builder.run import require_tool, run
from builder.testbed.image import StandinImage
from builder.testbed.mgmtnet import RoutedMgmt
from builder.testbed.nfs import free_port
from builder.testbed.services import GuestFwd
from builder.verify.ssh import GuestAccess, ServiceControl, wait_for_ssh

log = logging.getLogger("builder.testbed.boot")

SEED_FILES = ("user-data", "meta-data", "network-config")
# TCG on 2 cores: 1-3 min alone; measured 9-10 min with 3 other TCG guests on the machine.
DEFAULT_TIMEOUT = 900.0  # $BUILDER_BOOT_TIMEOUT overrides (read through builder.settings)
# Milestones on the serial console, in the order they normally appear.
LOGIN_RE = re.compile(r"^\S+ login: ", re.M)
# cloud-init's own line, or the rendered user-data's final_message ("... first boot finished: ...").
CLOUD_INIT_DONE_RE = re.compile(r"Cloud-init v\. \S+ finished at|first boot finished: cloud-init", re.M)
CLOUD_INIT_FAILED_RE = re.compile(r"Failed to start .*[Cc]loud-init|cloud-init.*Traceback", re.M)


def build_seed_iso(seed_dir: Path, out: Path, sde: int) -> Path:
    """NoCloud seed: an ISO 9660 volume labelled CIDATA with user-data, meta-data, network-config."""
    xorriso = require_tool("xorriso", "xorriso")
    missing = [n for n in SEED_FILES[:2] if not (seed_dir / n).is_file()]
    if missing:
        raise BuilderError(f"seed folder {seed_dir} lacks {', '.join(missing)}",
                           hint="render it with `builder render` (first-boot/) or pass a complete folder")
    names = [n for n in SEED_FILES if (seed_dir / n).is_file()]
    out.unlink(missing_ok=True)
    run([xorriso, "-as", "mkisofs", "-quiet", "-V", "CIDATA", "-J", "-r",
         "--set_all_file_dates", f"={sde}", "-o", out, *(seed_dir / n for n in names)],
        env={"SOURCE_DATE_EPOCH": str(sde)}, timeout=60)
    return out


@dataclass(frozen=True)
class NetPlan:
    """The host-side ports of one boot."""

    ssh_port: int
    servers_ssh_port: int


def nics_for(model: HostModel, ports: NetPlan, fwds: tuple[GuestFwd, ...],
             mgmt_net: RoutedMgmt | None = None) -> tuple[Nic, Nic]:
    """Two user-mode networks matching the model's SERVERS and MGMT networks (SERVERS is NIC 1);
    with `mgmt_net`, MGMT is a routed network in namespaces instead (builder.testbed.mgmtnet)."""
    srv, mgmt = model.servers, model.mgmt
    if not srv.ip or not mgmt.ip:
        raise BuilderError("the first-boot test needs the SERVERS reserved_address and the MGMT address",
                           hint="set network.interfaces.servers.reserved_address and mgmt.address")
    # QEMU's DHCP server omits the router and DNS options when restrict=on, so a DHCP-configured
    # SERVERS NIC would get no default route: that network stays unrestricted (it is the one that
    # carries the default route anyway). The guest is only ever pointed at the guestfwd services.
    srv_opts = [f"net={srv.subnet}", "restrict=off" if srv.dhcp else "restrict=on"]
    if srv.gateway:
        srv_opts.append(f"host={srv.gateway}")
    if srv.dhcp and srv.reserved_address:
        srv_opts.append(f"dhcpstart={srv.reserved_address}")
    srv_opts.append(f"hostfwd=tcp:127.0.0.1:{ports.servers_ssh_port}-{srv.ip}:{model.ssh.port}")
    srv_opts += [f.netdev_option() for f in fwds]
    if mgmt_net is not None:
        return (Nic("servers", ",".join(srv_opts), mac=srv.mac.lower()),
                Nic("mgmt", mgmt_net.netdev(), mac=mgmt.mac.lower(), backend="dgram"))
    mgmt_opts = [f"net={mgmt.subnet}", "restrict=on"]
    if mgmt.gateway:
        mgmt_opts.append(f"host={mgmt.gateway}")
    mgmt_opts.append(f"hostfwd=tcp:127.0.0.1:{ports.ssh_port}-{mgmt.ip}:{model.ssh.port}")
    return (Nic("servers", ",".join(srv_opts), mac=srv.mac.lower()),
            Nic("mgmt", ",".join(mgmt_opts), mac=mgmt.mac.lower()))


def vm_spec(model: HostModel, image: StandinImage, overlay: Path, seed_iso: Path, serial_log: Path,
            nics: tuple[Nic, ...], memory_mb: int = 1536) -> VmSpec:
    return VmSpec(
        name=f"firstboot-{model.host.hostname}",
        serial_log=serial_log,
        memory_mb=memory_mb,
        cpus=settings.vm_cpus(),
        drives=(Drive(overlay, kind="virtio", fmt="qcow2"), Drive(seed_iso, kind="virtio", readonly=True)),
        nics=nics,
        kernel=image.kernel,
        initrd=image.initrd,
        append=image.append,
    )


def make_overlay(image: StandinImage, overlay: Path) -> Path:
    qemu_img = require_tool("qemu-img", "qemu-utils")
    overlay.unlink(missing_ok=True)
    run([qemu_img, "create", "-q", "-f", "qcow2", "-b", image.disk.resolve(), "-F", "raw", overlay])
    return overlay


def wait_milestones(vm: RunningVm, timeout: float, started: float) -> dict[str, float]:
    """Follow the serial console (pexpect) until cloud-init is done; seconds since start per milestone."""
    timings: dict[str, float] = {}
    while "cloud_init_done" not in timings:
        try:
            idx = vm.expect_console([LOGIN_RE, CLOUD_INIT_DONE_RE], started + timeout - time.monotonic())
        except BuilderError as exc:
            raise BuilderError(f"cloud-init did not finish within {timeout:.0f}s (milestones so far: {timings}): "
                               f"{exc.message}", hint=exc.hint) from None
        timings.setdefault("boot_to_login" if idx == 0 else "cloud_init_done", round(time.monotonic() - started, 1))
    return timings


class GuestPower:
    """The running stand-in's power switch: `reboot()` powers it off cleanly (`systemctl poweroff`
    over SSH; QEMU runs with -no-reboot, so it exits) and boots it again on the same overlay disk,
    seed, NICs, forwarded ports and harness services. A later boot runs no first-boot commands
    (cloud-init's per-instance modules are done), so what it shows is what persists."""

    def __init__(self, spec: VmSpec, workdir: Path, stack: contextlib.ExitStack, access: GuestAccess,
                 guestfwds: tuple[GuestFwd, ...], timeout: float) -> None:
        self.spec, self.workdir, self.stack = spec, workdir, stack
        self.access = access
        self.guestfwds = guestfwds
        self.timeout = timeout
        self.boot = 1  # the number of the boot the guest is in now

    def poweroff(self, timeout: float = 240.0) -> float:
        """Sync and power off through systemd; wait (bounded) for QEMU to exit; seconds taken."""
        from builder.verify.ssh import ssh_run

        vm: RunningVm = self.access.vm
        t0 = time.monotonic()
        # The SSH session dies with the guest: its exit status is not the poweroff's.
        ssh_run(self.access, "sync && sudo -n systemctl poweroff", timeout=30)
        try:
            vm.wait(timeout)
        finally:
            vm.stop()
            for fwd in self.guestfwds:
                fwd.reap_helpers()
        return round(time.monotonic() - t0, 1)

    def reboot(self) -> GuestAccess:
        """Power off, boot again; wait until the guest is up (`wait_up`); the new GuestAccess."""
        down = self.poweroff()
        self.boot += 1
        spec = replace(self.spec, serial_log=self.workdir / f"serial-boot{self.boot}.log")
        spec.serial_log.unlink(missing_ok=True)
        vm = self.stack.enter_context(start_vm(spec, self.workdir))
        started = time.monotonic()
        access = replace(self.access, serial_log=spec.serial_log, timings={"poweroff": down}, vm=vm)
        access.timings.update(self.wait_up(vm, access, started))
        log.info("guest up again (boot %d): %s", self.boot, access.timings)
        self.access = access
        return access

    def wait_up(self, vm: RunningVm, access: GuestAccess, started: float) -> dict[str, float]:
        """The stand-in's console shows cloud-init's final message (direct kernel boot with a serial
        console); then SSH. Seconds since `started` per milestone."""
        timings = wait_milestones(vm, self.timeout, started)
        wait_for_ssh(access, timeout=min(max(30.0, self.timeout - (time.monotonic() - started)), 180.0))
        timings["ssh_ready"] = round(time.monotonic() - started, 1)
        return timings


@contextlib.contextmanager
def booted_guest(
    model: HostModel,
    seed_dir: Path,
    image: StandinImage,
    workdir: Path,
    *,
    identity_file: Path,
    guestfwds: tuple[GuestFwd, ...] = (),
    nfs: ServiceControl | None = None,
    timeout: float | None = None,
    keep: bool = False,
    mgmt_net: RoutedMgmt | None = None,
) -> Iterator[GuestAccess]:
    """Boot, wait for cloud-init and SSH (as the model's admin user over MGMT), yield GuestAccess.

    `access.power` (a GuestPower) boots the same machine again: `access.power.reboot()`.
    `mgmt_net`: MGMT is a routed network (mgmtnet.routed_mgmt); SSH goes from its router namespace."""
    if timeout is None:
        timeout = settings.env_float("BUILDER_BOOT_TIMEOUT", DEFAULT_TIMEOUT)
        assert timeout is not None
    workdir.mkdir(parents=True, exist_ok=True)
    sde = model.host.source_date_epoch
    seed_iso = build_seed_iso(seed_dir, workdir / "seed-cidata.iso", sde)
    overlay = make_overlay(image, workdir / "overlay.qcow2")
    serial_log = workdir / "serial.log"
    serial_log.unlink(missing_ok=True)
    ports = NetPlan(free_port(), free_port())
    spec = vm_spec(model, image, overlay, seed_iso, serial_log, nics_for(model, ports, guestfwds, mgmt_net))
    # With a routed MGMT there is no forward: SSH goes to the MGMT address from the router namespace.
    ssh_at = (model.mgmt.ip, model.ssh.port, mgmt_net.proxy_command()) if mgmt_net and model.mgmt.ip else \
        ("127.0.0.1", ports.ssh_port, None)
    try:
        with contextlib.ExitStack() as stack:
            vm = stack.enter_context(start_vm(spec, workdir))
            started = time.monotonic()
            timings = wait_milestones(vm, timeout, started)
            access = GuestAccess(
                ssh_host=ssh_at[0], ssh_port=ssh_at[1], servers_ssh_port=ports.servers_ssh_port,
                user=model.admin.name, identity_file=identity_file, serial_log=serial_log,
                timings=timings, nfs=nfs, vm=vm, proxy_command=ssh_at[2],
            )
            remaining = max(30.0, timeout - (time.monotonic() - started))
            wait_for_ssh(access, timeout=min(remaining, 180.0))
            timings["ssh_ready"] = round(time.monotonic() - started, 1)
            log.info("guest ready: %s", timings)
            power = GuestPower(spec, workdir, stack, access, guestfwds, timeout)
            access = replace(access, power=power)
            power.access = access
            yield access
    finally:
        for fwd in guestfwds:
            fwd.reap_helpers()
        overlay.unlink(missing_ok=True)
        if not keep:
            seed_iso.unlink(missing_ok=True)


def copy_serial_log(access: GuestAccess, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(access.serial_log, dest)
    return dest
