"""Disks as an admin sees them, matched as the Ubuntu 24.04 installer (subiquity) matches them.

Three pieces, all pure functions (no I/O):

* `udev_properties()` computes the udev properties (`ID_SERIAL`, `ID_SERIAL_SHORT`, ...) a disk of a
  given kind gets, so tests and test doubles can present real-shaped disks.
* `subiquity_matches()` applies subiquity's rules for one autoinstall `disk` action to a list of
  disks; `render_disk_match()` writes the keys that make subiquity select exactly the modelled disk.
* `storage_config()` renders the whole autoinstall `storage:` section for the modelled firmware;
  `bootloader_problems()` checks a storage config against the bootloader rule of UBUNTU-FACTS.

Sources (branch `ubuntu/noble` unless noted), see ../shared/UBUNTU-FACTS.md:
- canonical/subiquity `subiquity/models/filesystem.py`: `FilesystemModel.apply_autoinstall_config`
  (`serial:` exact via `_one(type="disk", serial=...)`, else `path:` exact, else `match:`),
  `_make_matchers` (fnmatchcase on udev ID_SERIAL / ID_MODEL / ID_VENDOR, kernel path; ssd; size
  sorts; disks of size 0 never match), `disk_for_match` (first candidate wins),
  `needs_bootloader_partition` (BIOS: a disk with grub_device; UEFI: a grub_device partition
  mounted at /boot/efi).
- canonical/curtin `curtin/storage_config.py`: a disk's serial is ID_SERIAL, ID_SERIAL_SHORT only
  when ID_SERIAL is missing.
- systemd `rules.d/60-persistent-storage.rules` (PR #26814, systemd >= 254, Ubuntu 24.04): NVMe
  ID_SERIAL is `<model>_<serial>_<nsid>`; udev `ata_id` / `scsi_id` build `<model>_<serial>` and
  `0<vendor>_<model>_<device_id>`; virtio-blk's ID_SERIAL is the bare serial.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from builder.errors import BuilderError

if TYPE_CHECKING:
    from builder.model import Disk, DiskMatch, HostModel
    from builder.model.typedparse import Collector

HW_SERIAL_MAX = 20  # ATA IDENTIFY and NVMe Identify serial fields; virtio-blk; QEMU < 9.1 scsi-hd
SERIAL_MIN = 4  # a shorter serial is a suffix of too many others to single out a disk
GLOB_CHARS = frozenset("*?[]")
# udev keeps these characters in ID_SERIAL/ID_SERIAL_SHORT and turns every other one into '_'
# (udev_replace_whitespace + udev_replace_chars); a serial with others was not copied from lsblk.
SERIAL_RE = re.compile(r"^[A-Za-z0-9#+\-.:=@_]+$")
WWN_RE = re.compile(r"^0x([0-9a-f]{16}|[0-9a-f]{32})$")
NVME_NSID = 1  # the namespace a drive's capacity lives in; the installer sees ..._1
DISK_KEYS = ("os_disk", "scratch")


# --- udev properties of real-shaped disks ------------------------------------------------------

def _udev_escape(text: str) -> str:
    """udev's whitespace handling: strip, then every run of whitespace becomes one '_'."""
    return re.sub(r"\s+", "_", text.strip())


