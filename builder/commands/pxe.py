"""`builder pxe` (network-boot bundle) and `builder serve` (HTTP with HEAD and Range)."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.commands.common import add_base_args, add_host_arg, add_out_arg, add_schema_arg, base_iso, context, port
from builder.media.pxe import DEFAULT_HTTP_PORT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pxe", help="kernel, initrd, iPXE/GRUB netboot configs and seed for network install")
    add_host_arg(p)
    add_out_arg(p)
    add_schema_arg(p)
    add_base_args(p)
    p.add_argument("--server", default=None, metavar="HOST[:PORT]",
                   help="HTTP server the installer fetches from (default: the TFTP server, on --http-port)")
    p.add_argument("--http-port", type=port, default=DEFAULT_HTTP_PORT, metavar="N",
                   help=f"port of that HTTP server (default {DEFAULT_HTTP_PORT})")
    p.add_argument("--iso-url", default=None, metavar="URL",
                   help="URL of the ISO for casper's url= (default: the ISO is placed in the bundle)")
    p.set_defaults(func=cmd_pxe)

    s = sub.add_parser("serve", help="serve a folder (e.g. a PXE bundle) over HTTP, with HEAD and Range")
    s.add_argument("dir", type=Path, metavar="DIR")
    s.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=port, default=DEFAULT_HTTP_PORT, help=f"port (default {DEFAULT_HTTP_PORT})")
    s.set_defaults(func=cmd_serve)


def cmd_pxe(args: argparse.Namespace) -> int:
    from builder.pipeline import PxeOptions, apply_standin_chain, stage_pxe

    base = base_iso(args)
    ctx = apply_standin_chain(context(args), base, say=print)  # a stand-in base: the harness seed, said so
    bundle = stage_pxe(ctx, base, PxeOptions(args.server, args.http_port, args.iso_url))
    print(f"wrote {bundle}/")
    print("  BIOS PXE: boot/grub/i386-pc/core.0   UEFI PXE: boot/grub/x86_64-efi/core.efi   iPXE: boot.ipxe")
    print(f"  serve it: builder serve {bundle} --bind 0.0.0.0 --port {args.http_port}  (plus TFTP of the same folder)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from builder.errors import BuilderError
    from builder.media.serve import make_server

    if not args.dir.is_dir():
        raise BuilderError(f"not a folder: {args.dir}")
    try:
        server = make_server(args.dir.absolute(), args.bind, args.port)
    except OSError as exc:
        raise BuilderError(f"cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}") from None
    host, bound = str(server.server_address[0]), server.server_address[1]
    print(f"serving {args.dir} on http://{host}:{bound}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
