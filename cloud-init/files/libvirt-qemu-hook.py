#!/usr/bin/python3
"""libvirt QEMU hook: refuse guests that break the host's virtualization policy.

Installed by builder as /etc/libvirt/hooks/qemu. libvirt runs it as
`qemu <guest> <operation> <sub-operation> <extra>` with the domain XML on stdin; when it exits
non-zero on `prepare begin`, the guest does not start and libvirt shows this script's stderr.

Seed policy ("Virtualization Stack (Optional)"):
  CPU mode: host-passthrough / CPU overcommit: disabled / Memory overcommit: disabled /
  GPU passthrough: not default.
The thresholds come from the policy file rendered from the host model. Host facts come from the
system; PROMETHEUS_POLICY_HOST_CPUS, PROMETHEUS_POLICY_HOST_MEMORY_KIB and PROMETHEUS_POLICY_RUN_DIR
override them (tests). A hook must never call back into libvirt (virsh would deadlock), so running
guests are read from libvirt's status files (/run/libvirt/qemu/<guest>.xml).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass

POLICY_FILE = "/etc/libvirt/hooks/prometheus-policy.json"
RUN_DIR = "/run/libvirt/qemu"
CHECKED_OPERATIONS = {("prepare", "begin")}
UNIT_KIB = {
    "b": 1 / 1024, "bytes": 1 / 1024,
    "kb": 1000 / 1024, "k": 1, "kib": 1,
    "mb": 1000**2 / 1024, "m": 1024, "mib": 1024,
    "gb": 1000**3 / 1024, "g": 1024**2, "gib": 1024**2,
    "tb": 1000**4 / 1024, "t": 1024**3, "tib": 1024**3,
}


@dataclass(frozen=True)
class Guest:
    name: str
    cpu_mode: str | None  # None: no <cpu> element (QEMU's default model)
    vcpus: int
    memory_kib: int
    pci_hostdevs: tuple[str, ...]


@dataclass(frozen=True)
class HostFacts:
    cpus: int
    memory_kib: int
    running: tuple[Guest, ...]


def _memory_kib(el: ET.Element | None) -> int:
    text = "" if el is None else (el.text or "").strip()
    if el is None or not text:
        return 0
    unit = (el.get("unit") or "KiB").lower()
    if unit not in UNIT_KIB:
        raise ValueError(f"unknown memory unit {el.get('unit')!r}")
    return int(int(text) * UNIT_KIB[unit])


def parse_guest(xml_text: str) -> Guest:
    """A guest from a <domain> document (or a libvirt <domstatus> that wraps one)."""
    root = ET.fromstring(xml_text)
    dom = root if root.tag == "domain" else root.find("domain")
    if dom is None:
        raise ValueError("no <domain> element")
    cpu = dom.find("cpu")
    cpu_mode = None if cpu is None else cpu.get("mode", "custom")
    vcpu = dom.find("vcpu")
    vcpus = int((vcpu.text or "1").strip()) if vcpu is not None else 1
    hostdevs = []
    for hd in dom.findall("devices/hostdev"):
        if hd.get("type") == "pci":
            addr = hd.find("source/address")
            if addr is None:
                hostdevs.append("pci")
            else:
                parts = (addr.get(k, "?") for k in ("domain", "bus", "slot", "function"))
                hostdevs.append("{}:{}:{}.{}".format(*parts))
    return Guest(dom.findtext("name", default="?"), cpu_mode, vcpus, _memory_kib(dom.find("memory")), tuple(hostdevs))


def host_facts(exclude: str) -> HostFacts:
    cpus = os.environ.get("PROMETHEUS_POLICY_HOST_CPUS")
    mem = os.environ.get("PROMETHEUS_POLICY_HOST_MEMORY_KIB")
    run_dir = os.environ.get("PROMETHEUS_POLICY_RUN_DIR", RUN_DIR)
    if cpus is None:
        cpus = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    if mem is None:
        with open("/proc/meminfo", encoding="ascii") as f:
            mem = next(line.split()[1] for line in f if line.startswith("MemTotal:"))
    running = []
    for path in sorted(glob.glob(os.path.join(run_dir, "*.xml"))):
        with open(path, encoding="utf-8") as f:
            g = parse_guest(f.read())
        if g.name != exclude:
            running.append(g)
    return HostFacts(int(cpus), int(mem), tuple(running))


def violations(guest: Guest, policy: dict, host: HostFacts) -> list[str]:
    """Every reason to refuse the guest (empty: it may start)."""
    out = []
    want = policy["cpu_mode"]
    if guest.cpu_mode != want:
        found = "no <cpu> element (QEMU's default CPU model)" if guest.cpu_mode is None else f"mode '{guest.cpu_mode}'"
        out.append(f"CPU mode must be {want} (seed: \"CPU mode: host-passthrough\"); the guest has {found}. "
                   f"Add <cpu mode='{want}' check='none' migratable='on'/> to its definition.")
    if not policy["cpu_overcommit"]:
        used = sum(g.vcpus for g in host.running)
        if used + guest.vcpus > host.cpus:
            out.append(f"CPU overcommit is disabled (seed: \"CPU overcommit: disabled\"): {guest.vcpus} vCPUs "
                       f"+ {used} of running guests = {used + guest.vcpus} > {host.cpus} host CPUs.")
    if not policy["memory_overcommit"]:
        used = sum(g.memory_kib for g in host.running)
        limit = host.memory_kib - policy["memory_reserve_mib"] * 1024
        if used + guest.memory_kib > limit:
            out.append(f"memory overcommit is disabled (seed: \"Memory overcommit: disabled\"): "
                       f"{guest.memory_kib // 1024} MiB + {used // 1024} MiB of running guests = "
                       f"{(used + guest.memory_kib) // 1024} MiB > {max(limit, 0) // 1024} MiB available "
                       f"(host {host.memory_kib // 1024} MiB minus a {policy['memory_reserve_mib']} MiB reserve).")
    if guest.pci_hostdevs and not policy["gpu_passthrough"]:
        out.append(f"PCI device passthrough (GPU passthrough) is disabled (seed: \"GPU passthrough: not default "
                   f"(container GPU runtime preferred)\"): the guest passes through {', '.join(guest.pci_hostdevs)}.")
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 3 or (argv[2], argv[3] if len(argv) > 3 else "") not in CHECKED_OPERATIONS:
        return 0
    name = argv[1]
    try:
        with open(os.environ.get("PROMETHEUS_POLICY_FILE", POLICY_FILE), encoding="utf-8") as f:
            policy = json.load(f)
        guest = parse_guest(sys.stdin.read())
        problems = violations(guest, policy, host_facts(exclude=name))
    except (OSError, ValueError, KeyError, ET.ParseError) as exc:
        print(f"prometheus virtualization policy: cannot check guest {name!r}, refusing it: {exc}", file=sys.stderr)
        return 1
    if problems:
        print(f"prometheus virtualization policy refuses guest {name!r}:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