def udev_properties(
    kind: str,
    model: str,
    serial: str,
    *,
    vendor: str = "",
    nsid: int = NVME_NSID,
    device_id: str | None = None,
    wwn: str | None = None,
    qemu_version: tuple[int, int] = (8, 2),
    usb_instance: str = "0:0",
) -> dict[str, str]:
    """The udev properties Ubuntu 24.04's udev gives a whole disk of `kind`.

    kind: "sata" (ATA, also QEMU ide-hd/ahci), "nvme" (systemd >= 254: `_<nsid>` suffix),
    "scsi-hd" (QEMU scsi-hd: `0QEMU_QEMU_HARDDISK_<device_id>`, or `3<wwn>` with wwn=; device_id
    defaults to the serial, cut to 20 characters before QEMU 9.1 and refused over 20 from 9.1),
    "virtio" (virtio-blk: the bare serial, cut to 20 by the kernel), "usb" (usb-storage:
    `<vendor>_<model>_<serial>-<instance>`).
    """
    mdl = _udev_escape(model)
    short = _udev_escape(serial)
    if kind == "sata":
        return {"ID_BUS": "ata", "ID_ATA": "1", "ID_MODEL": mdl, "ID_SERIAL": f"{mdl}_{short}",
                "ID_SERIAL_SHORT": short}
    if kind == "nvme":
        return {"ID_BUS": "nvme", "ID_MODEL": mdl, "ID_NSID": str(nsid), "ID_SERIAL": f"{mdl}_{short}_{nsid}",
                "ID_SERIAL_SHORT": short}
    if kind == "scsi-hd":
        if device_id is None:
            if len(serial) > HW_SERIAL_MAX:
                if qemu_version >= (9, 1):
                    raise BuilderError(f"QEMU >= 9.1 refuses a scsi-hd serial over {HW_SERIAL_MAX} characters "
                                       f"without device_id: {serial!r}")
                device_id = serial[:HW_SERIAL_MAX]  # QEMU < 9.1 silently cuts it
            else:
                device_id = serial
        props = {"ID_BUS": "scsi", "ID_VENDOR": "QEMU", "ID_MODEL": "QEMU_HARDDISK"}
        if wwn:
            hexpart = wwn.lower().removeprefix("0x")
            return {**props, "ID_SERIAL": f"3{hexpart}", "ID_SERIAL_SHORT": hexpart, "ID_WWN": f"0x{hexpart}",
                    "ID_WWN_WITH_EXTENSION": f"0x{hexpart}"}
        return {**props, "ID_SERIAL": f"0QEMU_QEMU_HARDDISK_{_udev_escape(device_id)}",
                "ID_SERIAL_SHORT": _udev_escape(device_id)}
    if kind == "virtio":
        return {"ID_SERIAL": serial[:HW_SERIAL_MAX]}  # no ID_BUS, no ID_SERIAL_SHORT for vd*
    if kind == "usb":
        vnd = _udev_escape(vendor)
        return {"ID_BUS": "usb", "ID_VENDOR": vnd, "ID_MODEL": mdl,
                "ID_SERIAL": f"{vnd}_{mdl}_{short}-{usb_instance}", "ID_SERIAL_SHORT": short}
    raise ValueError(f"unknown disk kind {kind!r}")


@dataclass(frozen=True)
class DiskFacts:
    """One whole disk as the installer sees it: kernel name, size and its udev properties."""

    name: str  # kernel name: sda, nvme0n1, vda
    size: int  # bytes
    props: Mapping[str, str] = field(default_factory=dict, hash=False)
    model: str = ""  # as lsblk shows it (spaces kept)
    transport: str = ""  # lsblk TRAN: sata, nvme, usb, virtio, ... ("" when unknown)
    removable: bool = False
    rotational: bool = False
    in_use: bool = False  # holds a mounted partition in the installer (the install medium)

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def id_serial(self) -> str:
        return self.props.get("ID_SERIAL", "")

    @property
    def id_serial_short(self) -> str:
        return self.props.get("ID_SERIAL_SHORT", "")

    @property
    def wwn(self) -> str:
        return self.props.get("ID_WWN_WITH_EXTENSION") or self.props.get("ID_WWN", "")

    @property
    def curtin_serial(self) -> str | None:
        """curtin's disk serial, which subiquity's exact `serial:` compares with."""
        return self.props.get("ID_SERIAL") or self.props.get("ID_SERIAL_SHORT") or None

    @property
    def bus(self) -> str:
        return self.transport or self.props.get("ID_BUS", "") or ("virtio" if self.name.startswith("vd") else "")

    def describe(self) -> str:
        what = self.model or self.props.get("ID_MODEL", "").replace("_", " ") or "?"
        return f"{self.path} ({what}, {human_size(self.size)}, {self.bus or 'bus ?'})"


