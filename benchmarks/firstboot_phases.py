#!/usr/bin/env python3
"""Boot-to-verified time of the first-boot test, split by phase, measured in one run.

    .venv/bin/python benchmarks/firstboot_phases.py [--host FILE] [--keep DIR]

Phases: image (cache lookup or build), services (NFS + signed APT repo), seed render, boot to the
login prompt, cloud-init done, SSH ready, and a first admin command over SSH ("verified").
Run as root (mmdebstrap, nfs-ganesha). TCG on 2 cores: expect 1-3 min for the boot phases.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.model import load_model  # noqa: E402
from builder.testbed.boot import booted_guest  # noqa: E402
from builder.testbed.image import build_image  # noqa: E402
from builder.testbed.services import harness_model, harness_services  # noqa: E402
from builder.verify.session import render_seed  # noqa: E402
from builder.verify.ssh import generate_keypair, ssh_run  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (serial log, seed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = load_model(args.host)
    phases: list[tuple[str, float]] = []
    t0 = time.monotonic()

    def mark(name: str, since: float) -> float:
        now = time.monotonic()
        phases.append((name, now - since))
        return now

    with contextlib.ExitStack() as stack:
        work = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fb-bench-")))
        t = time.monotonic()
        image = build_image()
        t = mark("image (cached or built)", t)
        identity, pub = generate_keypair(work / "ssh")
        services = stack.enter_context(harness_services(model, work / "services"))
        t = mark("services (NFS + APT repo)", t)
        seed = render_seed(harness_model(model, services, pub), work / "seed")
        t = mark("render test seed", t)
        access = stack.enter_context(booted_guest(
            model, seed, image, work / "vm", identity_file=identity, guestfwds=services.guestfwds(),
            nfs=services.nfs))
        vm = access.timings
        boot_start = t
        phases.append(("boot -> login prompt", vm.get("boot_to_login", float("nan"))))
        phases.append(("login prompt -> cloud-init done",
                       vm["cloud_init_done"] - vm.get("boot_to_login", 0.0)))
        phases.append(("cloud-init done -> SSH ready", vm["ssh_ready"] - vm["cloud_init_done"]))
        t = time.monotonic()
        r = ssh_run(access, "cloud-init status --long", timeout=60)
        mark("first admin command (cloud-init status)", t)
        status = next((ln for ln in r.stdout.splitlines() if ln.startswith("status:")), r.stderr.strip())
        total_boot = time.monotonic() - boot_start
    width = max(len(n) for n, _ in phases)
    print(f"\nfirst-boot phases ({model.host.hostname}, STANDIN image {image.key}):")
    for name, secs in phases:
        print(f"  {name:<{width}}  {secs:7.1f} s")
    print(f"  {'boot -> verified (incl. QEMU start/stop)':<{width}}  {total_boot:7.1f} s")
    print(f"  {'total':<{width}}  {time.monotonic() - t0:7.1f} s")
    print(f"  cloud-init {status}")
    return 0 if "done" in status else 1


if __name__ == "__main__":
    sys.exit(main())
