"""Boot several self-powering-off guests at once (TCG uses about one core each) and collect logs."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from builder.qemu import RunningVm, VmSpec, start_vm


def boot_all(specs: list[VmSpec], workdir: Path, timeout: float) -> dict[str, str | Exception]:
    """Start every guest, wait until each powers off; name -> serial log, or the error it hit."""
    results: dict[str, str | Exception] = {}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        vms: dict[str, RunningVm] = {}
        for spec in specs:
            try:
                vms[spec.name] = stack.enter_context(start_vm(spec, workdir))
            except Exception as exc:  # noqa: BLE001 - reported by the test that owns this guest
                results[spec.name] = exc
        for name, vm in vms.items():
            try:
                rc = vm.wait(max(1.0, timeout - (time.monotonic() - started)))
                text = vm.serial_text()
                results[name] = text if rc == 0 else RuntimeError(f"QEMU exit {rc}\n{text[-2000:]}")
            except Exception as exc:  # noqa: BLE001
                results[name] = exc
            print(f"{name}: done after {time.monotonic() - started:.1f}s")
    return results
