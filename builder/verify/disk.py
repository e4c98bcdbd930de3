"""Verify a built disk image (`builder verify --target disk:PATH --identity KEY`; the verify stage of a build).

The disk (Packer's output, qcow2 or raw) is booted as built: by its own firmware (the model's
`host.firmware`: OVMF or SeaBIOS, no -kernel), on a copy-on-write overlay so the artifact stays
untouched, on the bus the model names with the model's serial, beside its scratch disk (Packer's
`<name>-1`), with the model's NICs, MACs and subnets and the harness services (signed APT
repositories, the Atlas NFS stand-in) at `service_address(model)` inside SERVERS. Nothing is
injected: the login is the admin with `--identity`, whose public half the model (as the disk was
built from it) must list. Then the catalog runs over SSH as on every target; the report names the
disk and its SHA-256. A disk that does not come up is an error with the serial log's last lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from builder import settings
from builder.errors import BuilderError
from builder.model import HostModel
from builder.qemu import VmSpec, start_vm
from builder.run import require_tool, run
from builder.store import sha256_file
from builder.verify.catalog import build_catalog, select
from builder.verify.core import CheckResult, Context, Endpoints, run_checks
from builder.verify.host import SshHost
from builder.verify.report import Report
from builder.verify.ssh import GuestAccess
from builder.verify.targets import Target, disk_target

log = logging.getLogger("builder.verify.disk")

DEFAULT_TIMEOUT = 900.0  # firmware + first boot (cloud-init's packages from the harness repositories) under TCG
SERIAL_TAIL = 25


@dataclass(frozen=True)
class DiskImages:
    os_disk: Path
    os_format: str
    scratch: Path | None
    scratch_format: str | None


def image_format(path: Path) -> str:
    qemu_img = require_tool("qemu-img", "qemu-utils")
    proc = run([qemu_img, "info", "--output=json", "-U", path], check=False, timeout=60)
    if proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise BuilderError(f"not a disk image QEMU can read: {path} ({err[-1] if err else 'qemu-img info failed'})")
    fmt = str(json.loads(proc.stdout)["format"])
    if fmt not in ("qcow2", "raw"):
        raise BuilderError(f"{path} is a {fmt} image; --target disk: takes qcow2 or raw")
    return fmt


def find_images(model: HostModel, path: Path) -> DiskImages:
    """The OS disk and, when the model has a scratch disk, Packer's second disk beside it (`<name>-1`)."""
    path = Path(path)
    if not path.is_file():
        raise BuilderError(f"disk image not found: {path}",
                           hint="the Packer output is <out>/<host>/packer/build/images/<host> (qcow2)")
    scratch = None
    if model.storage.scratch is not None:
        cands = [path.with_name(path.name + "-1"), path.with_name(f"{path.stem}-1{path.suffix}")]
        scratch = next((c for c in cands if c.is_file()), None)
        if scratch is None:
            raise BuilderError(f"the model has a scratch disk but no image of it is beside {path} "
                               f"(looked for {', '.join(c.name for c in cands)})",
                               hint="Packer writes the scratch disk as <name>-1 in the same folder")
    return DiskImages(path, image_format(path), scratch, image_format(scratch) if scratch else None)


def overlay(base: Path, fmt: str, out: Path) -> Path:
    qemu_img = require_tool("qemu-img", "qemu-utils")
    out.unlink(missing_ok=True)
    run([qemu_img, "create", "-q", "-f", "qcow2", "-b", base.resolve(), "-F", fmt, out])
    return out


def disk_args(model: HostModel, os_overlay: Path, scratch_overlay: Path | None) -> list[str]:
    """-device/-drive for each disk on its modelled bus with its serial, as the Packer VM had them."""
    from builder.packer import qemu_disk_device

    args = ["-device", "ahci,id=ahci0", "-device", "virtio-scsi-pci,id=scsi0",
            "-drive", f"file={os_overlay},if=none,id=osdisk,format=qcow2,cache=unsafe",
            "-device", f"{qemu_disk_device(model.storage.os_disk, 'os_disk')},drive=osdisk,bootindex=1"]
    if scratch_overlay is not None and model.storage.scratch is not None:
        args += ["-drive", f"file={scratch_overlay},if=none,id=scratch,format=qcow2,cache=unsafe",
                 "-device", f"{qemu_disk_device(model.storage.scratch, 'scratch')},drive=scratch"]
    return args


