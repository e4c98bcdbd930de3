"""Packer stage: boot the remastered ISO with packer/prometheus.pkr.hcl and keep the installed disks.

`write_pkrvars()` turns the host model (+ ISO path and SHA-256) into
`<out>/<host>/packer/<host>.pkrvars.hcl`, byte-for-byte the same for the same inputs, so a user can
also run Packer by hand with it. `packer_build()` runs `packer validate` and `packer build` with
CHECKPOINT_DISABLE=1, streams Packer's output, keeps Packer's log and the guest's serial log, and
builds into a staged folder that replaces `<out>/<host>/packer/build/` only when Packer succeeded.
Machine-specific choices (accelerator, CPU model, staged paths) are passed as `-var` on the command
line, so they never change the generated file.

The VM plays the host: the model's firmware, NIC MACs, and each disk on its modelled bus with its
serial (`qemu_disk_device`), so the installer's udev computes the ID_SERIAL the rendered matchers
expect. Success is the installer's word, not Packer's: `SerialWatch` follows the serial log while
Packer runs and stops it at a line starting with INSTALL_FAILED; a build whose log has no INSTALL_OK
line fails too (`install_verdict`), and then no disk image is kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from builder import settings
from builder.errors import BuilderError
from builder.media.digest import cached_sha256
from builder.media.fetch import cache_dir
from builder.model import Disk, HostModel, Interface
from builder.model.disks import HW_SERIAL_MAX, udev_properties
from builder.qemu import detect_accel
from builder.resources import resource_path
from builder.run import require_tool, run, run_streaming
from builder.store import staged_dir, staged_file

log = logging.getLogger("builder.packer")


TEMPLATE = resource_path("packer", "prometheus.pkr.hcl")
PLUGINS_FILE = "plugins.pkr.hcl"  # current Packer only; see packer/plugins.pkr.hcl.example
PACKER_ENV = {"CHECKPOINT_DISABLE": "1", "PACKER_NO_COLOR": "1"}
DEFAULT_TIMEOUT_S = 2 * 3600.0
# The installer's verdict on the serial console. The autoinstall's late-commands / error-commands
# (and the stand-in installer) print a line that STARTS with one of these; anything after it is the
# reason. A build is good only with INSTALL_OK in the serial log, whatever Packer's exit code.
INSTALL_OK = "PROMETHEUS-INSTALL-OK"
INSTALL_FAILED = "PROMETHEUS-INSTALL-FAILED"
# Lines worth quoting when the installer failed: the stand-in's errors and unresolved matchers,
# subiquity's/curtin's own error lines.
ERROR_LINE_RE = re.compile(r"STANDIN: (ERROR\b|.* matched (no disk|\d+ disks))|Traceback|\b(Error|ERROR|FAILED)\b|"
                           r"matched no disk|did not create needed")
_CONTROL_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f]")


@dataclass(frozen=True)
class PackerPaths:
    """Where one host's Packer files live (under `<out>/<host>/packer/`)."""

    root: Path

    @classmethod
    def for_host(cls, model: HostModel, out_root: Path) -> PackerPaths:
        return cls((out_root / model.host.hostname / "packer").resolve())

    def varfile(self, host: str) -> Path:
        return self.root / f"{host}.pkrvars.hcl"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def failed(self) -> Path:
        return self.root / "last-failure"


@dataclass(frozen=True)
class PackerResult:
    returncode: int
    build_dir: Path | None  # the finished build folder (None when Packer failed)
    disks: tuple[Path, ...]
    serial_log: Path | None
    packer_log: Path | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def disk_serial(disk: Disk, what: str) -> str:
    """The short serial the Packer VM's disk carries; udev then builds the ID_SERIAL the autoinstall matches."""
    serial = disk.match.serial
    if not serial:
        raise BuilderError(
            f"storage.{what} is matched by id_serial or wwn, which the Packer VM's disk cannot reproduce",
            hint=f"give storage.{what}.match.serial (with bus) so the Packer VM's disk can carry the same serial",
        )
    if len(serial) > HW_SERIAL_MAX or not re.fullmatch(r"[A-Za-z0-9._:@#+=-]+", serial):
        raise BuilderError(
            f"storage.{what}.match.serial {serial!r} cannot be given to a QEMU disk "
            f"(at most {HW_SERIAL_MAX} characters, like a real disk's serial field; no spaces or commas)",
        )
    return serial