def human_size(size: int) -> str:
    for unit, div in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if size >= div:
            return f"{size / div:.1f} {unit}"
    return f"{size} B"


# --- subiquity's matching ------------------------------------------------------------------------

def _match_fns(m: Mapping[str, Any]) -> list[Any]:
    """subiquity `FilesystemModel._make_matchers`: every key narrows; a missing udev value is ''."""

    def udev(d: DiskFacts, key: str) -> str:
        return d.props.get(key, "")

    fns: list[Any] = [lambda d: d.size != 0]
    if m.get("install-media", False):
        fns.append(lambda d: d.in_use)
    for key, prop in (("serial", "ID_SERIAL"), ("model", "ID_MODEL"), ("vendor", "ID_VENDOR"),
                      ("id_path", "ID_PATH"), ("devpath", "DEVPATH")):
        if key in m:
            fns.append(lambda d, k=key, p=prop: fnmatch.fnmatchcase(udev(d, p), m[k]))
    if "path" in m:
        fns.append(lambda d: fnmatch.fnmatchcase(d.path, m["path"]))
    if "ssd" in m:
        fns.append(lambda d: (not d.rotational) == m["ssd"])
    if "size" in m or "ssd" in m:
        fns.append(lambda d: not d.in_use)
    return fns


def subiquity_matches(action: Mapping[str, Any], disks: Sequence[DiskFacts]) -> list[DiskFacts]:
    """Every disk subiquity could select for this `disk` action, in the order it would prefer them.

    subiquity itself takes the first (`_one` / `disk_for_match`), so more than one means the choice
    depends on probe order: builder treats that as an error. `serial:` is exact against curtin's
    serial (ID_SERIAL, else ID_SERIAL_SHORT) and then `match:` is ignored; `path:` is exact against
    the kernel path; `match:` (a dict, or a list tried in order) filters by fnmatch and sorts by size.
    """
    if "serial" in action:
        return [d for d in disks if d.curtin_serial == action["serial"]]
    if "path" in action:
        return [d for d in disks if d.path == action["path"]]
    match = action.get("match", {})
    for directive in match if isinstance(match, list) else [match]:
        fns = _match_fns(directive)
        found = [d for d in disks if all(fn(d) for fn in fns)]
        if directive.get("size") == "smallest":
            found.sort(key=lambda d: d.size)
        elif directive.get("size") == "largest":
            found.sort(key=lambda d: d.size, reverse=True)
        if found:
            return found
    return []


# --- the model's matcher -------------------------------------------------------------------------

@dataclass(frozen=True)
class Matcher:
    """What a modelled disk renders to, and the set of ID_SERIALs it accepts (exact or a suffix)."""

    source: str  # the model field it comes from: serial, id_serial, wwn
    keys: Mapping[str, Any] = field(hash=False)  # the keys of the autoinstall disk action
    exact: str | None = None  # accepts exactly this ID_SERIAL ...
    suffix: str | None = None  # ... or every ID_SERIAL ending in this

    def accepts(self, id_serial: str) -> bool:
        if self.exact is not None:
            return id_serial == self.exact
        return self.suffix is not None and id_serial.endswith(self.suffix)

    def describe(self) -> str:
        if "serial" in self.keys:
            return f"serial == {self.keys['serial']!r}"
        return f"ID_SERIAL like {self.keys['match']['serial']!r}"


def matcher_for(match: DiskMatch) -> Matcher:
    """The matcher for one modelled disk (the model must have passed `check_disks`)."""
    if match.id_serial:
        return Matcher("id_serial", {"serial": match.id_serial}, exact=match.id_serial)
    if match.wwn:
        sid = "3" + match.wwn.lower().removeprefix("0x")
        return Matcher("wwn", {"serial": sid}, exact=sid)
    serial = match.serial or ""
    if match.bus == "virtio":
        return Matcher("serial", {"serial": serial}, exact=serial)
    tail = f"_{serial}_{NVME_NSID}" if match.bus == "nvme" else f"_{serial}"
    return Matcher("serial", {"match": {"serial": f"*{tail}"}}, suffix=tail)


