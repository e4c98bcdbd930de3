"""`builder verify`: boot the first-boot seed in QEMU (stand-in image) and check the host against its model."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

from builder.commands.common import add_host_arg, add_out_arg, load_host
from builder.verify.core import CheckResult
from builder.verify.report import MARK, render_table, write_report


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
    p.add_argument("--boot-timeout", type=float, default=None, metavar="SECONDS",
                   help="how long to wait for cloud-init and SSH (default: 600)")
    p.set_defaults(func=cmd_verify)


def _progress(r: CheckResult) -> None:
    print(f"  {MARK[r.status]} {r.check.id}", file=sys.stderr, flush=True)


def cmd_verify(args: argparse.Namespace) -> int:
    from builder.verify.session import guest_session, image_from_file, seed_source, verify_session

    started = time.monotonic()
    model = load_host(args)
    if args.seed:  # bad inputs fail before anything is created under --out
        seed_source(Path(args.seed))
    if args.image:
        image_from_file(Path(args.image))
    host_dir = Path(args.out) / model.host.hostname
    if args.keep:
        work = host_dir / "verify-work"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    else:
        host_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".verify-work-", dir=host_dir))
    try:
        print(f"builder: booting {model.host.hostname} (stand-in, TCG: 1-3 min)...", file=sys.stderr)
        with guest_session(model, work, seed=args.seed, image=args.image, keep=args.keep,
                           boot_timeout=args.boot_timeout) as session:
            print(f"builder: guest up {session.timings}; running checks", file=sys.stderr)
            report = verify_session(session, only=args.only, on_result=_progress, started=started)
            serial = Path(session.access.serial_log)
            out = write_report(report, host_dir / "verify", serial_log=serial)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            with contextlib.suppress(OSError):
                host_dir.rmdir()  # only if the failed run left it empty
    print(render_table(report, width=shutil.get_terminal_size((120, 20)).columns))
    print(f"report: {out / 'report.json'}, {out / 'junit.xml'}, serial log {out / 'serial.log'}")
    return 0 if report.ok else 1