def serial_tail(serial_log: Path, lines: int = SERIAL_TAIL) -> str:
    try:
        text = serial_log.read_text(errors="replace").replace("\r", "")
    except OSError:
        return "  (no serial output)"
    tail = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    return "\n".join(f"  | {ln}" for ln in tail) or "  (no serial output)"


def wait_disk_up(access: GuestAccess, os_disk: Path, timeout: float, started: float) -> dict[str, float]:
    """An installed disk has no console arguments: wait for the admin's SSH login, then for cloud-init
    (`cloud-init status --wait`). Seconds since `started` per milestone; no login is an error that
    quotes the serial log's last lines."""
    from builder.verify.ssh import ssh_run, wait_for_ssh

    serial_log = Path(access.serial_log)
    user = access.user
    try:
        wait_for_ssh(access, timeout=timeout)
    except BuilderError as exc:
        raise BuilderError(
            f"the disk {os_disk} did not come up: no SSH login as {user} within "
            f"{timeout:.0f}s ({exc.message.splitlines()[0]}); the serial log's last lines:\n"
            f"{serial_tail(serial_log)}",
            hint=f"the whole console: {serial_log}" if serial_log.exists() else None) from None
    timings = {"ssh_ready": round(time.monotonic() - started, 1)}
    # The first boot restarts sshd (its MGMT bind) while cloud-init runs: an SSH session that fails
    # (255) is not cloud-init's answer; ask again until the deadline.
    while True:
        remaining = max(60.0, timeout - (time.monotonic() - started))
        proc = ssh_run(access, "sudo cloud-init status --wait --long || true", timeout=remaining)
        if proc.returncode != 255 or time.monotonic() - started > timeout:
            break
        log.info("SSH dropped while waiting for cloud-init (sshd restarting?): asking again")
        time.sleep(5)
    timings["cloud_init_done"] = round(time.monotonic() - started, 1)
    status = [ln for ln in (proc.stdout or "").splitlines() if ln.strip(". ")]
    log.info("cloud-init on the disk: %s", "; ".join(status[:2]))
    return timings


@contextlib.contextmanager
def booted_disk(model: HostModel, images: DiskImages, workdir: Path, identity: Path, *,
                timeout: float | None = None) -> Iterator[tuple[GuestAccess, object]]:
    """Start the harness services, boot the disk by its firmware, wait for SSH and cloud-init; yield (access, svc).

    `access.power.reboot()` powers the machine off and boots the same disk again (a later boot)."""
    from builder.testbed.boot import GuestPower, NetPlan, nics_for
    from builder.testbed.nfs import free_port
    from builder.testbed.services import harness_services
    class DiskPower(GuestPower):
        def wait_up(self, vm: object, access: GuestAccess, started: float) -> dict[str, float]:
            return wait_disk_up(access, images.os_disk, self.timeout, started)

    if timeout is None:
        timeout = settings.env_float("BUILDER_BOOT_TIMEOUT", DEFAULT_TIMEOUT) or DEFAULT_TIMEOUT
    workdir.mkdir(parents=True, exist_ok=True)
    os_ov = overlay(images.os_disk, images.os_format, workdir / "os-overlay.qcow2")
    sc_ov = overlay(images.scratch, images.scratch_format or "raw", workdir / "scratch-overlay.qcow2") \
        if images.scratch else None
    serial_log = workdir / "serial.log"
    serial_log.unlink(missing_ok=True)
    try:
        with harness_services(model, workdir / "services") as svc:
            ports = NetPlan(free_port(), free_port())
            fwds = svc.guestfwds()
            spec = VmSpec(name=f"disk-{model.host.hostname}", serial_log=serial_log, firmware=model.host.firmware,
                          memory_mb=1536, cpus=settings.vm_cpus(), nics=nics_for(model, ports, fwds),
                          extra=tuple(disk_args(model, os_ov, sc_ov)))
            try:
                with contextlib.ExitStack() as stack:
                    vm = stack.enter_context(start_vm(spec, workdir))
                    started = time.monotonic()
                    access = GuestAccess(ssh_host="127.0.0.1", ssh_port=ports.ssh_port,
                                         servers_ssh_port=ports.servers_ssh_port, user=model.admin.name,
                                         identity_file=Path(identity), serial_log=serial_log, timings={},
                                         nfs=svc.nfs, vm=vm)
                    power = DiskPower(spec, workdir, stack, access, fwds, timeout)
                    access.timings.update(wait_disk_up(access, images.os_disk, timeout, started))
                    access = replace(access, power=power)
                    power.access = access
                    yield access, svc
            finally:
                for fwd in fwds:
                    fwd.reap_helpers()
    finally:
        for p in (os_ov, sc_ov):
            if p is not None:
                p.unlink(missing_ok=True)