# What QEMU presents for each modelled bus, so that udev in the installer computes the ID_SERIAL a
# real disk of that bus gets (see builder.model.disks.udev_properties):
#   sata   -> ide-hd on an AHCI port: ATA IDENTIFY model "QEMU HARDDISK", ID_SERIAL QEMU_HARDDISK_<serial>
#   nvme   -> its own nvme controller: model "QEMU NVMe Ctrl", ID_SERIAL QEMU_NVMe_Ctrl_<serial>_1
#   virtio -> virtio-blk-pci: ID_SERIAL is the bare serial
#   scsi   -> scsi-hd with device_id: ID_SERIAL 0QEMU_QEMU_HARDDISK_<device_id>
QEMU_DISK_MODEL = {"sata": "QEMU HARDDISK", "nvme": "QEMU NVMe Ctrl", "virtio": "", "scsi": "QEMU HARDDISK"}
UDEV_KIND = {"sata": "sata", "nvme": "nvme", "virtio": "virtio", "scsi": "scsi-hd"}
DISK_PORT = {"os_disk": 0, "scratch": 1}  # AHCI port of each disk when it is on SATA


def qemu_disk_device(disk: Disk, what: str) -> str:
    """The QEMU `-device` value (without drive=) that presents the modelled disk on its modelled bus."""
    serial = disk_serial(disk, what)
    bus = disk.match.bus
    if bus == "sata":
        return f"ide-hd,bus=ahci0.{DISK_PORT[what]},serial={serial}"
    if bus == "nvme":
        return f"nvme,serial={serial}"
    if bus == "virtio":
        return f"virtio-blk-pci,serial={serial}"
    if bus == "scsi":
        return f"scsi-hd,bus=scsi0.0,serial={serial},device_id={serial}"
    raise BuilderError(f"storage.{what}.match.bus is {bus!r}; the Packer VM needs sata, nvme, virtio or scsi")


def vm_udev_properties(disk: Disk, what: str) -> dict[str, str]:
    """The udev properties the installer sees on the Packer VM's disk for this modelled disk."""
    bus = disk.match.bus or ""
    return udev_properties(UDEV_KIND.get(bus, bus), QEMU_DISK_MODEL.get(bus, ""), disk_serial(disk, what))


def netdev_options(nic: Interface) -> str:
    """QEMU user-network options mirroring the modelled network (subnet, gateway, DHCP lease)."""
    opts = [f"net={nic.subnet}"]
    if nic.gateway:
        opts.append(f"host={nic.gateway}")
    if nic.dhcp and nic.reserved_address:
        opts.append(f"dhcpstart={nic.reserved_address}")
    return ",".join(opts)


def packer_vars(model: HostModel, iso: Path, iso_sha256: str, paths: PackerPaths) -> dict[str, str]:
    """Every host-specific template variable, from the model and the ISO."""
    if model.storage.scratch is None:
        raise BuilderError("the Packer template builds two disks but the model has no storage.scratch")
    host = model.host.hostname
    return {
        "vm_name": host,
        "iso_path": str(Path(iso).resolve()),
        "iso_sha256": iso_sha256,
        "output_directory": str(paths.build / "images"),
        "serial_log": str(paths.build / "serial.log"),
        "firmware": model.host.firmware,
        "os_disk_device": qemu_disk_device(model.storage.os_disk, "os_disk"),
        "scratch_disk_device": qemu_disk_device(model.storage.scratch, "scratch"),
        "servers_mac": model.servers.mac.lower(),
        "servers_netdev": netdev_options(model.servers),
        "mgmt_mac": model.mgmt.mac.lower(),
        "mgmt_netdev": netdev_options(model.mgmt),
    }


def render_pkrvars(values: Mapping[str, str], comment: str) -> str:
    """HCL variable assignments, sorted; JSON string quoting is valid HCL for these values."""
    width = max(len(k) for k in values)
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines += [f"{k:<{width}} = {json.dumps(values[k])}" for k in sorted(values)]
    return "\n".join(lines) + "\n"


def write_pkrvars(model: HostModel, iso: Path, out_root: Path, iso_sha256: str | None = None) -> Path:
    """Write `<out>/<host>/packer/<host>.pkrvars.hcl` atomically; return its path."""
    iso = Path(iso)
    if not iso.is_file():
        raise BuilderError(f"ISO not found: {iso}", hint="build it first with `builder iso --base ISO`")
    paths = PackerPaths.for_host(model, out_root)
    values = packer_vars(model, iso, iso_sha256 or cached_sha256(iso, cache_dir()), paths)
    comment = (
        f"Packer variables for {model.host.hostname}, generated by `builder packer` from the host model.\n"
        "Do not edit: change the model and run it again. Use with packer/prometheus.pkr.hcl:\n"
        f"  CHECKPOINT_DISABLE=1 packer build -var-file={paths.varfile(model.host.hostname).name} "
        "packer/prometheus.pkr.hcl"
    )
    target = paths.varfile(model.host.hostname)
    with staged_file(target, overwrite=True) as tmp:
        tmp.write_text(render_pkrvars(values, comment))
    return target


