"""`builder render` and `builder validate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builder.commands.common import add_host_arg, add_out_arg, add_schema_arg, context, positive
from builder.model import HostModel
from builder.pipeline import stage_render, stage_validate


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render the autoinstall and first-boot seeds from the host model")
    add_host_arg(p)
    add_out_arg(p)
    add_schema_arg(p)
    p.set_defaults(func=cmd_render)

    v = sub.add_parser("validate", help="validate the host model and its rendered seeds (writes nothing)")
    add_host_arg(v)
    add_schema_arg(v)
    v.add_argument("--machine", type=Path, default=None, metavar="FACTS",
                   help="also resolve every disk matcher and NIC MAC against the real machine's captured facts")
    v.add_argument("--online", action="store_true",
                   help="also check every package pin against the real repository indices (skipped when offline)")
    v.add_argument("--mirror-override", action="append", default=[], metavar="NAME=URL",
                   help="read NAME's indices from URL (NAME: ubuntu, ubuntu-security, docker, nvidia); "
                        "also $BUILDER_MIRROR_OVERRIDES")
    v.add_argument("--online-timeout", type=positive(float), default=30.0, metavar="S", help="per-request timeout (30)")
    v.set_defaults(func=cmd_validate)


def cmd_render(args: argparse.Namespace) -> int:
    ctx = context(args)
    result = stage_render(ctx)
    for s in ctx.validation:
        print(f"  {s.name}: {s.status}")
    for path in result.files:
        print(f"wrote {path}")
    print(f"wrote {ctx.manifest}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    ctx = context(args, tools=True)
    print(f"host model {ctx.model.source_path}: ok")
    steps = stage_validate(ctx)
    width = max(len(s.name) for s in steps)
    for s in steps:
        note = f"  ({s.detail.splitlines()[0]})" if s.status == "skipped" and s.detail else ""
        print(f"  {s.name:<{width}}  {s.status}{note}")
    if args.machine is not None:
        from builder.errors import ProblemsError
        from builder.model.machine import load_facts, resolve_against_facts

        report = resolve_against_facts(ctx.model, load_facts(args.machine))
        print("\n".join(report.lines()))
        if report.errors:
            raise ProblemsError(list(report.problems), what=f"host model, checked against the machine {args.machine}")
    if getattr(args, "online", False):
        return _validate_pins(ctx.model, args)
    return 0


def _validate_pins(model: HostModel, args: argparse.Namespace) -> int:
    from builder.errors import ProblemsError
    from builder.seed.pins import check_pins_online, parse_overrides

    report = check_pins_online(model, args.online_timeout, parse_overrides(args.mirror_override))
    print(f"  package pins (online)  {report.status}  ({report.detail})")
    for w in (p for p in report.problems if p.severity != "error"):
        print(f"builder: {w}", file=sys.stderr)
    if report.errors:
        raise ProblemsError(list(report.problems), what="package pins")
    return 0
