"""`builder verify`: boot the first-boot seed in QEMU (stand-in image) and check the host against its model;
with `--target ssh://user@host[:port]` the same checks run against a live host over SSH instead."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from builder.commands.common import add_host_arg, add_out_arg, context, positive
from builder.errors import BuilderError
from builder.model import HostModel
from builder.verify.core import CheckResult
from builder.verify.report import MARK, render_table, write_report
from builder.verify.targets import Target

if TYPE_CHECKING:
    from builder.pipeline import BuildContext


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify the host against its model: the first-boot seed booted in QEMU, "
                                      "or a live host over SSH (--target ssh://...)")
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
    p.add_argument("--no-second-boot", dest="second_boot", action="store_false",
                   help="stand-in: check the first boot only (default: power off, boot the same disk again "
                        "and re-run the reachability, listener, routing, mount and Docker checks)")
    p.add_argument("--target", default="standin", metavar="TARGET",
                   help="what to check: standin (default: the stand-in booted in QEMU), disk:PATH (a built "
                        "disk image), or ssh://USER@HOST[:PORT] (a live host, no QEMU; needs --identity)")
    p.add_argument("--identity", type=Path, default=None, metavar="KEY",
                   help="the admin's private SSH key for an ssh:// target; its public half must be in the model")
    p.add_argument("--servers-ssh", default=None, metavar="HOST[:PORT]",
                   help="ssh:// target: where SSH must be refused on SERVERS (default: the model's SERVERS "
                        "address and SSH port)")
    p.set_defaults(func=cmd_verify)


def _progress(r: CheckResult) -> None:
    print(f"  {MARK[r.status]} {r.check.id}", file=sys.stderr, flush=True)


def cmd_verify(args: argparse.Namespace) -> int:
    from builder.verify.targets import parse_target

    started = time.monotonic()
    target = parse_target(args.target)
    ctx = context(args)
    model = ctx.model
    _check_only(model, args.only)
    if target.kind == "ssh":
        return _verify_live(args, model, target, started)
    if target.kind == "disk":
        return _verify_disk(args, ctx, target, started)
    if args.identity or args.servers_ssh:
        raise BuilderError("--identity and --servers-ssh belong to an ssh:// target")
    from builder.pipeline import VerifyOptions, stage_verify

    opts = VerifyOptions(args.seed, args.image, args.keep, tuple(args.only) if args.only else None,
                         args.boot_timeout, second_boot=args.second_boot)
    result = stage_verify(ctx, opts, on_result=_progress)
    out = result.report_dir
    print(render_table(result.report, width=shutil.get_terminal_size((120, 20)).columns))
    print(f"report: {out / 'report.json'}, {out / 'junit.xml'}, serial log {out / 'serial.log'}")
    return 0 if result.report.ok else 1

def _verify_disk(args: argparse.Namespace, ctx: BuildContext, target: Target, started: float) -> int:
    """--target disk:PATH: boot the built disk by its firmware with the harness services; no seed is injected."""
    from builder.pipeline import VerifyOptions, stage_verify_disk
    from builder.testbed.chain import load_chain
    from builder.verify.live import key_id, public_key_of

    stray = [f"--{n.replace('_', '-')}" for n in ("seed", "image", "keep", "servers_ssh") if getattr(args, n)]
    if stray:
        raise BuilderError(f"{', '.join(stray)} do not apply to a disk target ({args.target})")
    if args.identity is None:
        raise BuilderError(f"--target {args.target} needs --identity KEY (the admin's private SSH key; for a "
                           "stand-in build: <out>/<host>/standin-chain/admin-ed25519)")
    assert target.path is not None
    chain = load_chain(ctx.model, ctx.host_dir)
    if chain is not None and key_id(public_key_of(args.identity)) == key_id(chain.public_key):
        # a disk of the offline stand-in chain: it was built from the harness model, so it is judged against it
        print(f"builder: {chain.note()}", file=sys.stderr)
        ctx = dataclasses.replace(ctx, model=chain.model, chain=chain)
    opts = VerifyOptions(only=tuple(args.only) if args.only else None, boot_timeout=args.boot_timeout,
                         second_boot=args.second_boot)
    result = stage_verify_disk(ctx, target.path.absolute(), args.identity.absolute(), opts, on_result=_progress)
    out = result.report_dir
    print(render_table(result.report, width=shutil.get_terminal_size((120, 20)).columns))
    print(f"report: {out / 'report.json'}, {out / 'junit.xml'}, serial log {out / 'serial.log'}")
    return 0 if result.report.ok else 1


def _check_only(model: HostModel, only: list[str] | None) -> None:
    """Every --only prefix must select at least one check (a typo would otherwise verify nothing)."""
    from builder.verify.catalog import build_catalog, select

    catalog = build_catalog(model)
    unknown = [p for p in only or [] if not select(catalog, [p])]
    if unknown:
        families = sorted({c.id.split(".")[0] for c in catalog})
        raise BuilderError(f"--only {', '.join(unknown)} selects no check",
                           hint=f"check ids start with: {', '.join(families)}")


def _verify_live(args: argparse.Namespace, model: HostModel, target: Target, started: float) -> int:
    """--target ssh://...: no QEMU; every input problem and connection failure is an error before writing."""
    from builder.verify.live import parse_endpoint, verify_live

    stray = [f"--{n.replace('_', '-')}" for n in ("seed", "image", "keep", "boot_timeout") if getattr(args, n)]
    if not args.second_boot:
        stray.append("--no-second-boot")
    if stray:
        raise BuilderError(f"{', '.join(stray)} belong to the stand-in target, not {args.target}")
    if args.identity is None:
        raise BuilderError(f"--target {args.target} needs --identity KEY (the admin's private SSH key)")
    servers = parse_endpoint(args.servers_ssh, model.ssh.port) if args.servers_ssh else None
    print(f"builder: checking the live host {target.address} over SSH...", file=sys.stderr)
    report = verify_live(model, target, args.identity, servers=servers, only=args.only, on_result=_progress,
                         started=started)
    out = write_report(report, Path(args.out) / model.host.hostname / "verify")
    print(render_table(report, width=shutil.get_terminal_size((120, 20)).columns))
    print(f"report: {out / 'report.json'}, {out / 'junit.xml'}")
    return 0 if report.ok else 1
