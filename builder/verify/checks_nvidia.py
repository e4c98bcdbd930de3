"""NVIDIA checks: driver at the pinned version, held and pinned; toolkit configured; nvidia-smi."""

from __future__ import annotations

import json
import shlex

from builder.model import HostModel
from builder.verify.core import SEED, Check, Context, Outcome, failed, not_applicable, passed
from builder.verify.targets import NO_GPU_IN_QEMU

GPU_PROBE = "grep -lix 0x10de /sys/bus/pci/devices/*/vendor"


def is_installed(status_abbrev: str) -> bool:
    """dpkg's db:Status-Abbrev is desired/current/error ('ii ', 'hi ' when held): current must be 'i'."""
    return len(status_abbrev) >= 2 and status_abbrev[1] == "i"


def _installed(ctx: Context, pkg: str) -> tuple[str, str]:
    """(status abbreviation, version) from dpkg; ('', '') when unknown."""
    res = ctx.run(f"dpkg-query -W -f='${{db:Status-Abbrev}}|${{Version}}' {shlex.quote(pkg)}")
    status, _, version = res.stdout.partition("|")
    return (status.strip(), version.strip()) if res.ok else ("", "")


def driver_version_check(model: HostModel) -> Check:
    drv = model.nvidia.driver

    def fn(ctx: Context) -> Outcome:
        status, version = _installed(ctx, drv.package)
        if not is_installed(status):
            return failed(f"{drv.package} is not installed", expected=f"{drv.package}={drv.version}",
                          found=status or "absent")
        if drv.version and version != drv.version:
            return failed(f"{drv.package} is {version}, not the pinned {drv.version}",
                          expected=drv.version, found=version)
        return passed(f"{drv.package}={version}", found=version)

    return Check("nvidia.driver.version", "NVIDIA driver installed at the pinned version", SEED["gpu-driver"],
                 f"dpkg-query -W {drv.package}", f"{drv.package}={drv.version}", fn, family="nvidia")


def driver_hold_check(model: HostModel) -> Check:
    drv = model.nvidia.driver

    def fn(ctx: Context) -> Outcome:
        if not drv.hold:
            return not_applicable("the model does not hold the driver (nvidia.driver.hold: false)")
        held = ctx.run("apt-mark showhold").stdout.split()
        if drv.package in held:
            return passed(f"{drv.package} is held", found=", ".join(held))
        return failed(f"{drv.package} is not held: apt upgrade may replace the driver",
                      expected=f"{drv.package} in apt-mark showhold", found=", ".join(held) or "no holds")

    return Check("nvidia.driver.hold", "NVIDIA driver held (apt-mark hold)", SEED["gpu-upgrades"],
                 "apt-mark showhold", drv.package, fn, family="nvidia")


def driver_pin_check(model: HostModel) -> Check:
    drv = model.nvidia.driver

    def fn(ctx: Context) -> Outcome:
        if not drv.version:
            return not_applicable("the model pins no driver version")
        res = ctx.run(f"apt-cache policy {shlex.quote(drv.package)}")
        cand = next((ln.split(":", 1)[1].strip() for ln in res.stdout.splitlines()
                     if ln.strip().startswith("Candidate:")), "")
        if cand == drv.version:
            return passed(f"APT candidate is the pinned {cand}", found=cand)
        return failed(f"APT candidate for {drv.package} is {cand or '(none)'}: the pin does not hold it at "
                      f"{drv.version}", expected=f"Candidate: {drv.version}", found=f"Candidate: {cand}")

    return Check("nvidia.driver.pin", "APT preferences pin the driver version", SEED["gpu-upgrades"],
                 f"apt-cache policy {drv.package}", f"Candidate: {drv.version}", fn, family="nvidia")


def toolkit_check(model: HostModel) -> Check:
    tk = model.nvidia.container_toolkit

    def fn(ctx: Context) -> Outcome:
        if not tk.enabled:
            return not_applicable("the container toolkit is disabled in the model")
        status, version = _installed(ctx, tk.package)
        problems = []
        if not is_installed(status):
            problems.append(f"{tk.package} not installed")
        elif tk.version and version != tk.version:
            problems.append(f"{tk.package} {version} (want {tk.version})")
        res = ctx.run("cat /etc/docker/daemon.json", root=True)
        try:
            runtimes = json.loads(res.stdout).get("runtimes") or {}
        except (ValueError, AttributeError):
            runtimes = {}
        if "nvidia" not in runtimes:
            problems.append("daemon.json has no runtimes.nvidia")
        found = f"{tk.package}={version or '-'} runtimes={','.join(runtimes) or '-'}"
        if problems:
            return failed("NVIDIA container toolkit: " + "; ".join(problems),
                          expected=f"{tk.package}={tk.version} + runtimes.nvidia", found=found)
        return passed(found, found=found)

    return Check("nvidia.toolkit", "NVIDIA Container Toolkit installed and Docker runtime configured",
                 SEED["nvidia-toolkit"], f"dpkg-query -W {tk.package}; daemon.json runtimes",
                 "installed + runtimes.nvidia", fn, family="nvidia")


def nvidia_smi_check(model: HostModel) -> Check:
    drv = model.nvidia.driver
    upstream = (drv.version or "").split("-")[0]

    def fn(ctx: Context) -> Outcome:
        # Inside QEMU this check is not applicable (Check.not_on); on a real host no GPU is a failure.
        if not ctx.run(GPU_PROBE).stdout.strip():
            return failed("no NVIDIA GPU: no PCI device with vendor 0x10de on this host",
                          expected=f"an NVIDIA GPU with driver {upstream}", found="no NVIDIA PCI device")
        res = ctx.run("nvidia-smi --query-gpu=name,driver_version --format=csv,noheader", timeout=60)
        if not res.ok:
            return failed(f"nvidia-smi failed: {res.brief()}", expected="GPU listed")
        first = res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""
        name, _, ver = first.partition(",")
        if upstream and ver.strip() != upstream:
            return failed(f"nvidia-smi reports driver {ver.strip()}", expected=upstream, found=first)
        return passed(f"nvidia-smi: {first}", found=first)

    return Check("nvidia.smi", "nvidia-smi sees the GPU with the pinned driver", SEED["nvidia-smi"],
                 "nvidia-smi --query-gpu=name,driver_version", f"driver {upstream}", fn, family="nvidia",
                 not_on=NO_GPU_IN_QEMU)


def nvidia_checks(model: HostModel) -> list[Check]:
    return [driver_version_check(model), driver_hold_check(model), driver_pin_check(model),
            toolkit_check(model), nvidia_smi_check(model)]
