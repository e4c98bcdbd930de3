"""`builder packer`: generate the Packer variables from the model and boot the ISO with Packer."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from builder.commands.common import add_host_arg, add_out_arg, load_host
from builder.errors import BuilderError
from builder.model import HostModel
from builder.packer import TEMPLATE, PackerResult, packer_build, packer_validate, write_pkrvars


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("packer", help="boot the remastered ISO with Packer (packer/prometheus.pkr.hcl)")
    add_host_arg(p)
    add_out_arg(p)
    add_packer_args(p)
    p.add_argument("--iso", type=Path, default=None, metavar="FILE",
                   help="remastered ISO (default: DIR/<hostname>/<hostname>-autoinstall.iso from `builder iso`)")
    p.add_argument("--validate-only", action="store_true",
                   help="write the variables file and run `packer validate`, but do not build")
    p.set_defaults(func=cmd_packer)


def add_packer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", type=Path, default=TEMPLATE, metavar="FILE",
                   help="Packer template (default: packer/prometheus.pkr.hcl)")
    p.add_argument("--accel", choices=("tcg", "kvm"), default=None,
                   help="QEMU accelerator (default: the same probe as every other boot; $BUILDER_ACCEL)")
    p.add_argument("--packer-timeout", type=float, default=7200.0, metavar="SECONDS",
                   help="give up on `packer build` after this long (default: 7200)")


def default_iso(model: HostModel, out_root: Path) -> Path:
    host = model.host.hostname
    return out_root / host / f"{host}-autoinstall.iso"


def run_packer(model: HostModel, iso: Path, args: argparse.Namespace,
               validate_only: bool = False) -> PackerResult | None:
    """Write the vars, validate, build. Returns None for --validate-only."""
    if not iso.is_file():
        raise BuilderError(f"ISO not found: {iso}",
                           hint="build it with `builder iso --base ISO` (or pass --iso FILE)")
    varfile = write_pkrvars(model, iso, args.out)
    print(f"wrote {varfile}")
    if validate_only:
        with tempfile.TemporaryDirectory(prefix="builder-packer-validate-") as tmp:
            # an earlier build's output folder would make `packer validate` fail: point it elsewhere
            packer_validate(varfile, args.template, {"output_directory": f"{tmp}/images"})
        print(f"packer validate {args.template.name}: ok")
        return None
    return packer_build(model, varfile, template=args.template, out_root=args.out, accel=args.accel,
                        timeout=args.packer_timeout)


def report_packer(result: PackerResult) -> int:
    """Print what Packer left behind; return Packer's exit code."""
    if not result.ok:
        print(f"builder: error: packer build failed with exit code {result.returncode} "
              f"after {result.seconds:.0f}s", file=sys.stderr)
        for log in (result.packer_log, result.serial_log):
            if log:
                print(f"builder: kept {log}", file=sys.stderr)
        return result.returncode
    print(f"packer build: ok in {result.seconds:.1f}s")
    for path in (*result.disks, result.serial_log, result.packer_log):
        if path:
            print(f"wrote {path}")
    return 0


def cmd_packer(args: argparse.Namespace) -> int:
    model = load_host(args)
    iso = args.iso or default_iso(model, args.out)
    result = run_packer(model, iso, args, validate_only=args.validate_only)
    return 0 if result is None else report_packer(result)
