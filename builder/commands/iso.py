"""`builder iso` (remaster the base ISO into an unattended installer) and `builder standin iso`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from builder.artifacts import source_date_epoch, write_seed
from builder.commands.common import add_host_arg, add_out_arg, add_schema_arg, load_host, render_checked
from builder.errors import BuilderError
from builder.iso import RemasterSpec, check_base, extract, list_files, remaster, write_outputs
from builder.isofetch import IsoSource, acquire_base, cache_dir, check_given_base
from builder.model import HostModel
from builder.standin import STANDIN_MARKER, build_standin_iso


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("iso", help="remaster the Ubuntu live-server ISO into an unattended installer")
    add_host_arg(p)
    add_out_arg(p)
    add_schema_arg(p)
    add_base_args(p)
    p.set_defaults(func=cmd_iso)



def register_standin_iso(group: argparse._SubParsersAction) -> None:
    """`builder standin iso` (registered by builder/commands/standin.py)."""
    si = group.add_parser("iso", help="STANDIN base ISO with the Ubuntu live-server layout, from Debian packages")
    si.add_argument("--out", type=Path, required=True, metavar="FILE", help="ISO file to write (must not exist)")
    si.add_argument("--pad-mib", type=int, default=0, metavar="N", help="add an N MiB filler file (benchmarks)")
    si.set_defaults(func=cmd_standin_iso)


def add_base_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, default=None, metavar="ISO",
                   help="base ISO file (default: download the model's ISO into the cache)")
    p.add_argument("--keyring", type=Path, default=None, metavar="FILE",
                   help="keyring for gpgv to check SHA256SUMS.gpg of a download")
    p.add_argument("--allow-standin", action="store_true",
                   help="accept a test stand-in base ISO (tests and demos only)")
    p.add_argument("--no-pin-check", action="store_true",
                   help="accept a --base whose sha256 differs from the model's os.iso.sha256")


def resolve_base(args: argparse.Namespace, model: HostModel) -> tuple[Path, str, str]:
    """The base ISO path, a display name and its sha256; checks pin and stand-in status."""
    src = IsoSource.from_model(model)
    if args.base is None:
        return acquire_base(src, cache_dir(), args.keyring), src.name, src.sha256
    base: Path = args.base
    sha = check_given_base(base, None)
    if sha != src.sha256 and not args.no_pin_check:
        info = extract_info(base)
        if STANDIN_MARKER.encode() not in info:
            check_given_base(base, src)  # raises with the pin mismatch
        elif not args.allow_standin:
            check_base(["/casper/vmlinuz", "/casper/initrd", "/boot/grub/grub.cfg"], info, base, False)
    return base, base.name, sha


def extract_info(iso: Path) -> bytes:
    import tempfile

    files = list_files(iso)
    if "/.disk/info" not in files:
        return b""
    with tempfile.TemporaryDirectory() as tmp:
        return extract(iso, ["/.disk/info"], Path(tmp))["/.disk/info"]


def autoinstall_seed(files: dict[str, bytes]) -> dict[str, bytes]:
    return {name: files[f"autoinstall/{name}"] for name in ("user-data", "meta-data")}


def cmd_iso(args: argparse.Namespace) -> int:
    model = load_host(args)
    host = model.host.hostname
    out = args.out / host / f"{host}-autoinstall.iso"
    if out.exists():
        raise BuilderError(f"output file already exists: {out}", hint="remove it (and its .sha256) first")
    files, _steps = render_checked(model, args.schema_dir, tools=False)
    base, base_name, base_sha = resolve_base(args, model)
    host_dir = write_seed(model, files, args.out)
    spec = RemasterSpec(host, source_date_epoch(model), tuple(model.os.kernel_cmdline), autoinstall_seed(files))
    result = remaster(base, out, spec, allow_standin=args.allow_standin)
    digest = write_outputs(result, host_dir / "manifest.json", base_name, base_sha, hash_cache=cache_dir())
    print(f"wrote {out} ({out.stat().st_size / (1 << 20):.1f} MiB, remaster {result.seconds:.1f}s)")
    print(f"sha256 {digest}")
    return 0


def cmd_standin_iso(args: argparse.Namespace) -> int:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "1769126400"))
    out = build_standin_iso(args.out, cache_dir(), epoch, pad_mib=args.pad_mib)
    print(f"wrote {out} (STAND-IN, not installable; {out.stat().st_size / (1 << 20):.1f} MiB)")
    return 0
