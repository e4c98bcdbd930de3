"""The real machine's facts, captured before a reinstall, and the model's matchers checked against them.

An admin runs one command on the running host (no root needed) and saves the output beside the
model::

    { echo '### builder-machine-facts 1'
      echo '### firmware'; if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi
      echo '### lsblk'; lsblk --json -O -b
      echo '### udev'; udevadm info --export-db
      echo '### ip'; ip -j link
    } > prometheus.facts

`builder validate --machine prometheus.facts` then resolves every disk matcher of the model with
subiquity's rules (builder/disks.py) and every NIC MAC: which disk each matcher selects, which
disks are left alone, which MACs exist, or a problem with the model's file:line per mismatch.

The file is plain text: `### <section>` lines separate the outputs of the four tools (`lsblk` and
`ip` are JSON, `udev` is udevadm's export format: records of `X: value` lines, blank-line separated).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder.errors import BuilderError, Problem
from builder.model.disks import DISK_KEYS, DiskFacts, Matcher, human_size, matcher_for, subiquity_matches
from builder.model.typedparse import Collector
from builder.model.yamlsrc import load_yaml_file

if TYPE_CHECKING:
    from builder.model import HostModel

HEADER = "### builder-machine-facts 1"
SECTIONS = ("firmware", "lsblk", "udev", "ip")
# The same command as in the module docstring, on one line (for hints and the README).
CAPTURE_COMMAND = (
    "{ echo '### builder-machine-facts 1'; echo '### firmware'; "
    "if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi; "
    "echo '### lsblk'; lsblk --json -O -b; echo '### udev'; udevadm info --export-db; "
    "echo '### ip'; ip -j link; } > prometheus.facts"
)
CAPTURE_HINT = f"capture the facts on the running host (no root needed): {CAPTURE_COMMAND}"
NVME_KNAME = re.compile(r"^nvme\d+n(\d+)$")
MEMORY_DISK = re.compile(r"^(zram|ram)\d+$")


@dataclass(frozen=True)
class NicFacts:
    name: str
    mac: str
    permaddr: str = ""  # the burnt-in MAC when a bond or a tool changed `mac`

    def has(self, mac: str) -> bool:
        return mac.lower() in (self.mac, self.permaddr)


@dataclass(frozen=True)
class MachineFacts:
    path: str
    firmware: str  # uefi | bios (how the running host booted)
    disks: tuple[DiskFacts, ...]
    nics: tuple[NicFacts, ...]
    notes: tuple[str, ...] = ()  # what was adjusted to the installer's view, for the report


def _sections(text: str, path: str) -> dict[str, str]:
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise BuilderError(f"{path}: not a machine facts file (its first line must be {HEADER!r})", hint=CAPTURE_HINT)
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[1:]:
        if line.startswith("### "):
            current = out.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
    missing = [s for s in SECTIONS if s not in out]
    if missing:
        raise BuilderError(f"{path}: machine facts lack the section(s) {', '.join(missing)}", hint=CAPTURE_HINT)
    return {k: "\n".join(v) for k, v in out.items()}


def _json(text: str, section: str, path: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BuilderError(f"{path}: section {section} is not JSON ({exc})", hint=CAPTURE_HINT) from None


def parse_udev_db(text: str) -> dict[str, dict[str, str]]:
    """`udevadm info --export-db` -> {kernel name: properties} for whole block disks."""
    out: dict[str, dict[str, str]] = {}
    for record in re.split(r"\n\s*\n", text):
        props: dict[str, str] = {}
        name = ""
        for line in record.splitlines():
            tag, _, value = line.partition(": ")
            if tag == "E":
                key, _, val = value.partition("=")
                props[key] = val
            elif tag == "N":
                name = value.strip()
        if props.get("SUBSYSTEM") == "block" and props.get("DEVTYPE") == "disk":
            name = name or props.get("DEVNAME", "").removeprefix("/dev/")
            if name:
                out[name] = props
    return out


def _flag(value: Any) -> bool:
    return value in (True, 1, "1", "true")


def _installer_view(name: str, props: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """Properties as the 24.04 installer's udev computes them. udev < 254 (e.g. a host on 22.04)
    leaves the `_<nsid>` suffix off NVMe ID_SERIALs and sets no ID_NSID: add it back."""
    m = NVME_KNAME.match(name)
    serial = props.get("ID_SERIAL", "")
    if m and serial and "ID_NSID" not in props and not serial.endswith(f"_{m.group(1)}"):
        new = f"{serial}_{m.group(1)}"
        return {**props, "ID_SERIAL": new, "ID_NSID": m.group(1)}, (
            f"{name}: ID_SERIAL {serial!r} captured with udev < 254; the 24.04 installer sees {new!r}")
    return props, None


def parse_facts(text: str, path: str) -> MachineFacts:
    sec = _sections(text, path)
    firmware = sec["firmware"].strip()
    if firmware not in ("uefi", "bios"):
        raise BuilderError(f"{path}: section firmware says {firmware!r}; expected uefi or bios", hint=CAPTURE_HINT)
    lsblk = _json(sec["lsblk"], "lsblk", path)
    udev = parse_udev_db(sec["udev"])
    if not udev:
        raise BuilderError(f"{path}: section udev holds no disk records, so the installer's ID_SERIALs are unknown "
                           "(did `udevadm info --export-db` run?)", hint=CAPTURE_HINT)
    disks: list[DiskFacts] = []
    notes: list[str] = []
    for dev in lsblk.get("blockdevices", []) if isinstance(lsblk, dict) else []:
        name = dev.get("kname") or dev.get("name") or ""
        if dev.get("type") != "disk" or MEMORY_DISK.match(name):
            continue  # loop devices, CD-ROMs, compressed-RAM swap
        props = udev.get(name)
        if props is None:
            notes.append(f"{name}: no udev record in the facts; only its kernel name and size are known")
            props = {}
        props, note = _installer_view(name, props)
        if note:
            notes.append(note)
        disks.append(DiskFacts(
            name=name, size=int(dev.get("size") or 0), props=props, model=(dev.get("model") or "").strip(),
            transport=dev.get("tran") or "", removable=_flag(dev.get("rm")), rotational=_flag(dev.get("rota")),
        ))
    links = _json(sec["ip"], "ip", path)
    nics = tuple(
        NicFacts(link["ifname"], str(link.get("address", "")).lower(), str(link.get("permaddr", "")).lower())
        for link in links if isinstance(link, dict) and link.get("link_type") == "ether" and link.get("ifname")
    )
    return MachineFacts(path, firmware, tuple(disks), nics, tuple(notes))


def load_facts(path: Path) -> MachineFacts:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BuilderError(f"machine facts file not found: {path}", hint=CAPTURE_HINT) from None
    return parse_facts(text, str(path))


# --- resolving the model against the facts -------------------------------------------------------

@dataclass(frozen=True)
class DiskResolution:
    key: str  # os_disk | scratch
    matcher: Matcher
    selected: tuple[DiskFacts, ...]


@dataclass(frozen=True)
class NicResolution:
    key: str
    mac: str
    name: str  # the name the model gives it (netplan set-name)
    found: NicFacts | None


@dataclass(frozen=True)
class FactsReport:
    facts: MachineFacts
    disks: tuple[DiskResolution, ...]
    untouched: tuple[DiskFacts, ...]
    nics: tuple[NicResolution, ...]
    problems: tuple[Problem, ...] = field(default=())

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def lines(self) -> list[str]:
        f = self.facts
        out = [f"machine facts {f.path}: firmware {f.firmware}, {len(f.disks)} disk(s), {len(f.nics)} NIC(s)"]
        rows: list[tuple[str, str, str]] = []
        for d in self.disks:
            if len(d.selected) == 1:
                got = d.selected[0].describe()
            elif d.selected:
                got = f"{len(d.selected)} DISKS: " + ", ".join(s.path for s in d.selected)
            else:
                got = "NO DISK"
            rows.append((f"storage.{d.key}", d.matcher.describe(), got))
        for u in self.untouched:
            rows.append(("left alone", u.id_serial or "(no ID_SERIAL)", u.describe()))
        for n in self.nics:
            rows.append((f"network.{n.key}", n.mac, f"{n.found.name} (renamed {n.name})" if n.found else "NOT FOUND"))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        out += [f"  {a:<{w0}}  {b:<{w1}}  -> {c}" for a, b, c in rows]
        out += [f"  note: {n}" for n in f.notes]
        return out


def _disk_list(facts: MachineFacts) -> str:
    items = [f"{d.name} ID_SERIAL={d.id_serial or '(none)'} ({d.model or '?'}, {human_size(d.size)}, {d.bus or '?'})"
             for d in facts.disks]
    return "; ".join(items) or "no disks"


def _near_misses(m: HostModel, key: str, facts: MachineFacts) -> str:
    """A hint when a disk carries the modelled identifier but in another shape (wrong bus, SATA WWN)."""
    dm = getattr(m.storage, key).match
    for d in facts.disks:
        if dm.serial and dm.serial == d.props.get("ID_SCSI_SERIAL") and dm.serial not in d.id_serial:
            return (f" {d.path} has serial {dm.serial}, but behind its controller udev builds ID_SERIAL "
                    f"{d.id_serial!r} without it: name it by id_serial (or wwn).")
        if dm.serial and dm.serial in (d.id_serial_short, d.id_serial) and d.bus:
            bus = {"ata": "sata", "sata": "sata", "nvme": "nvme", "virtio": "virtio", "scsi": "scsi"}.get(d.bus)
            if bus and bus != dm.bus:
                return (f" {d.path} has serial {dm.serial} on bus {d.bus}, not {dm.bus}: its ID_SERIAL is "
                        f"{d.id_serial!r}; if that is the disk, set bus: {bus}.")
            return f" {d.path} has serial {dm.serial} but its ID_SERIAL is {d.id_serial!r}: name it by id_serial."
        if dm.wwn and d.wwn.lower() == dm.wwn.lower():
            return (f" {d.path} has WWN {dm.wwn} but its ID_SERIAL is {d.id_serial!r}, which subiquity matches: "
                    "name it by serial or id_serial.")
    return ""


def resolve_against_facts(model: HostModel, facts: MachineFacts, collector: Collector | None = None) -> FactsReport:
    """Resolve every disk matcher (as rendered) and NIC MAC of the model against the machine's facts.

    Problems name the model's file:line of the field and the facts compared with.
    """
    c = collector or Collector(load_yaml_file(model.source_path))
    resolutions: list[DiskResolution] = []
    chosen: dict[str, str] = {}  # kernel name -> model key
    for key in DISK_KEYS:
        disk = getattr(model.storage, key)
        if disk is None:
            continue
        mt = matcher_for(disk.match)
        path = ("storage", key, "match", mt.source)
        selected = tuple(subiquity_matches({"type": "disk", "id": f"disk-{key}", **mt.keys}, facts.disks))
        resolutions.append(DiskResolution(key, mt, selected))
        if not selected:
            c.add(path, f"matched no disk: {mt.describe()} selects none of the machine's disks "
                        f"(facts {facts.path}: {_disk_list(facts)}).{_near_misses(model, key, facts)}")
        elif len(selected) > 1:
            c.add(path, f"matched {len(selected)} disks ({', '.join(d.path for d in selected)}); subiquity would take "
                        f"{selected[0].path} by probe order (facts {facts.path}): name the disk so that one matches")
        else:
            name = selected[0].name
            if name in chosen:
                c.add(path, f"selects {selected[0].path}, the disk storage.{chosen[name]} selects too: the installer "
                            f"stops ('matched … which was already used') (facts {facts.path})")
            chosen.setdefault(name, key)
    used = {d.name for r in resolutions for d in r.selected}
    untouched = tuple(d for d in facts.disks if d.name not in used)
    nics: list[NicResolution] = []
    for key, iface in model.network.interfaces.items():
        found = next((n for n in facts.nics if n.has(iface.mac)), None)
        nics.append(NicResolution(key, iface.mac.lower(), iface.name, found))
        if found is None:
            listing = ", ".join(f"{n.name} {n.mac}" for n in facts.nics) or "no Ethernet NICs"
            c.add(("network", "interfaces", key, "mac"),
                  f"no NIC of the machine has MAC {iface.mac.lower()} (facts {facts.path}: {listing})")
    if facts.firmware != model.host.firmware:
        c.add(("host", "firmware"),
              f"the machine booted with {facts.firmware} (facts {facts.path}) but the model says "
              f"{model.host.firmware}: the installer boots the way the machine does and would not find the "
              f"bootloader partition it needs; set firmware: {facts.firmware} or change the boot mode first")
    return FactsReport(facts, tuple(resolutions), untouched, tuple(nics), tuple(c.problems))


def facts_from_props(name: str, size: int, props: Mapping[str, str], **kw: Any) -> DiskFacts:
    """A DiskFacts for tests and test doubles (props as from `builder.model.disks.udev_properties`)."""
    return DiskFacts(name=name, size=size, props=dict(props), **kw)
