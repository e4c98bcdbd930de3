"""`builder build`: the whole pipeline on one model, ending with the artifact summary."""

from __future__ import annotations

import argparse
import sys

from builder.commands.common import add_host_arg, add_out_arg, add_schema_arg, load_host
from builder.commands.iso import add_base_args
from builder.pipeline import (
    SKIPPABLE,
    STAGES,
    BuildOptions,
    collect_artifacts,
    exit_code,
    run_pipeline,
    summary_text,
    write_summary,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build", help="validate, render, ISO, PXE bundle, Packer boot and verify, with an artifact summary",
        description=f"Runs {' -> '.join(STAGES)}; each stage is the subcommand of the same name.",
    )
    add_host_arg(p)
    add_out_arg(p)
    add_schema_arg(p)
    add_base_args(p)  # the same --base/--keyring/--allow-standin/--no-pin-check as `builder iso`
    p.add_argument("--skip", action="append", default=[], choices=SKIPPABLE,
                   help="leave out a stage (repeatable)")
    p.add_argument("--accel", choices=("tcg", "kvm"), default=None, help="QEMU accelerator for the Packer boot")
    p.add_argument("--packer-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up on `packer build` after this long")
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    from builder.cli import build_parser

    model = load_host(args)
    host = model.host.hostname
    opts = BuildOptions(host=args.host, out=args.out, base=args.base, allow_standin=args.allow_standin,
                        schema_dir=args.schema_dir, keyring=args.keyring, no_pin_check=args.no_pin_check,
                        skip=tuple(args.skip), accel=args.accel, packer_timeout=args.packer_timeout)
    results = run_pipeline(opts, host, build_parser())
    sys.stdout.flush()
    arts = collect_artifacts(args.out, host)
    print(summary_text(results, arts))
    print(f"\nsummary: {write_summary(args.out, host, results, arts)}")
    return exit_code(results)