def packer_version() -> tuple[int, ...]:
    out = run([require_tool("packer", "packer"), "version"], env=PACKER_ENV).stdout.decode(errors="replace")
    m = re.search(r"v?(\d+)\.(\d+)\.(\d+)", out)
    if not m:
        raise BuilderError(f"cannot tell the Packer version from: {out.strip()[:200]}")
    return tuple(int(x) for x in m.groups())


def template_target(template: Path) -> Path:
    """The file itself; its folder when current Packer and a plugins.pkr.hcl are both there."""
    if (template.parent / PLUGINS_FILE).is_file() and packer_version() >= (1, 7, 0):
        return template.parent
    return template


def machine_vars(accel: str | None = None) -> dict[str, str]:
    """Accelerator, CPU model and vCPUs, the same decisions as every other QEMU boot (builder.qemu,
    $BUILDER_VM_CPUS)."""
    accel = accel or detect_accel()
    return {"accelerator": accel, "cpu_model": "host" if accel == "kvm" else "max", "cpus": str(settings.vm_cpus())}


def _var_args(values: Mapping[str, str]) -> list[str]:
    return [a for k in sorted(values) for a in ("-var", f"{k}={values[k]}")]


def packer_validate(varfile: Path, template: Path = TEMPLATE, overrides: Mapping[str, str] | None = None) -> None:
    """`packer validate`; raises with Packer's message. (It fails if output_directory exists.)"""
    packer = require_tool("packer", "packer")
    if not template.is_file():
        raise BuilderError(f"Packer template not found: {template}", hint="run from a checkout of the project")
    args: list[str | Path] = [packer, "validate", f"-var-file={varfile}", *_var_args(overrides or {}),
                              template_target(template)]
    run(args, env=PACKER_ENV, timeout=120)


def packer_build(
    model: HostModel,
    varfile: Path,
    *,
    template: Path = TEMPLATE,
    out_root: Path,
    accel: str | None = None,
    on_line: Callable[[str], None] = print,
    timeout: float = DEFAULT_TIMEOUT_S,
    extra_vars: Mapping[str, str] | None = None,
) -> PackerResult:
    """Validate and build into a staged folder; on success it replaces `<host>/packer/build/`.

    On failure the Packer and serial logs are kept in `<host>/packer/last-failure/` and the result
    carries Packer's exit code; nothing half-built is left in `build/`.
    """
    paths = PackerPaths.for_host(model, out_root)
    started = time.monotonic()
    try:
        disks = _build_staged(model, varfile, template, paths, accel, on_line, timeout, extra_vars)
    except _PackerFailed as failed:
        return PackerResult(failed.returncode, None, (), failed.kept.get("serial.log"),
                            failed.kept.get("packer.log"), time.monotonic() - started)
    shutil.rmtree(paths.failed, ignore_errors=True)
    final = paths.build
    return PackerResult(0, final, tuple(final / "images" / d for d in disks), final / "serial.log",
                        final / "packer.log", time.monotonic() - started)


class _PackerFailed(Exception):
    def __init__(self, returncode: int, kept: dict[str, Path]) -> None:
        super().__init__(f"packer exited with {returncode}")
        self.returncode = returncode
        self.kept = kept


