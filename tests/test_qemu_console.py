"""The serial console as a pexpect stream: milestones are seen as the guest prints them, and a
guest that dies or stalls gives a clear error with the serial tail (no VM needed: a fake QEMU)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.qemu import RunningVm, VmSpec
from builder.testbed.boot import wait_milestones


def _vm(tmp_path: Path, seconds: float) -> RunningVm:
    log = tmp_path / "serial.log"
    log.write_text("")
    proc = subprocess.Popen(["sleep", str(seconds)], start_new_session=True)
    return RunningVm(VmSpec(name="fake", serial_log=log), ["sleep"], proc)


def _print_later(log: Path, lines: list[tuple[float, str]]) -> threading.Thread:
    def writer() -> None:
        for delay, line in lines:
            time.sleep(delay)
            with log.open("a") as f:
                f.write(line)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    return t


def test_milestones_follow_the_console(tmp_path: Path) -> None:
    vm = _vm(tmp_path, 30)
    try:
        _print_later(vm.spec.serial_log, [
            (0.5, "[    1.0] Linux version 6.1\r\n"),
            (0.5, "\r\nprometheus login: "),
            (1.0, "\r\n[   90.0] cloud-init[512]: prometheus first boot finished: cloud-init 22.4 after 88 s\r\n"),
        ])
        started = time.monotonic()
        timings = wait_milestones(vm, 20, started)
        assert list(timings) == ["boot_to_login", "cloud_init_done"]
        assert 0.5 <= timings["boot_to_login"] <= timings["cloud_init_done"] < 20
        assert "Linux version" in vm.wait_for_text("Linux version", 5)
    finally:
        vm.stop()


def test_guest_that_dies_is_reported_with_its_serial_tail(tmp_path: Path) -> None:
    vm = _vm(tmp_path, 1)
    try:
        _print_later(vm.spec.serial_log, [(0.2, "Kernel panic - not syncing: VFS\r\n")])
        started = time.monotonic()
        with pytest.raises(BuilderError) as exc:
            wait_milestones(vm, 60, started)
        assert time.monotonic() - started < 20  # noticed the exit, did not wait for the timeout
        assert "cloud-init did not finish" in exc.value.message
        assert "Kernel panic" in exc.value.message and "qemu exit: 0" in exc.value.message
    finally:
        vm.stop()


def test_stalled_guest_times_out(tmp_path: Path) -> None:
    vm = _vm(tmp_path, 30)
    try:
        with pytest.raises(BuilderError, match="not seen on the serial console within 2s"):
            vm.wait_for_text("never printed", 2)
    finally:
        vm.stop()
