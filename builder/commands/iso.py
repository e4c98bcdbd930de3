"""`builder iso` (remaster the base ISO into an unattended installer) and `builder standin iso`."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder import settings
from builder.commands.common import add_base_args, add_host_arg, add_out_arg, add_schema_arg, base_iso, context


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
    si.add_argument("--no-system", action="store_true",
                    help="leave out the system the stand-in installer installs (the stand-in image's files, built "
                         "once as root with mmdebstrap); the installed disk then only boots the stand-in initrd")
    si.set_defaults(func=cmd_standin_iso)


def cmd_iso(args: argparse.Namespace) -> int:
    from builder.pipeline import apply_standin_chain, stage_iso

    base = base_iso(args)
    ctx = apply_standin_chain(context(args), base, say=print)  # a stand-in base: the harness seed, said so
    result = stage_iso(ctx, base)
    print(f"wrote {result.iso} ({result.iso.stat().st_size / (1 << 20):.1f} MiB, "
          f"remaster {result.remaster.seconds:.1f}s)")
    print(f"sha256 {result.sha256}")
    return 0


def cmd_standin_iso(args: argparse.Namespace) -> int:
    from builder.media.fetch import cache_dir
    from builder.testbed.standin_iso import build_standin_iso

    if args.pad_mib < 0:
        from builder.errors import BuilderError

        raise BuilderError(f"--pad-mib {args.pad_mib}: expected a number >= 0")
    epoch = settings.source_date_epoch(1769126400)
    rootfs = debs = None
    if not args.no_system:
        from builder.testbed.image import build_image
        from builder.testbed.rootfs import standin_rootfs

        image = build_image()
        rootfs, debs = standin_rootfs(cache_dir(), image), image.install_debs
    out = build_standin_iso(args.out.absolute(), cache_dir(), epoch, pad_mib=args.pad_mib, rootfs=rootfs,
                            install_debs=debs)
    print(f"wrote {out} (STAND-IN, not installable; {out.stat().st_size / (1 << 20):.1f} MiB)")
    return 0
