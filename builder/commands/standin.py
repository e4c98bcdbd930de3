"""`builder standin ...`: build STANDIN artifacts for offline tests (never installable systems).

Each subcommand is registered by its own small function below; add new ones the same way.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("standin", help="build STANDIN test artifacts (offline stand-ins, not installable)")
    group = p.add_subparsers(dest="standin_command", metavar="WHAT")
    group.required = True
    for reg in SUBCOMMANDS:
        reg(group)


def register_image(group: argparse._SubParsersAction) -> None:
    p = group.add_parser(
        "image",
        help="STANDIN first-boot disk: Debian trixie, only what ubuntu-server-minimal carries (cached), "
        "plus kernel and initrd",
        description="Build (or reuse from the cache) the Debian trixie first-boot stand-in disk and "
        "copy it to FILE, with FILE's stem + .vmlinuz/.initrd beside it for direct kernel boot.",
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="raw ext4 disk image to write")
    p.add_argument("--rebuild", action="store_true", help="ignore the cache and build again")
    p.set_defaults(func=cmd_image)


def cmd_image(args: argparse.Namespace) -> int:
    from builder.testbed.image import build_image, export_image

    image = build_image(force=args.rebuild)
    out = export_image(image, args.out)
    print(f"STANDIN first-boot image (cache key {image.key}):")
    for kind, path in out.items():
        print(f"  {kind}: {path}")
    print(f"  append: {image.append}")
    return 0


from builder.commands.iso import register_standin_iso  # noqa: E402 - `builder standin iso`

SUBCOMMANDS = [register_image, register_standin_iso]