def _build_staged(model: HostModel, varfile: Path, template: Path, paths: PackerPaths, accel: str | None,
                  on_line: Callable[[str], None], timeout: float,
                  extra_vars: Mapping[str, str] | None) -> list[str]:
    with staged_dir(paths.build) as stage:
        overrides = {
            **machine_vars(accel),
            "output_directory": str(stage / "images"),
            "serial_log": str(stage / "serial.log"),
            **(extra_vars or {}),
        }
        packer_validate(varfile, template, overrides)
        packer_log = stage / "packer.log"
        env = {**PACKER_ENV, "PACKER_LOG": "1", "PACKER_LOG_PATH": str(packer_log)}
        args: list[str | Path] = [require_tool("packer", "packer"), "build", "-color=false", f"-var-file={varfile}",
                *_var_args(overrides), template_target(template)]
        on_line(f"packer: building {model.host.hostname} from {varfile.name} ({overrides['accelerator']}, "
                f"{model.host.firmware})")
        serial_log = Path(overrides["serial_log"])
        with SerialWatch(serial_log, on_line) as watch:
            rc = run_streaming(args, on_line=lambda line: on_line(f"  | {line}"), env=env, timeout=timeout,
                               stop_when=watch.failed)
        verdict = install_verdict(serial_log.read_text(errors="replace") if serial_log.is_file() else "")
        if verdict.status == "failed" or (rc == 0 and verdict.status != "ok"):
            kept = _keep_failure(stage, paths.failed)
            context = "".join(f"\n  {line}" for line in verdict.context)
            raise BuilderError(
                verdict.message() + (f"\nearlier installer errors:{context}" if context else ""),
                hint=f"the installer's console: {kept.get('serial.log', serial_log)} "
                     f"(packer {'stopped' if verdict.status == 'failed' else f'exit code {rc}'}; no disk kept)",
            )
        if rc != 0:
            raise _PackerFailed(rc, _keep_failure(stage, paths.failed))
        images = stage / "images"
        disks = sorted(p.name for p in images.iterdir()) if images.is_dir() else []
        if not disks:
            raise BuilderError(f"packer build succeeded but wrote no disk image into {images}")
    return disks


def _keep_failure(stage: Path, dest: Path) -> dict[str, Path]:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    kept = {}
    for name in ("packer.log", "serial.log"):
        if (stage / name).is_file():
            shutil.copyfile(stage / name, dest / name)
            kept[name] = dest / name
    os.utime(dest)
    return kept


# --- the installer's verdict from the serial log ------------------------------------------------

def marker_of(line: str) -> str | None:
    """INSTALL_OK / INSTALL_FAILED when `line` is a marker line (the marker starts the line).

    Only a line that starts with the marker counts: a log line that shows the command printing it
    (`Running command ['sh', '-c', 'echo PROMETHEUS-INSTALL-FAILED']`) is not the verdict.
    """
    text = _CONTROL_RE.sub("", line).strip()
    for marker in (INSTALL_FAILED, INSTALL_OK):
        if text.startswith(marker):
            return marker
    return None


@dataclass(frozen=True)
class InstallVerdict:
    status: str  # ok | failed | unknown (no marker: the install did not finish)
    line: str  # the marker line, or the last error-like line for unknown ("" when none)
    context: tuple[str, ...] = ()  # error-like lines just before it

    def message(self) -> str:
        if self.status == "failed":
            return f"the installer failed: {self.line}"
        what = f"; last error line: {self.line}" if self.line else ""
        return f"the installer never reported success (no {INSTALL_OK} line in the serial log){what}"


def install_verdict(serial_text: str) -> InstallVerdict:
    """The installer's verdict from its serial console output; the first marker line decides."""
    errors: list[str] = []
    for raw in serial_text.splitlines():
        line = _CONTROL_RE.sub("", raw).strip()
        marker = marker_of(line)
        if marker == INSTALL_FAILED:
            return InstallVerdict("failed", line, tuple(errors[-5:]))
        if marker == INSTALL_OK:
            return InstallVerdict("ok", line)
        if line and ERROR_LINE_RE.search(line):
            errors.append(line)
    return InstallVerdict("unknown", errors[-1] if errors else "", tuple(errors[-6:-1]))


class SerialWatch:
    """Follow the serial log QEMU writes while Packer runs; remember the first failure marker line.

    Lines from the installer that say what it did (the stand-in's `STANDIN:` lines and the markers)
    are passed to `on_line` as they appear.
    """

    def __init__(self, path: Path, on_line: Callable[[str], None]) -> None:
        self.path = path
        self.on_line = on_line
        self.failure: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._pos = 0
        self._partial = b""

    def __enter__(self) -> SerialWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._read()  # what QEMU wrote last

    def failed(self) -> bool:
        return self.failure is not None

    def _follow(self) -> None:
        while not self._done.wait(0.5):
            self._read()

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except OSError:
            return
        self._pos += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        for raw in lines:
            line = _CONTROL_RE.sub("", raw.decode(errors="replace")).strip()
            marker = marker_of(line)
            if marker or line.startswith("STANDIN: "):
                self.on_line(f"  serial| {line}")
            if marker == INSTALL_FAILED and self.failure is None:
                self.failure = line
