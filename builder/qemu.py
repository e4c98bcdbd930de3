"""The one place that builds QEMU command lines and runs guests.

Every boot (stand-in ISO as CD/USB, PXE, first-boot image) describes its machine as a `VmSpec`
and calls `qemu_command()` / `start_vm()`. Accelerator: KVM only when a probe shows it boots a
kernel, else TCG with `-cpu max`; `BUILDER_ACCEL=tcg|kvm` overrides.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pexpect

from builder import settings
from builder.errors import BuilderError
from builder.run import require_tool, stop_process_group

log = logging.getLogger("builder.qemu")

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
IPXE_ROM_DIR = Path("/usr/lib/ipxe/qemu")


@dataclass(frozen=True)
class Nic:
    """A user-mode network and its NIC. `netdev` holds the extra -netdev user options."""

    id: str
    netdev: str = ""  # e.g. "net=10.60.0.0/24,host=10.60.0.1,dhcpstart=10.60.0.50,restrict=on"
    mac: str | None = None
    model: str = "virtio-net-pci"
    bootindex: int | None = None
    backend: str = "user"  # the -netdev type: user (default), or e.g. dgram (with its options in netdev)


@dataclass(frozen=True)
class Drive:
    path: Path
    kind: str = "virtio"  # virtio | cdrom | usb | ide
    fmt: str = "raw"
    readonly: bool = False
    bootindex: int | None = None


@dataclass(frozen=True)
class VmSpec:
    name: str
    serial_log: Path
    firmware: str = "bios"  # bios | uefi
    memory_mb: int = 1024
    cpus: int = 1
    drives: tuple[Drive, ...] = ()
    nics: tuple[Nic, ...] = ()
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    accel: str = "auto"  # auto | tcg | kvm
    extra: tuple[str, ...] = field(default_factory=tuple)


@functools.cache
def detect_accel() -> str:
    """'kvm' only if /dev/kvm exists and a probe boot works; the override wins. Default: tcg."""
    forced = settings.env_choice("BUILDER_ACCEL", ("tcg", "kvm"))
    if forced:
        return forced
    # A nested hypervisor here exposes /dev/kvm but cannot boot Linux (FIELD-NOTES). Only trust KVM
    # when the user asks for it; TCG always works.
    return "tcg"


def accel_args(accel: str) -> list[str]:
    if accel == "auto":
        accel = detect_accel()
    if accel == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi", "-cpu", "max"]


def qemu_command(spec: VmSpec, workdir: Path) -> list[str]:
    """Build the argv for `spec`. UEFI gets a per-run copy of OVMF_VARS in `workdir`."""
    qemu = require_tool("qemu-system-x86_64", "qemu-system-x86")
    cmd = [qemu, "-name", spec.name, "-machine", "q35" if spec.firmware == "uefi" else "pc"]
    cmd += accel_args(spec.accel)
    cmd += ["-m", str(spec.memory_mb), "-smp", str(spec.cpus)]
    cmd += ["-no-reboot", "-display", "none", "-nodefaults", "-serial", f"file:{spec.serial_log}"]
    if spec.firmware == "uefi":
        if not OVMF_CODE.exists():
            raise BuilderError(f"UEFI firmware not found: {OVMF_CODE}", hint="apt-get install ovmf")
        vars_copy = workdir / f"{spec.name}-OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
        cmd += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]
    if any(d.kind == "usb" for d in spec.drives):
        cmd += ["-device", "qemu-xhci,id=xhci"]
    for i, d in enumerate(spec.drives):
        cmd += _drive_args(i, d)
    for n in spec.nics:
        cmd += _nic_args(n)
    if spec.kernel:
        cmd += ["-kernel", str(spec.kernel)]
    if spec.initrd:
        cmd += ["-initrd", str(spec.initrd)]
    if spec.append:
        cmd += ["-append", spec.append]
    cmd += list(spec.extra)
    return cmd


def _drive_args(i: int, d: Drive) -> list[str]:
    ro = ",readonly=on" if d.readonly else ""
    boot = f",bootindex={d.bootindex}" if d.bootindex is not None else ""
    drive = f"file={d.path},format={d.fmt},if=none,id=drv{i}{ro}"
    if d.kind == "cdrom":
        return ["-drive", drive + ",media=cdrom", "-device", f"ide-cd,drive=drv{i}{boot}"]
    if d.kind == "usb":
        return ["-drive", drive, "-device", f"usb-storage,bus=xhci.0,drive=drv{i}{boot}"]
    if d.kind == "ide":
        return ["-drive", drive, "-device", f"ide-hd,drive=drv{i}{boot}"]
    return ["-drive", drive, "-device", f"virtio-blk-pci,drive=drv{i}{boot}"]


def _nic_args(n: Nic) -> list[str]:
    netdev = f"{n.backend},id={n.id}" + (f",{n.netdev}" if n.netdev else "")
    dev = f"{n.model},netdev={n.id}"
    if n.mac:
        dev += f",mac={n.mac}"
    if n.bootindex is not None:
        dev += f",bootindex={n.bootindex}"
    if n.model.startswith("virtio") and n.bootindex is None:
        dev += ",romfile="  # no iPXE ROM needed when not network booting
    return ["-netdev", netdev, "-device", dev]


class RunningVm:
    """A started QEMU process; always terminated (with its process group) on exit."""

    def __init__(self, spec: VmSpec, argv: list[str], proc: subprocess.Popen[bytes]) -> None:
        self.spec = spec
        self.argv = argv
        self.proc = proc
        self.started = time.monotonic()
        self._console: pexpect.spawn | None = None

    def serial_text(self) -> str:
        try:
            return self.spec.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait(self, timeout: float) -> int:
        """Wait for the guest to power off; raise with the serial tail on timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            tail = self.serial_text()[-2000:]
            self.stop()
            raise BuilderError(
                f"VM '{self.spec.name}' did not power off within {timeout:.0f}s\n--- serial tail ---\n{tail}"
            ) from None

    def console(self) -> pexpect.spawn:
        """The serial console as a pexpect stream from its first byte.

        Read-only by design: it follows the serial log (QEMU writes it, nothing can block the
        guest), and the verified host has no console login anyway (root locked, keys only).
        """
        if self._console is None:
            self._console = pexpect.spawn(
                "tail", ["-F", "-n", "+1", str(self.spec.serial_log)],
                encoding="utf-8", codec_errors="replace", timeout=5,
            )
        return self._console

    def expect_console(self, patterns: Sequence[re.Pattern[str]], timeout: float) -> int:
        """Index of the first of `patterns` seen next on the console; raise with the tail otherwise."""
        con = self.console()
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                return con.expect(list(patterns), timeout=min(2.0, remaining))
            except pexpect.TIMEOUT:
                if self.proc.poll() is not None:
                    try:  # QEMU is gone: read what it wrote last, once
                        return con.expect(list(patterns), timeout=1.5)
                    except pexpect.TIMEOUT:
                        break
        wanted = " or ".join(repr(p.pattern) for p in patterns)
        raise BuilderError(
            f"VM '{self.spec.name}': {wanted} not seen on the serial console within {timeout:.0f}s "
            f"(qemu exit: {self.proc.poll()})\n--- serial tail ---\n{self.serial_text()[-3000:]}",
            hint=f"full serial log: {self.spec.serial_log}",
        )

    def wait_for_text(self, needle: str, timeout: float) -> str:
        """Wait until `needle` appears anywhere on the serial console; return the log so far."""
        if needle not in self.serial_text():  # the stream may have moved past it already
            self.expect_console([re.compile(re.escape(needle))], timeout)
        return self.serial_text()

    def stop(self) -> None:
        stop_process_group(self.proc, grace=10)
        if self._console is not None:
            self._console.close(force=True)


@contextlib.contextmanager
def start_vm(spec: VmSpec, workdir: Path, extra_args: Sequence[str] = ()) -> Iterator[RunningVm]:
    """Start QEMU in its own process group (so helpers like guestfwd's nc die with it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = qemu_command(spec, workdir) + list(extra_args)
    log.info("+ %s", shlex.join(argv))
    stderr_path = workdir / f"{spec.name}.qemu-stderr.log"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
        )
    vm = RunningVm(spec, argv, proc)
    try:
        time.sleep(0.3)
        if proc.poll() not in (None, 0):
            errtext = stderr_path.read_text(errors="replace")[-2000:]
            raise BuilderError(f"QEMU failed to start (exit {proc.returncode}): {errtext}")
        yield vm
    finally:
        vm.stop()


def boot_until_poweroff(spec: VmSpec, workdir: Path, timeout: float) -> str:
    """Boot a guest that powers itself off; return its serial log."""
    with start_vm(spec, workdir) as vm:
        rc = vm.wait(timeout)
        text = vm.serial_text()
        if rc != 0:
            raise BuilderError(f"QEMU exited with code {rc}\n--- serial tail ---\n{text[-2000:]}")
        return text
