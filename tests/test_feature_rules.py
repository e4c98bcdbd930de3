"""Table of models the seed forbids (issue 12): exit 2 from `builder validate`, the file and line, the
field path and the seed line the rule comes from. Warnings: exit 0 with the same facts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from builder.cli import main
from tests.conftest import default_model_data, schema_args


def _set(**changes: Any) -> Callable[[dict], None]:
    """_set(**{"features.virtualization.cpu_mode": "host-model"}); list indexes as digits."""

    def mutate(d: dict) -> None:
        for path, value in changes.items():
            *parents, last = path.split(".")
            node: Any = d
            for p in parents:
                node = node[int(p)] if p.isdigit() else node[p]
            if value is _DELETE:
                del node[int(last) if last.isdigit() else last]
            else:
                node[int(last) if last.isdigit() else last] = value

    return mutate


_DELETE = object()
VIRT = "features.virtualization"
MON = "features.monitoring"


def _drop_mount(name: str) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        d["nfs"]["mounts"] = [mt for mt in d["nfs"]["mounts"] if not mt["mountpoint"].endswith("/" + name)]

    return mutate


def _mount_index(name: str) -> int:
    return next(n for n, mt in enumerate(default_model_data()["nfs"]["mounts"]) if mt["mountpoint"].endswith(name))


MM, SM, AD = _mount_index("managed-media"), _mount_index("shared-media"), _mount_index("appdata")

# (id, mutation, field path, seed text that must be quoted)
ERRORS: list[tuple[str, Callable[[dict], None], str, str]] = [
    ("cpu-mode-unknown", _set(**{f"{VIRT}.cpu_mode": "bogus"}), f"{VIRT}.cpu_mode", "CPU mode: host-passthrough"),
    ("cpu-mode-host-model", _set(**{f"{VIRT}.enabled": True, f"{VIRT}.cpu_mode": "host-model"}),
     f"{VIRT}.cpu_mode", "CPU mode: host-passthrough"),
    ("cpu-overcommit", _set(**{f"{VIRT}.cpu_overcommit": True}), f"{VIRT}.cpu_overcommit",
     "CPU overcommit: disabled"),
    ("memory-overcommit", _set(**{f"{VIRT}.memory_overcommit": True}), f"{VIRT}.memory_overcommit",
     "Memory overcommit: disabled"),
    ("memory-reserve-negative", _set(**{f"{VIRT}.memory_reserve_mib": -1}), f"{VIRT}.memory_reserve_mib",
     "Memory overcommit: disabled"),
    ("alert-unknown", _set(**{f"{MON}.alerts": ["gpu-unavailable", "nonsense"]}), f"{MON}.alerts[1]",
     "Alerts (recommended)"),
    ("alert-twice", _set(**{f"{MON}.alerts": ["gpu-unavailable", "gpu-unavailable"]}), f"{MON}.alerts[1]",
     "listed twice"),
    ("dcgm-without-monitoring", _set(**{f"{MON}.dcgm_exporter": True}), f"{MON}.dcgm_exporter",
     "Optional DCGM exporter"),
    ("dcgm-without-toolkit", _set(**{f"{MON}.enabled": True, f"{MON}.dcgm_exporter": True,
                                     "nvidia.container_toolkit.enabled": False}), f"{MON}.dcgm_exporter",
     "NVIDIA driver + NVIDIA Container Toolkit"),
    ("dcgm-latest", _set(**{f"{MON}.enabled": True, f"{MON}.dcgm_exporter": True,
                            f"{MON}.dcgm_exporter_image": "nvcr.io/nvidia/k8s/dcgm-exporter:latest"}),
     f"{MON}.dcgm_exporter_image", "pinned tag"),
    ("alerts-without-node-exporter", _set(**{f"{MON}.enabled": True, f"{MON}.node_exporter": False}),
     f"{MON}.node_exporter", "Alerts (recommended)"),
    ("scratch-alert-without-scratch", _set(**{f"{MON}.enabled": True, "storage.scratch": _DELETE}),
     f"{MON}.alerts[2]", "Local Scratch / NVMe"),
    ("scratch-threshold", _set(**{f"{MON}.scratch_usage_alert_percent": 100}), f"{MON}.scratch_usage_alert_percent",
     "Disk pressure on local scratch"),
    ("probe-timeout", _set(**{f"{MON}.probe_timeout_seconds": 60}), f"{MON}.probe_timeout_seconds",
     "NFS mounts unavailable"),
    ("non-lts", _set(**{"os.release": "24.10"}), "os.release", "OS: Ubuntu Server (LTS)"),
    ("odd-year", _set(**{"os.release": "23.04"}), "os.release", "OS: Ubuntu Server (LTS)"),
    ("desktop-source", _set(**{"os.install_source": "ubuntu-desktop"}), "os.install_source",
     "Installation Type: Minimal (no desktop)"),
    ("full-server-source", _set(**{"os.install_source": "ubuntu-server"}), "os.install_source",
     "Installation Type: Minimal (no desktop)"),
    ("managed-media-rw", _set(**{f"nfs.mounts.{MM}.access": "rw"}), f"nfs.mounts[{MM}].access",
     "Media libraries (RO)"),
    ("shared-media-rw", _set(**{f"nfs.mounts.{SM}.access": "rw"}), f"nfs.mounts[{SM}].access", "Family media (RO)"),
    ("appdata-ro", _set(**{f"nfs.mounts.{AD}.access": "ro"}), f"nfs.mounts[{AD}].access",
     "Container runtime state (RW)"),
    ("shared-media-missing", _drop_mount("shared-media"), "nfs.mounts", "Family media (RO)"),
    ("managed-media-missing", _drop_mount("managed-media"), "nfs.mounts", "Media libraries (RO)"),
]

WARNINGS: list[tuple[str, Callable[[dict], None], str, str]] = [
    ("gpu-passthrough", _set(**{f"{VIRT}.enabled": True, f"{VIRT}.gpu_passthrough": True}),
     f"{VIRT}.gpu_passthrough", "GPU passthrough: not default"),
    ("datasets-ro", _set(**{f"nfs.mounts.{_mount_index('datasets')}.access": "ro"}),
     f"nfs.mounts[{_mount_index('datasets')}].access", "RW as needed"),
    ("atlas-root-rw", _set(**{"nfs.mounts.0.access": "rw", "nfs.mounts.0.options": []}), "nfs.mounts[0].access",
     "Least-privilege mounts"),
]


def _validate(path, capsys) -> tuple[int, str]:
    code = main(["validate", "--host", str(path), *schema_args()])
    cap = capsys.readouterr()
    return code, cap.out + cap.err


def _line_of(output: str, path, field: str) -> str:
    """The line number printed for `field` (file:LINE: field: ...)."""
    for line in output.splitlines():
        if f"{path}:" in line and f" {field}:" in line:
            return line.split(f"{path}:", 1)[1].split(":", 1)[0]
    raise AssertionError(f"no problem line for {field} in:\n{output}")


@pytest.mark.parametrize("case_id,mutate,field,seed", ERRORS, ids=[c[0] for c in ERRORS])
def test_forbidden_model_is_refused(case_id, mutate, field, seed, write_model, capsys) -> None:
    data = default_model_data()
    mutate(data)
    path = write_model(data)
    code, output = _validate(path, capsys)
    assert code == 2, output
    assert "Traceback" not in output
    problem = next(line for line in output.splitlines() if f" {field}:" in line and "warning" not in line)
    assert seed in problem, output
    assert _line_of(output, path, field).isdigit(), output


@pytest.mark.parametrize("case_id,mutate,field,seed", WARNINGS, ids=[c[0] for c in WARNINGS])
def test_discouraged_model_warns(case_id, mutate, field, seed, write_model, capsys) -> None:
    data = default_model_data()
    mutate(data)
    path = write_model(data)
    code, output = _validate(path, capsys)
    assert code == 0, output
    problem = next(line for line in output.splitlines() if f"warning: {field}:" in line)
    assert seed in problem, output
    assert _line_of(output, path, field).isdigit(), output


def test_default_model_and_enabled_features_validate(write_model, capsys) -> None:
    data = default_model_data()
    data["features"]["virtualization"]["enabled"] = True
    data["features"]["monitoring"].update(enabled=True, dcgm_exporter=True)
    code, output = _validate(write_model(data), capsys)
    assert code == 0, output
