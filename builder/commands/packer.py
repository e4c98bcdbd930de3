"""`builder packer`: generate the Packer variables from the model and boot the ISO with Packer."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builder.commands.common import add_host_arg, add_out_arg, context, positive
from builder.packer import PackerResult


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


def add_packer_args(p: argparse.ArgumentParser, *, template: bool = True) -> None:
    if template:
        p.add_argument("--template", type=Path, default=None, metavar="FILE",
                       help="Packer template (default: the shipped packer/prometheus.pkr.hcl)")
    p.add_argument("--accel", choices=("tcg", "kvm"), default=None,
                   help="QEMU accelerator (default: the same probe as every other boot; $BUILDER_ACCEL)")
    p.add_argument("--packer-timeout", type=positive(float), default=7200.0, metavar="SECONDS",
                   help="give up on `packer build` after this long (default: 7200)")


def report_packer(result: PackerResult) -> int:
    """Print what Packer left behind; return Packer's exit code."""
    if not result.ok:
        print(f"builder: error: packer build failed with exit code {result.returncode} "
              f"after {result.seconds:.0f}s", file=sys.stderr)
        for log in (result.packer_log, result.serial_log):
            if log:
                print(f"builder: kept {log}", file=sys.stderr)
        return result.returncode or 2
    print(f"packer build: ok in {result.seconds:.1f}s")
    for path in (*result.disks, result.serial_log, result.packer_log):
        if path:
            print(f"wrote {path}")
    return 0


def cmd_packer(args: argparse.Namespace) -> int:
    from builder.pipeline import PackerOptions, stage_packer

    ctx = context(args)
    opts = PackerOptions(args.template, args.accel, args.packer_timeout, args.iso, args.validate_only)
    result = stage_packer(ctx, opts)
    if result is None:
        from builder.packer import TEMPLATE

        print(f"packer validate {(args.template or TEMPLATE).name}: ok ({ctx.host_dir / 'packer'})")
        return 0
    return report_packer(result)