def render_disk_match(disk: Disk) -> dict[str, Any]:
    """The keys that make subiquity select exactly the modelled disk on real udev data.

    - `serial` + bus sata or scsi: `match: {serial: "*_<serial>"}`. udev's ID_SERIAL is
      `<model>_<serial>` (ATA) or `0QEMU_QEMU_HARDDISK_<device_id>` (QEMU scsi-hd), and subiquity
      fnmatches the glob over the whole ID_SERIAL, so the model string need not be known. The '_'
      anchors the serial: `*_ABC123` does not match a disk whose serial is `XABC123`.
    - `serial` + bus nvme: `match: {serial: "*_<serial>_1"}`: on 24.04 udev appends the namespace
      id; namespace 1 is the drive's capacity (a second namespace would be another disk).
    - `serial` + bus virtio: `serial: <serial>`: virtio-blk's ID_SERIAL is the bare serial, and the
      exact form needs no glob.
    - `id_serial`: `serial: <ID_SERIAL>`, compared exactly (`==`) by subiquity.
    - `wwn`: `serial: 3<wwn hex>`: subiquity has no WWN matcher (a `wwn:` key alone falls through
      to an empty `match:` that takes the first disk!), but SCSI/SAS disks' ID_SERIAL is the NAA
      designator `3<wwn>`.
    No `path:` is rendered: kernel names are not stable, and there is no /dev/disk/by-id matcher.
    """
    return dict(matcher_for(disk.match).keys)


def _overlap(a: Matcher, b: Matcher) -> str | None:
    """An ID_SERIAL both matchers accept, or None when no disk can satisfy both."""
    if a.exact is not None and b.exact is not None:
        return a.exact if a.exact == b.exact else None
    if a.exact is not None and b.suffix is not None:
        return a.exact if a.exact.endswith(b.suffix) else None
    if b.exact is not None and a.suffix is not None:
        return b.exact if b.exact.endswith(a.suffix) else None
    if a.suffix is not None and b.suffix is not None:
        longer = a.suffix if len(a.suffix) >= len(b.suffix) else b.suffix
        shorter = b.suffix if longer is a.suffix else a.suffix
        return f"Model{longer}" if longer.endswith(shorter) else None
    return None


def check_disks(m: HostModel, c: Collector) -> None:
    """Model rules for storage: each disk named one way, as the hardware can carry it, unambiguously."""
    seen: list[tuple[str, Matcher]] = []
    for key in DISK_KEYS:
        disk = getattr(m.storage, key)
        if disk is None:
            continue
        base = ("storage", key, "match")
        dm = disk.match
        given = [f for f in ("serial", "id_serial", "wwn") if getattr(dm, f) is not None]
        if len(given) != 1:
            c.add(base, "name the disk by exactly one of 'serial' (with 'bus'), 'id_serial' or 'wwn'"
                        f" (found {', '.join(given) or 'none'})")
            continue
        fld = given[0]
        value: str = getattr(dm, fld)
        path = (*base, fld)
        if not value.strip():
            c.add(path, "is empty; expected the disk's identifier")
            continue
        if GLOB_CHARS & set(value):
            c.add(path, f"{value!r} contains wildcards and could select more than one disk; "
                        f"give the full {fld} without wildcards")
            continue
        if fld == "serial":
            if dm.bus is None:
                c.add((*base, "bus"), "missing: say how the disk is attached (sata, nvme, virtio or scsi): "
                                      "udev builds the installer's ID_SERIAL from the serial differently")
                continue
            if len(value) > HW_SERIAL_MAX:
                c.add(path, f"{value!r} has {len(value)} characters, longer than the {HW_SERIAL_MAX}-character "
                            "serial field of a disk; copy it from `lsblk -o NAME,SERIAL`")
                continue
            if not SERIAL_RE.match(value):
                c.add(path, f"{value!r} has characters udev replaces with '_' (spaces, '/', ...); "
                            "copy the serial as `lsblk -o NAME,SERIAL` shows it")
                continue
            if len(value) < SERIAL_MIN:
                c.add(path, f"{value!r} is too short to single out a disk (at least {SERIAL_MIN} characters)")
                continue
        else:
            if dm.bus is not None:
                c.add((*base, "bus"), f"bus goes with serial only; {fld} already names the disk")
            if fld == "id_serial" and not SERIAL_RE.match(value):
                c.add(path, f"{value!r} is not a udev ID_SERIAL (udev turns spaces and other characters into '_'); "
                            "copy it from `udevadm info -q property -n /dev/X`")
                continue
            if fld == "wwn" and not WWN_RE.match(value.lower()):
                c.add(path, f"expected a SCSI/SAS WWN as `lsblk -o WWN` shows it (0x + 16 or 32 hex digits), "
                            f"found {value!r}; subiquity cannot select SATA or NVMe disks by WWN: use serial")
                continue
        mt = matcher_for(dm)
        for other_key, other in seen:
            example = _overlap(mt, other)
            if example is not None:
                c.add(path, f"could select the same disk as storage.{other_key}.match: a disk whose ID_SERIAL is "
                            f"{example!r} matches both ({mt.describe()} and {other.describe()})")
        seen.append((key, mt))
    scratch = m.storage.scratch
    if scratch and scratch.mountpoint and not scratch.mountpoint.startswith("/"):
        c.add(("storage", "scratch", "mountpoint"), "expected an absolute path")


