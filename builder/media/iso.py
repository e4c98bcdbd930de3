"""Remaster a live-server ISO into an unattended installer, reproducibly, without unpacking it.

xorriso loads the base ISO (`-indev`), adds the NoCloud seed and `/autoinstall.yaml`, replaces the
GRUB menus that hold boot entries and `md5sum.txt`, and writes a new ISO (`-outdev`) with the
base's boot equipment replayed (`-boot_image any replay`): El Torito for BIOS, the appended EFI
partition, GPT and the hybrid MBR survive, so the same file boots as CD and as USB stick.
Same inputs ⇒ same bytes: dates come from SOURCE_DATE_EPOCH, owners and modes are fixed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from builder.errors import BuilderError
from builder.media.digest import remember_sha256, write_hashed
from builder.run import PIPE_FD, require_tool, run
from builder.store import staged_file, update_manifest

log = logging.getLogger("builder.media.iso")

STANDIN_MARKER = "STANDIN"  # in .disk/info of test stand-in ISOs: refused unless --allow-standin
SEED_DIR = "/nocloud"
SEED_FILES = ("meta-data", "user-data")
DATASOURCE_ARG = "ds=nocloud;s=/cdrom/nocloud/"
GRUB_TIMEOUT_S = 3
_GRUB_SAFE = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


@dataclass(frozen=True)
class RemasterSpec:
    """Everything a remaster depends on (besides the base ISO's bytes)."""

    hostname: str
    source_date_epoch: int
    kernel_cmdline: tuple[str, ...]
    seed: dict[str, bytes] = field(hash=False)  # "user-data", "meta-data" (and optional others)
    timeout_s: int = GRUB_TIMEOUT_S


@dataclass(frozen=True)
class RemasterResult:
    iso: Path
    xorriso_version: str
    xorriso_options: tuple[str, ...]
    seconds: float
    sha256: str  # hashed while xorriso wrote it: the ISO is never read back


def grub_quote(arg: str) -> str:
    """Quote a kernel argument for GRUB's shell-like parser (`;`, spaces, `$`... need quoting)."""
    if _GRUB_SAFE.match(arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


def kernel_args(spec: RemasterSpec, extra: tuple[str, ...] = ()) -> str:
    """Installer arguments, then `---`, then the model's arguments (also copied to the target)."""
    head = ["autoinstall", DATASOURCE_ARG, *extra]
    return " ".join(grub_quote(a) for a in head) + " --- " + " ".join(grub_quote(a) for a in spec.kernel_cmdline)


def grub_cfg(spec: RemasterSpec, loopback: bool = False) -> str:
    extra = ("iso-scan/filename=${iso_path}",) if loopback else ()
    args = kernel_args(spec, extra).replace("'iso-scan/filename=${iso_path}'", "iso-scan/filename=${iso_path}")
    lines = [
        f"# Unattended installer for {spec.hostname}, written by `builder iso`. Do not edit: rebuild.",
        f"set timeout={spec.timeout_s}",
        "set default=0",
    ]
    if not loopback:
        lines += [
            "serial --unit=0 --speed=115200",
            "terminal_input console serial",
            "terminal_output console serial",
        ]
    lines += [
        f'menuentry "Install {spec.hostname} (autoinstall, erases the modelled disks)" {{',
        "\tset gfxpayload=keep",
        f"\tlinux\t/casper/vmlinuz {args}",
        "\tinitrd\t/casper/initrd",
        "}",
        "",
    ]
    return "\n".join(lines)


def xorriso_version() -> str:
    out = run([require_tool("xorriso", "xorriso"), "-version"]).stdout.decode(errors="replace")
    m = re.search(r"xorriso (\d+\.\d+\.\d+)", out)
    return m.group(1) if m else out.splitlines()[0]


def list_files(iso: Path) -> list[str]:
    """All file paths in the ISO (checks at the same time that it is a readable ISO 9660 image)."""
    xorriso = require_tool("xorriso", "xorriso")
    proc = run(
        [xorriso, "-no_rc", "-abort_on", "FAILURE", "-indev", iso, "-find", "/", "-type", "f"],
        check=False,
    )
    err = proc.stderr.decode(errors="replace")
    # Random bytes load as a "blank image" with exit code 0: only the warning tells.
    if proc.returncode != 0 or any(m in err for m in ("is not a valid ISO", "Not a known", "No ISO 9660 image")):
        raise BuilderError(
            f"base ISO {iso} is not a readable ISO 9660 image (corrupt or truncated?)",
            hint="download it again (delete the cached copy) or pass another --base",
        )
    files = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        line = line.strip()
        if line.startswith("'") and line.endswith("'"):
            files.append(line[1:-1].replace("'\"'\"'", "'"))
    return files


def extract(iso: Path, paths: list[str], dest: Path) -> dict[str, bytes]:
    """Read files out of the ISO (without mounting or unpacking it)."""
    if not paths:
        return {}
    cmd: list[str | os.PathLike[str]] = ["xorriso", "-no_rc", "-osirrox", "on", "-indev", iso]
    for i, p in enumerate(paths):
        cmd += ["-extract", p, dest / f"f{i}"]
    run(cmd)
    return {p: (dest / f"f{i}").read_bytes() for i, p in enumerate(paths)}


def check_base(files: list[str], info: bytes, iso: Path, allow_standin: bool) -> None:
    missing = [p for p in ("/casper/vmlinuz", "/casper/initrd", "/boot/grub/grub.cfg") if p not in files]
    if missing:
        raise BuilderError(
            f"base ISO {iso} does not have the Ubuntu live-server layout (missing {', '.join(missing)})",
            hint="use an Ubuntu live-server ISO (the one named in the host model)",
        )
    if STANDIN_MARKER.encode() in info and not allow_standin:
        raise BuilderError(
            f"base ISO {iso} is a test STAND-IN (its /.disk/info says so): it boots only a tiny "
            "busybox initrd and cannot install Ubuntu",
            hint="use the real Ubuntu live-server ISO, or pass --allow-standin for tests and demos",
        )


def update_md5sums(old: bytes, changed: dict[str, bytes]) -> bytes:
    """Replace the sums of changed files in Ubuntu's `md5sum.txt`, append new files sorted."""
    sums = {f".{path}": hashlib.md5(data).hexdigest() for path, data in changed.items()}
    out, seen = [], set()
    for line in old.decode().splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[1] in sums:
            out.append(f"{sums[parts[1]]}  {parts[1]}")
            seen.add(parts[1])
        elif line.strip():
            out.append(line)
    out += [f"{sums[p]}  {p}" for p in sorted(sums) if p not in seen]
    return ("\n".join(out) + "\n").encode()


def _uuid_date(epoch: int) -> str:
    return time.strftime("%Y%m%d%H%M%S00", time.gmtime(epoch))


def planned_files(spec: RemasterSpec, existing: dict[str, bytes]) -> dict[str, bytes]:
    """ISO path → bytes of every file the remaster adds or replaces (md5sum.txt not included)."""
    for name in SEED_FILES:
        if name not in spec.seed:
            raise BuilderError(f"the autoinstall seed has no {name}", hint="run `builder render` first")
    added = {f"{SEED_DIR}/{name}": data for name, data in sorted(spec.seed.items())}
    added["/autoinstall.yaml"] = spec.seed["user-data"]
    added["/boot/grub/grub.cfg"] = grub_cfg(spec).encode()
    for path, data in existing.items():
        if path.endswith("/loopback.cfg"):
            added[path] = grub_cfg(spec, loopback=True).encode()
        elif b"menuentry" in data and path not in added:
            added[path] = grub_cfg(spec).encode()
    return added


def remaster(base: Path, out: Path, spec: RemasterSpec, allow_standin: bool = False) -> RemasterResult:
    """Write `out` (must not exist, mode 0600) from `base`; nothing half-written is left on any error."""
    started = time.monotonic()
    require_tool("xorriso", "xorriso")
    base = Path(base)
    if not base.is_file():
        raise BuilderError(f"base ISO not found: {base}")
    if out.exists():
        raise BuilderError(f"output file already exists: {out}", hint="remove it or choose another --out")
    files = list_files(base)
    grub_cfgs = [p for p in files if p.lower().endswith(("/grub.cfg", "/loopback.cfg"))]
    wanted = [p for p in ("/.disk/info", "/md5sum.txt") if p in files] + grub_cfgs
    with tempfile.TemporaryDirectory(prefix="builder-iso-") as tmp:
        work = Path(tmp)
        (work / "x").mkdir()
        existing = extract(base, wanted, work / "x")
        check_base(files, existing.get("/.disk/info", b""), base, allow_standin)
        cfgs = {p: d for p, d in existing.items() if p in grub_cfgs}
        added = planned_files(spec, cfgs)
        if "/md5sum.txt" in existing:
            added["/md5sum.txt"] = update_md5sums(existing["/md5sum.txt"], added)
        stage = work / "stage"
        epoch = spec.source_date_epoch
        for path, data in added.items():
            dst = stage / path.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(data)
            dst.chmod(0o644)
        for dirpath, dirnames, filenames in os.walk(stage):
            for name in dirnames:
                (Path(dirpath) / name).chmod(0o755)
            for name in dirnames + filenames:
                os.utime(Path(dirpath) / name, (epoch, epoch))
        targets = sorted({SEED_DIR if p.startswith(SEED_DIR + "/") else p for p in added})
        sde = f"={epoch}"
        options: list[str] = [
            "-abort_on", "FAILURE",
            "-volume_date", "c", sde, "-volume_date", "m", sde, "-volume_date", "uuid", _uuid_date(epoch),
            "-volume_date", "all_file_dates", "set_to_mtime",
        ]
        for t in targets:
            options += ["-map", str(stage / t.lstrip("/")), t]
        options += ["-chown_r", "0", *targets, "--", "-chgrp_r", "0", *targets, "--"]
        options += ["-chmod_r", "go-w,a+r", *targets, "--", "-alter_date_r", "b", sde, *targets, "--"]
        options += ["-alter_date_r", "c", sde, *targets, "--"]
        options += ["-boot_image", "any", "replay", "-boot_image", "any", "gpt_disk_guid=volume_date_uuid"]
        with staged_file(out) as tmp_out:
            # xorriso writes the image into a pipe (a sequential stdio drive: one session, no seeking
            # back); the builder tees it into the file and the SHA-256, so the ISO passes once.
            cmd = ["xorriso", "-no_rc", "-indev", str(base), "-outdev", f"stdio:/dev/fd/{PIPE_FD}", *options]
            log.info("xorriso: remastering %s -> %s", base.name, out)
            # mode 0600: it carries the autoinstall user-data (may hold password hashes)
            written = write_hashed(cmd, tmp_out, mode=0o600, env={"SOURCE_DATE_EPOCH": str(epoch)}, timeout=3600)
            if written.size < base.stat().st_size // 2:
                raise BuilderError(f"xorriso did not write a complete ISO for {out}")
    shown = [o.replace(str(stage), "STAGE") for o in options]
    return RemasterResult(out, xorriso_version(), tuple(shown), time.monotonic() - started, written.sha256)


def write_outputs(result: RemasterResult, manifest: Path, base_name: str, base_sha256: str,
                  hash_cache: Path | None = None) -> str:
    """`<iso>.sha256` (sha256sum format) and the `iso` section of manifest.json; returns the sha256.

    With `hash_cache` (the build cache), the digest is also remembered there, so later stages
    (Packer's iso_checksum, the build summary) get it without reading the ISO again.
    """
    digest = result.sha256
    if hash_cache is not None:
        remember_sha256(result.iso, digest, hash_cache)
    with staged_file(result.iso.with_name(result.iso.name + ".sha256"), overwrite=True) as tmp:
        tmp.write_text(f"{digest}  {result.iso.name}\n")
    update_manifest(manifest, "iso", {
        "file": result.iso.name,
        "sha256": digest,
        "base": {"name": base_name, "sha256": base_sha256},
        "xorriso": {"version": result.xorriso_version, "options": list(result.xorriso_options)},
    })
    return digest
