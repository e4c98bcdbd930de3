"""What gets installed when, from the host model: the package plan.

Three stages, because of how the real installer and cloud-init behave on noble (UBUNTU-FACTS.md):

- `install_time`: the autoinstall `packages:`, installed into the target inside the installer. The first
  boot mounts NFS (cloud-init `mounts`, init stage) before its own package stage, so `mount.nfs`
  (nfs-common) must already be there.
- `first_boot`: cloud-init's `packages:`, installed with ONE `apt-get install`: one unresolvable pin and
  nothing is installed. So families whose members depend on each other with `(= V)` are pinned as a
  whole at one version (NVIDIA's container toolkit), and the NVIDIA driver is NOT in it.
- `driver`: Canonical's signed prebuilt modules for the installed kernel flavour plus the no-DKMS driver
  userspace, installed by a separate script (`driver_script`, run last from `runcmd`) with its own
  `apt-get`: if it fails, Docker and NFS are installed all the same. On success it holds the driver with
  the kernel metapackages; when an NVIDIA GPU is present it refreshes the initramfs (nouveau blacklisted
  by `nouveau_blacklist`), tries `modprobe nvidia` unless nouveau is loaded, and if the module is still
  not loaded (nouveau holds the GPU, or the modules belong to a newer kernel ABI) asks for ONE reboot: it creates
  REBOOT_MARKER (under /run, so it is gone after that reboot), and cloud-init's `power_state`
  (condition: the marker exists) reboots once cloud-init has finished, so `nvidia-smi` works afterwards
  without a person. It runs only on the first boot (runcmd is once per instance), so it can never cause
  a second reboot; without an NVIDIA GPU (a VM) it never asks for one.

The linux-modules-nvidia-<branch>-<flavour> metapackage is not pinned by version: its version is the
kernel's ABI, not the driver's. It is installed in the same transaction as the flavour's kernel
metapackage (linux-<flavour>), so apt moves both to the same ABI, and afterwards both are held together
with the driver: the kernel and the modules change only when an operator lifts the holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from builder.model import HostModel
from builder.model.yamlsrc import PathKey
from builder.seed.templating import environment, render_template

MANAGED = "Managed by builder (prometheus host model); do not edit by hand."
TOOLKIT_FAMILY = ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools",
                  "libnvidia-container1")
DOCKER_VERSIONED = ("docker-ce", "docker-ce-cli")  # the packages whose version is Docker's release (docker.version)
INSTALL_TIME = ("nfs-common", "ca-certificates", "gnupg")
DRIVER_SCRIPT = "/usr/local/sbin/prometheus-nvidia-driver"
DRIVER_LOG = "/var/log/prometheus-nvidia-driver.log"
PREFERENCES_FILE = "/etc/apt/preferences.d/90-prometheus-pins"
NOUVEAU_FILE = "/etc/modprobe.d/blacklist-nouveau.conf"
REBOOT_MARKER = "/run/prometheus-nvidia-reboot"  # the driver step asks cloud-init's power_state for one reboot


@dataclass(frozen=True)
class Pin:
    """One package of a transaction: exact `version`, or None for the newest the enabled sources offer."""

    name: str
    version: str | None
    field: PathKey  # the model field that decides it (for file:line in problems)

    @property
    def apt_arg(self) -> str:
        return f"{self.name}={self.version}" if self.version else self.name

    @property
    def cloud_init(self) -> str | list[str]:
        """cloud-init's `packages:` form: a name, or [name, version]."""
        return [self.name, self.version] if self.version else self.name


@dataclass(frozen=True)
class FamilyPin:
    """A whole family pinned at one version by an apt preferences regex (`Package: /regex/`)."""

    pattern: str  # POSIX extended regex as apt reads it (also valid for Python's re)
    version: str
    field: PathKey