# --- the storage layout --------------------------------------------------------------------------

def _disk_action(id_: str, disk: Disk, grub_device: bool = False) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "disk", "id": id_, **render_disk_match(disk), "ptable": "gpt",
                             "wipe": "superblock-recursive", "preserve": False}
    if grub_device:
        entry["grub_device"] = True
    return entry


def _part(id_: str, device: str, number: int, size: str | int, **extra: Any) -> dict[str, Any]:
    return {"type": "partition", "id": id_, "device": device, "number": number, "size": size, **extra,
            "preserve": False}


def storage_config(model: HostModel) -> dict[str, Any]:
    """The autoinstall `storage:` section for the modelled firmware (UBUNTU-FACTS bootloader rule).

    UEFI: an ESP (`flag: boot`, fat32, /boot/efi) carries `grub_device: true`; no bios_grub.
    BIOS: the OS disk carries `grub_device: true` and a 1M `bios_grub` partition holds GRUB's core
    on GPT; no ESP. Never both flags: with both, curtin runs grub-install on the FAT ESP under BIOS.
    The scratch disk gets one partition, formatted and mounted at its mountpoint.
    """
    os_d, scratch = model.storage.os_disk, model.storage.scratch
    bios = model.host.firmware == "bios"
    cfg: list[dict[str, Any]] = [_disk_action("disk-os", os_d, grub_device=bios)]
    if bios:
        cfg += [
            _part("part-bios", "disk-os", 1, "1M", flag="bios_grub"),
            _part("part-root", "disk-os", 2, -1),
            {"type": "format", "id": "fmt-root", "volume": "part-root", "fstype": os_d.filesystem, "preserve": False},
            {"type": "mount", "id": "mnt-root", "device": "fmt-root", "path": "/"},
        ]
    else:
        cfg += [
            _part("part-esp", "disk-os", 1, "1G", flag="boot", grub_device=True),
            _part("part-root", "disk-os", 2, -1),
            {"type": "format", "id": "fmt-esp", "volume": "part-esp", "fstype": "fat32", "preserve": False},
            {"type": "format", "id": "fmt-root", "volume": "part-root", "fstype": os_d.filesystem, "preserve": False},
            {"type": "mount", "id": "mnt-root", "device": "fmt-root", "path": "/"},
            {"type": "mount", "id": "mnt-esp", "device": "fmt-esp", "path": "/boot/efi"},
        ]
    if scratch is not None:
        cfg += [
            _disk_action("disk-scratch", scratch),
            _part("part-scratch", "disk-scratch", 1, -1),
            {"type": "format", "id": "fmt-scratch", "volume": "part-scratch", "fstype": scratch.filesystem,
             "preserve": False},
            {"type": "mount", "id": "mnt-scratch", "device": "fmt-scratch",
             "path": scratch.mountpoint or model.docker.data_root, "options": "defaults,noatime"},
        ]
    out = {"config": cfg, "swap": {"size": 0}}
    problems = bootloader_problems(out, model.host.firmware)
    if problems:  # pragma: no cover - a bug in the layout above
        raise BuilderError("rendered storage layout breaks the bootloader rule (bug): " + "; ".join(problems))
    return out


