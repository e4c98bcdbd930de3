"""`builder pxe` (network-boot bundle) and `builder serve` (HTTP with HEAD and Range)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from builder.artifacts import source_date_epoch, write_seed
from builder.commands.common import add_host_arg, add_out_arg, add_schema_arg, load_host, render_checked
from builder.commands.iso import add_base_args, autoinstall_seed, resolve_base
from builder.iso import check_base, list_files
from builder.pxe import DEFAULT_HTTP_PORT, PxeSpec, build_bundle, update_manifest
from builder.serve import make_server, port_number

log = logging.getLogger("builder.serve")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pxe", help="kernel, initrd, iPXE/GRUB netboot configs and seed for network install")
    add_host_arg(p)
    add_out_arg(p)
    add_schema_arg(p)
    add_base_args(p)
    p.add_argument("--server", default=None, metavar="HOST[:PORT]",
                   help="HTTP server the installer fetches from (default: the TFTP server, on --http-port)")
    p.add_argument("--http-port", type=port_number, default=DEFAULT_HTTP_PORT, metavar="N",
                   help=f"port of that HTTP server (default {DEFAULT_HTTP_PORT})")
    p.add_argument("--iso-url", default=None, metavar="URL",
                   help="URL of the ISO for casper's url= (default: the ISO is placed in the bundle)")
    p.set_defaults(func=cmd_pxe)

    s = sub.add_parser("serve", help="serve a folder (e.g. a PXE bundle) over HTTP, with HEAD and Range")
    s.add_argument("dir", type=Path, metavar="DIR")
    s.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=port_number, default=DEFAULT_HTTP_PORT, help=f"port (default {DEFAULT_HTTP_PORT})")
    s.set_defaults(func=cmd_serve)


def cmd_pxe(args: argparse.Namespace) -> int:
    model = load_host(args)
    host = model.host.hostname
    files, _steps = render_checked(model, args.schema_dir, tools=False)
    base, _name, base_sha = resolve_base(args, model)
    check_base(list_files(base), _info(base), base, args.allow_standin)
    host_dir = write_seed(model, files, args.out)
    spec = PxeSpec(host, source_date_epoch(model), tuple(model.os.kernel_cmdline), autoinstall_seed(files),
                   server=args.server, http_port=args.http_port, iso_url=args.iso_url)
    bundle = build_bundle(base, host_dir / "pxe", spec)
    update_manifest(host_dir / "manifest.json", bundle, base, base_sha)
    print(f"wrote {bundle}/")
    print("  BIOS PXE: boot/grub/i386-pc/core.0   UEFI PXE: boot/grub/x86_64-efi/core.efi   iPXE: boot.ipxe")
    print(f"  serve it: builder serve {bundle} --bind 0.0.0.0 --port {args.http_port}  (plus TFTP of the same folder)")
    return 0


def _info(base: Path) -> bytes:
    from builder.commands.iso import extract_info

    return extract_info(base)


def cmd_serve(args: argparse.Namespace) -> int:
    if not args.dir.is_dir():
        from builder.errors import BuilderError

        raise BuilderError(f"not a folder: {args.dir}")
    server = make_server(args.dir, args.bind, args.port)
    host, port = server.server_address[:2]
    print(f"serving {args.dir} on http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