@dataclass(frozen=True)
class PackagePlan:
    install_time: tuple[str, ...]
    first_boot: tuple[Pin, ...]
    driver: tuple[Pin, ...]
    holds: tuple[str, ...]
    apt_preferences: str  # content of PREFERENCES_FILE
    nouveau_blacklist: str  # content of NOUVEAU_FILE
    driver_script: str  # content of DRIVER_SCRIPT
    kernel_meta: str = ""  # linux-<flavour>, installed in the driver step with...
    modules_meta: str = ""  # ...linux-modules-nvidia-<branch>-<flavour>: both must land on one kernel ABI
    family_pins: tuple[FamilyPin, ...] = ()  # the driver's (= V) family: its members are not all named above

    @property
    def first_boot_packages(self) -> list[Any]:
        return [p.cloud_init for p in self.first_boot]

    @property
    def preferences(self) -> tuple[Pin, ...]:
        """Every exact pin not covered by a family pin, as the preferences file pins it (Pin-Priority 1001)."""
        seen: dict[str, Pin] = {}
        for p in (*self.first_boot, *self.driver):
            if p.version and not any(re.search(f.pattern, p.name) for f in self.family_pins):
                seen.setdefault(p.name, p)
        return tuple(seen.values())

    @property
    def power_state(self) -> dict[str, Any] | None:
        """cloud-init `power_state`: reboot once, after cloud-init has finished, if the driver step asked for it."""
        if not self.driver:
            return None
        return {"mode": "reboot", "delay": "now", "timeout": 120,
                "message": "prometheus: rebooting once to load the NVIDIA driver",
                "condition": ["test", "-e", REBOOT_MARKER]}

    def files(self) -> list[dict[str, str]]:
        """write_files entries (path, mode, content) the first boot needs for this plan."""
        out = [{"path": PREFERENCES_FILE, "mode": "0644", "content": self.apt_preferences}]
        if self.driver:
            out += [{"path": NOUVEAU_FILE, "mode": "0644", "content": self.nouveau_blacklist},
                    {"path": DRIVER_SCRIPT, "mode": "0755", "content": self.driver_script}]
        return out


def _first_boot(m: HostModel) -> list[Pin]:
    pins: list[Pin] = []
    for i, name in enumerate(m.docker.packages):
        if m.docker.version and name in DOCKER_VERSIONED:
            pins.append(Pin(name, m.docker.version, ("docker", "version")))
        else:
            pins.append(Pin(name, None, ("docker", "packages", i)))
    tk = m.nvidia.container_toolkit
    if tk.enabled:
        if tk.version:
            pins += [Pin(name, tk.version, ("nvidia", "container_toolkit", "version")) for name in TOOLKIT_FAMILY]
        else:
            pins.append(Pin(tk.package, None, ("nvidia", "container_toolkit", "package")))
    from builder.seed.features import VIRT_PACKAGES, feature_packages  # the features' one package list

    for name in feature_packages(m):
        field = ("features", "virtualization", "enabled") if name in VIRT_PACKAGES else ("features", "monitoring")
        pins.append(Pin(name, None, field))
    return pins


def _driver(m: HostModel) -> list[Pin]:
    drv = m.nvidia.driver
    return [
        Pin(m.os.kernel_package, None, ("os", "kernel_package")),
        Pin(drv.modules_package, None, ("nvidia", "driver", "kernel_flavour")),
        Pin(drv.package, drv.version, ("nvidia", "driver", "version")),
        Pin(drv.utils_package, drv.version, ("nvidia", "driver", "version")),
    ]


def _families(m: HostModel) -> tuple[FamilyPin, ...]:
    """The driver packages depend on their siblings with (= V) (nvidia-kernel-common-<branch>,
    libnvidia-compute-<branch>, ...): apt only takes a sibling's pinned version when a preference says so."""
    drv = m.nvidia.driver
    if not drv.version:
        return ()
    return (FamilyPin(f"^(lib)?nvidia-[a-z0-9.+-]+-{drv.branch}$", drv.version,
                      ("nvidia", "driver", "version")),)


def _holds(m: HostModel) -> tuple[str, ...]:
    drv = m.nvidia.driver
    if not drv.hold:
        return ()
    flavour = drv.kernel_flavour
    return (drv.modules_package, drv.package, drv.utils_package,
            f"linux-{flavour}", f"linux-image-{flavour}", f"linux-headers-{flavour}")


def package_plan(model: HostModel, managed: str = MANAGED) -> PackagePlan:
    first_boot = tuple(_first_boot(model))
    driver = tuple(_driver(model))
    holds = _holds(model)
    env = environment()
    families = _families(model)
    partial = PackagePlan(INSTALL_TIME, first_boot, driver, holds, "", "", "", family_pins=families)
    ctx = {
        "managed": managed, "pins": partial.preferences, "families": families, "driver": driver, "holds": holds,
        "log": DRIVER_LOG, "script": DRIVER_SCRIPT, "nouveau_file": NOUVEAU_FILE, "reboot_marker": REBOOT_MARKER,
    }
    return PackagePlan(
        install_time=INSTALL_TIME, first_boot=first_boot, driver=driver, holds=holds,
        apt_preferences=render_template(env, "cloud-init/files/nvidia-pin.pref.j2", ctx),
        nouveau_blacklist=render_template(env, "cloud-init/files/blacklist-nouveau.conf.j2", ctx),
        driver_script=render_template(env, "cloud-init/files/nvidia-driver.sh.j2", ctx),
        kernel_meta=model.os.kernel_package, modules_meta=model.nvidia.driver.modules_package,
        family_pins=families,
    )