def bootloader_problems(storage: Mapping[str, Any] | Sequence[Mapping[str, Any]], firmware: str) -> list[str]:
    """What keeps this storage config from installing a bootloader under `firmware` (empty: fine).

    The rule (UBUNTU-FACTS; subiquity `needs_bootloader_partition`, curtin `setup_grub`):
    BIOS: `grub_device: true` on exactly one disk, which has a `bios_grub` partition, and on no
    partition. UEFI: `grub_device: true` on exactly one partition, an ESP (`flag: boot`) formatted
    fat32 and mounted at /boot/efi, and on no disk.
    """
    actions = list(storage["config"] if isinstance(storage, Mapping) else storage)
    by_id = {a.get("id"): a for a in actions}
    disks = [a for a in actions if a.get("type") == "disk"]
    parts = [a for a in actions if a.get("type") == "partition"]
    grub_disks = [a["id"] for a in disks if a.get("grub_device")]
    grub_parts = [a for a in parts if a.get("grub_device")]
    out: list[str] = []
    if grub_disks and grub_parts:
        out.append(f"grub_device is set on disk {grub_disks[0]} and on partition {grub_parts[0]['id']}: "
                   "set it on one only (both make curtin run grub-install on the ESP under BIOS)")
    if firmware == "bios":
        if len(grub_disks) != 1:
            out.append(f"BIOS needs grub_device: true on exactly one disk, found {len(grub_disks)} "
                       "(else: autoinstall config did not create needed bootloader partition)")
        for d in grub_disks:
            if not any(p.get("device") == d and p.get("flag") == "bios_grub" for p in parts):
                out.append(f"BIOS: disk {d} has grub_device but no bios_grub partition for GRUB's core on GPT")
            elif by_id[d].get("ptable", "gpt") != "gpt":
                out.append(f"BIOS: disk {d} has a bios_grub partition but ptable {by_id[d].get('ptable')!r}")
        if grub_parts:
            out.append(f"BIOS: partition {grub_parts[0]['id']} has grub_device; it belongs on the disk")
    elif firmware == "uefi":
        if grub_disks:
            out.append(f"UEFI: disk {grub_disks[0]} has grub_device; it belongs on the ESP partition")
        if len(grub_parts) != 1:
            out.append(f"UEFI needs grub_device: true on exactly one partition (the ESP), found {len(grub_parts)}")
        for p in grub_parts:
            fmts = [a for a in actions if a.get("type") == "format" and a.get("volume") == p["id"]]
            mounts = [a for a in actions if a.get("type") == "mount" and fmts and a.get("device") == fmts[0]["id"]]
            if p.get("flag") != "boot":
                out.append(f"UEFI: grub_device partition {p['id']} is not an ESP (flag: boot)")
            if not fmts or fmts[0].get("fstype") not in ("fat32", "fat16", "vfat"):
                out.append(f"UEFI: ESP {p['id']} is not formatted FAT")
            if not mounts or mounts[0].get("path") != "/boot/efi":
                out.append(f"UEFI: ESP {p['id']} is not mounted at /boot/efi "
                           "(else: autoinstall config did not create needed bootloader partition)")
        for p in parts:
            if p.get("flag") == "bios_grub":
                out.append(f"UEFI: bios_grub partition {p['id']} is not needed")
    else:
        out.append(f"unknown firmware {firmware!r} (expected uefi or bios)")
    return out
