"""`builder verify`: boot the first-boot seed in QEMU (stand-in image) and check the host against its model."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from builder.commands.common import add_host_arg, add_out_arg, context, positive
from builder.verify.core import CheckResult
from builder.verify.report import MARK, render_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="boot the first-boot seed in QEMU and verify the host against its model")
    add_host_arg(p)
    add_out_arg(p)
    p.add_argument("--seed", type=Path, default=None, metavar="DIR",
                   help="verify this seed folder as given (artifacts/<host>/ or its first-boot/) "
                        "instead of rendering the model; only the test overrides are applied")
    p.add_argument("--image", type=Path, default=None, metavar="FILE",
                   help="an existing stand-in image (from `builder standin image --out FILE`)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder (seed, serial log, services) under OUT/<host>/verify-work/")
    p.add_argument("--only", action="append", default=None, metavar="PREFIX",
                   help="run only checks whose id starts with PREFIX (repeatable), e.g. --only nfs.")
    p.add_argument("--boot-timeout", type=positive(float), default=None, metavar="SECONDS",
                   help="how long to wait for cloud-init and SSH (default: 900, or $BUILDER_BOOT_TIMEOUT)")
    p.set_defaults(func=cmd_verify)


def _progress(r: CheckResult) -> None:
    print(f"  {MARK[r.status]} {r.check.id}", file=sys.stderr, flush=True)


def cmd_verify(args: argparse.Namespace) -> int:
    from builder.pipeline import VerifyOptions, stage_verify

    opts = VerifyOptions(args.seed, args.image, args.keep, tuple(args.only) if args.only else None,
                         args.boot_timeout)
    result = stage_verify(context(args), opts, on_result=_progress)
    out = result.report_dir
    print(render_table(result.report, width=shutil.get_terminal_size((120, 20)).columns))
    print(f"report: {out / 'report.json'}, {out / 'junit.xml'}, serial log {out / 'serial.log'}")
    return 0 if result.report.ok else 1
