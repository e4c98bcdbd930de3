"""The package plan: what the installer, the first boot's one transaction and the driver step install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from builder.errors import ProblemsError
from builder.model import load_model
from builder.seed.packages import (
    DRIVER_SCRIPT,
    NOUVEAU_FILE,
    PREFERENCES_FILE,
    REBOOT_MARKER,
    TOOLKIT_FAMILY,
    package_plan,
)
from builder.seed.render import render_host
from tests.conftest import DEFAULT_MODEL

KERNEL_METAS = {"linux-generic", "linux-image-generic", "linux-headers-generic"}


def test_toolkit_family_is_pinned_at_one_version() -> None:
    plan = package_plan(load_model())
    tk = {p.name: p.version for p in plan.first_boot if p.name in TOOLKIT_FAMILY}
    assert set(tk) == set(TOOLKIT_FAMILY) and set(tk.values()) == {"1.18.2-1"}
    prefs = plan.apt_preferences
    for name in TOOLKIT_FAMILY:
        assert f"Package: {name}\nPin: version 1.18.2-1\nPin-Priority: 1001" in prefs


def test_driver_family_is_pinned_by_branch() -> None:
    plan = package_plan(load_model())
    stanza = re.search(r"Package: /(.+)/\nPin: version (\S+)\nPin-Priority: 1001", plan.apt_preferences)
    assert stanza and stanza.group(2) == "580.178.04-0ubuntu0.24.04.1"
    rx = re.compile(stanza.group(1))
    for name in ("nvidia-headless-no-dkms-580-server", "nvidia-utils-580-server", "nvidia-kernel-common-580-server",
                 "libnvidia-compute-580-server", "libnvidia-cfg1-580-server"):
        assert rx.search(name), name
    for name in ("linux-modules-nvidia-580-server-generic", "nvidia-utils-570-server", "libnvidia-container1",
                 "nvidia-container-toolkit"):
        assert not rx.search(name), name


def test_driver_is_not_in_the_first_boot_transaction() -> None:
    plan = package_plan(load_model())
    first = {p.name for p in plan.first_boot}
    driver = {p.name: p.version for p in plan.driver}
    assert driver == {"linux-generic": None, "linux-modules-nvidia-580-server-generic": None,
                      "nvidia-headless-no-dkms-580-server": "580.178.04-0ubuntu0.24.04.1",
                      "nvidia-utils-580-server": "580.178.04-0ubuntu0.24.04.1"}
    assert not first & set(driver) and not any("nvidia-driver" in n or "dkms-" in n.replace("no-dkms-", "")
                                                for n in first | set(driver))
    assert {"docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"} <= first


def test_holds_take_the_kernel_metapackages_with_the_driver() -> None:
    plan = package_plan(load_model())
    assert set(plan.holds) == KERNEL_METAS | {"linux-modules-nvidia-580-server-generic",
                                              "nvidia-headless-no-dkms-580-server", "nvidia-utils-580-server"}
    assert "apt-mark hold " + " ".join(f'"{h}"' for h in plan.holds) in plan.driver_script


def test_hwe_flavour_holds_its_own_metapackages(write_model) -> None:
    text = (DEFAULT_MODEL.read_text()
            .replace("kernel_package: linux-generic", "kernel_package: linux-generic-hwe-24.04")
            .replace("kernel_flavour: generic", "kernel_flavour: generic-hwe-24.04"))
    plan = package_plan(load_model(write_model(text=text)))
    assert {"linux-generic-hwe-24.04", "linux-image-generic-hwe-24.04", "linux-headers-generic-hwe-24.04",
            "linux-modules-nvidia-580-server-generic-hwe-24.04"} <= set(plan.holds)


def test_flavour_must_match_the_installed_kernel(write_model) -> None:
    text = DEFAULT_MODEL.read_text().replace("kernel_package: linux-generic", "kernel_package: linux-generic-hwe-24.04")
    with pytest.raises(ProblemsError) as err:
        load_model(write_model(text=text))
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "kernel_flavour:" in ln)
    assert f":{line}: nvidia.driver.kernel_flavour: " in str(err.value) and "'generic-hwe-24.04'" in str(err.value)


def test_old_driver_shape_is_rejected_with_its_line(write_model) -> None:
    text = DEFAULT_MODEL.read_text().replace("branch: 580-server", "package: nvidia-driver-550-server")
    with pytest.raises(ProblemsError) as err:
        load_model(write_model(text=text))
    assert "nvidia.driver" in str(err.value)


def test_nfs_common_is_installed_by_the_installer() -> None:
    files = render_host(load_model())
    auto = yaml.safe_load(files["autoinstall/user-data"])["autoinstall"]
    assert "nfs-common" in auto["packages"]
    ud = yaml.safe_load(files["first-boot/user-data"])
    assert "nfs-common" not in ud["packages"]  # not left to the first boot's package stage (after `mounts`)
    paths = {f["path"]: f for f in ud["write_files"]}
    assert paths[DRIVER_SCRIPT]["permissions"] == "0755"
    assert "blacklist nouveau" in paths[NOUVEAU_FILE]["content"]
    assert paths[PREFERENCES_FILE]["content"] == package_plan(load_model()).apt_preferences
    assert ud["runcmd"][-1] == [DRIVER_SCRIPT]
    assert ud["power_state"]["mode"] == "reboot" and ud["power_state"]["condition"] == ["test", "-e", REBOOT_MARKER]


def test_cli_render_validates_with_the_new_packages(tmp_path: Path) -> None:
    assert main(["render", "--out", str(tmp_path)]) == 0


# ---------------------------------------------------------------- the driver step, run with stub tools

def _run_script(tmp_path: Path, *, apt_ok: bool, gpu: bool, modprobe_loads: bool = False,
                nouveau: bool = False) -> tuple[int, list[str], str]:
    script = tmp_path / "driver.sh"
    script.write_text(package_plan(load_model()).driver_script)
    bin_dir, sysfs, calls = tmp_path / "bin", tmp_path / "sys", tmp_path / "calls"
    bin_dir.mkdir()
    for tool, body in (("apt-get", "exit 0" if apt_ok else "exit 100"), ("apt-mark", "exit 0"),
                       ("update-initramfs", "exit 0"), ("shutdown", "exit 0"),
                       ("modprobe", f"mkdir -p {sysfs}/module/nvidia" if modprobe_loads else "exit 1")):
        (bin_dir / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\n{body}\n')
        (bin_dir / tool).chmod(0o755)
    dev = sysfs / "bus" / "pci" / "devices" / "0000:01:00.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x10de\n" if gpu else "0x8086\n")
    if nouveau:
        (sysfs / "module" / "nouveau").mkdir(parents=True)
    marker = tmp_path / "reboot-marker"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SYSFS": str(sysfs), "LOG": str(tmp_path / "log"),
           "REBOOT_MARKER": str(marker)}
    rc = subprocess.run(["sh", str(script)], env=env, timeout=30).returncode
    lines = calls.read_text().splitlines() if calls.exists() else []
    if marker.exists():  # what cloud-init's power_state condition (`test -e marker`) would see
        lines.append("reboot requested")
    return rc, lines, (tmp_path / "log").read_text()


def test_driver_step_reboots_once_when_the_gpu_waits_for_the_module(tmp_path: Path) -> None:
    rc, calls, _ = _run_script(tmp_path, apt_ok=True, gpu=True, nouveau=True)
    assert rc == 0
    assert calls[0].startswith("apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=600 linux-generic ")
    assert "nvidia-utils-580-server=580.178.04-0ubuntu0.24.04.1" in calls[0]
    assert any(c.startswith("apt-mark hold ") for c in calls) and "update-initramfs -u" in calls
    assert not any(c.startswith("modprobe") for c in calls)  # nouveau holds the GPU: only a reboot helps
    assert calls[-1] == "reboot requested" and not any(c.startswith("shutdown") for c in calls)


def test_driver_step_no_reboot_when_the_module_loads(tmp_path: Path) -> None:
    rc, calls, _ = _run_script(tmp_path, apt_ok=True, gpu=True, modprobe_loads=True)
    assert rc == 0 and "modprobe nvidia" in calls and "reboot requested" not in calls


def test_driver_step_no_reboot_without_a_gpu(tmp_path: Path) -> None:
    rc, calls, _ = _run_script(tmp_path, apt_ok=True, gpu=False)
    assert rc == 0 and not any(c.startswith(("reboot", "modprobe", "update-initramfs")) for c in calls)


def test_failed_driver_install_holds_nothing_and_never_reboots(tmp_path: Path) -> None:
    rc, calls, log = _run_script(tmp_path, apt_ok=False, gpu=True)
    assert rc != 0 and len(calls) == 1 and calls[0].startswith("apt-get install")
    assert "FAILED" in log and "Docker and NFS are not affected" in log


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_driver_script_passes_shellcheck(tmp_path: Path) -> None:
    script = tmp_path / "driver.sh"
    script.write_text(package_plan(load_model()).driver_script)
    proc = subprocess.run(["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_docker_version_pins_engine_and_cli(write_model) -> None:
    text = DEFAULT_MODEL.read_text().replace("  version: null ", '  version: "5:28.5.2-1~ubuntu.24.04~noble" ')
    plan = package_plan(load_model(write_model(text=text)))
    pinned = {p.name: p.version for p in plan.first_boot if p.version and p.name.startswith("docker")}
    assert pinned == {"docker-ce": "5:28.5.2-1~ubuntu.24.04~noble", "docker-ce-cli": "5:28.5.2-1~ubuntu.24.04~noble"}
    assert "Package: docker-ce\nPin: version 5:28.5.2-1~ubuntu.24.04~noble\nPin-Priority: 1001" in plan.apt_preferences