def preflight_disk(model: HostModel, path: Path, identity: Path) -> DiskImages:
    """Every input problem before anything boots or is written: the images, their formats, the key."""
    from builder.verify.live import check_identity_in_model

    images = find_images(model, path)
    check_identity_in_model(model, model.admin, Path(identity))
    return images


def verify_disk(
    model: HostModel, target: Target, identity: Path, workdir: Path, *, only: list[str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None, started: float | None = None,
    boot_timeout: float | None = None, notes: tuple[str, ...] = (), second_boot: bool = True,
) -> tuple[Report, Path]:
    """Boot the disk of `target`, run the catalog; then (unless `second_boot` is False) power it off, boot
    the same disk again and re-run the second-boot checks (a later boot runs no first-boot commands).
    Returns the Report (target with the SHA-256; a section per later boot) and the first boot's serial log."""
    from builder.verify.report import BootSection
    from builder.verify.session import SETTLE_TIMEOUT, second_boot_checks, settle

    if target.kind != "disk" or target.path is None:
        raise BuilderError(f"verify_disk needs a disk target, not {target.kind}")
    t0 = time.monotonic()
    images = preflight_disk(model, target.path, identity)
    digest = sha256_file(images.os_disk)
    target = disk_target(images.os_disk.absolute(), digest)
    timings: dict[str, float] = {"hashed": round(time.monotonic() - t0, 1)}
    boots: tuple[BootSection, ...] = ()
    with booted_disk(model, images, workdir, identity, timeout=boot_timeout) as (access, _svc):
        for k, v in access.timings.items():
            timings[k] = round(timings["hashed"] + v, 1)
        host = SshHost(access)
        try:
            t = time.monotonic()
            ctx = Context(host, model, Endpoints.from_access(access), target=target)
            results = run_checks(select(build_catalog(model), only), ctx, on_result)
            timings["checks_seconds"] = round(time.monotonic() - t, 1)
        finally:
            host.close()
        serial = access.serial_log
        keep = workdir / "serial-copy.log"
        keep.write_bytes(Path(serial).read_bytes())
        later = second_boot_checks(model, only) if second_boot else []
        if later:
            log.info("powering the disk off for boot 2")
            access = access.power.reboot()
            host = SshHost(access)
            try:
                t2: dict[str, float] = dict(access.timings)
                t = time.monotonic()
                settle(host, SETTLE_TIMEOUT)
                t2["settled"] = round(t2.get("cloud_init_done", 0.0) + time.monotonic() - t, 1)
                t = time.monotonic()
                ctx = Context(host, model, Endpoints.from_access(access), target=target)
                results2 = run_checks(later, ctx, on_result)
                t2["checks_seconds"] = round(time.monotonic() - t, 1)
            finally:
                host.close()
            keep2 = workdir / "serial-boot2-copy.log"
            keep2.write_bytes(Path(access.serial_log).read_bytes())
            boots = (BootSection("boot 2", tuple(results2), t2, str(keep2)),)
    if started is not None:
        timings["checks_done"] = round(time.monotonic() - started, 1)
    fw = "OVMF (UEFI)" if model.host.firmware == "uefi" else "SeaBIOS"
    reached = (f"{model.admin.name}@127.0.0.1 (MGMT forward) on the disk {images.os_disk} booted by {fw}, "
               f"sha256 {digest}")
    report = Report(model.host.hostname, reached, tuple(results), timings, str(keep), notes=notes,
                    target_info=replace(target), boots=boots)
    return report, keep
