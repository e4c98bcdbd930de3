"""tests/vmboot.py boots a self-powering-off guest once more only when its kernel logged the TCG
timer-check fallback, and reports the second boot's log as it is."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.vmboot as vmboot
from builder.qemu import VmSpec


class FakeVm:
    def __init__(self, text: str) -> None:
        self.text = text

    def wait(self, timeout: float) -> int:
        return 0

    def serial_text(self) -> str:
        return self.text


@pytest.mark.parametrize(("logs", "boots", "final"), [
    ({"a": ["ok"]}, 1, "ok"),
    ({"a": [f"[ 0.1] ..{vmboot.TIMER_FALLBACK}\n", "ok"]}, 2, "ok"),
    ({"a": [vmboot.TIMER_FALLBACK, vmboot.TIMER_FALLBACK + " again"]}, 2, vmboot.TIMER_FALLBACK + " again"),
])
def test_only_a_timer_fallback_boots_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                           logs: dict[str, list[str]], boots: int, final: str) -> None:
    started: list[str] = []

    @contextlib.contextmanager
    def fake_start(spec: VmSpec, workdir: Path) -> Iterator[FakeVm]:
        started.append(spec.name)
        yield FakeVm(logs[spec.name][len(started) - 1])

    monkeypatch.setattr(vmboot, "start_vm", fake_start)
    spec = VmSpec(name="a", serial_log=tmp_path / "a.log")
    assert vmboot.boot_all([spec], tmp_path, 10) == {"a": final}
    assert len(started) == boots
