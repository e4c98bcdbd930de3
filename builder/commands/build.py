"""`builder build`: the whole pipeline on one model, ending with the artifact summary."""

from __future__ import annotations

import argparse
import sys

from builder.commands.common import add_base_args, add_host_arg, add_out_arg, add_schema_arg, base_iso, context
from builder.commands.packer import add_packer_args
from builder.errors import BuilderError
from builder.pipeline import (
    SKIPPABLE,
    STAGES,
    BuildOptions,
    PackerOptions,
    StageResult,
    apply_standin_chain,
    run_build,
)
from builder.summary import collect_artifacts, exit_code, summary_text, write_summary


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
    add_packer_args(p, template=False)
    p.set_defaults(func=cmd_build)


def cmd_build(args: argparse.Namespace) -> int:
    opts = BuildOptions(base_iso(args), skip=tuple(args.skip),
                        packer=PackerOptions(accel=args.accel, timeout=args.packer_timeout))
    try:
        ctx = context(args, tools=True)  # the validate stage: model, render and validators, once
        ctx = apply_standin_chain(ctx, opts.base, say=print)  # a stand-in base ISO: the harness model, said so
    except BuilderError as exc:
        results = [StageResult("validate", "failed", 0.0, exc.message.splitlines()[0], 2)]
        results += [StageResult(s, "not run", detail="an earlier stage failed") for s in STAGES[1:]]
        print(f"builder: error: {exc}", file=sys.stderr)
        print(summary_text(results, []))
        return 2
    results = run_build(ctx, opts)
    sys.stdout.flush()
    try:
        arts = collect_artifacts(ctx.out, ctx.hostname)
    except OSError:
        arts = []
    print(summary_text(results, arts))
    if ctx.chain is not None:
        print(f"\n{ctx.chain.note()}")
    try:
        print(f"\nsummary: {write_summary(ctx.out, ctx.hostname, results, arts)}")
    except OSError as exc:
        print(f"builder: error: cannot write build-summary.json: {exc.strerror or exc}: {exc.filename or ''}",
              file=sys.stderr)
        return exit_code(results) or 2
    return exit_code(results)
