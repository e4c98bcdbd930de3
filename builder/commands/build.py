"""`builder build`: the whole pipeline on one model, ending with the artifact summary."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builder.commands.common import add_host_arg, add_out_arg, add_schema_arg, load_host
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
    p.add_argument("--base", type=Path, default=None, metavar="ISO",
                   help="base Ubuntu live-server ISO (default: download the model's ISO; needs internet)")
    p.add_argument("--allow-standin", action="store_true",
                   help="accept a test stand-in base ISO (`builder standin iso`), for tests and demos")
    p.add_argument("--keyring", type=Path, default=None, metavar="FILE",
                   help="keyring for gpgv to check SHA256SUMS.gpg of a download")
    p.add_argument("--no-pin-check", action="store_true",
                   help="accept a --base whose sha256 differs from the model's os.iso.sha256")
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
