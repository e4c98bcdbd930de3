#!/usr/bin/env python3
"""Benchmark (not a test): remaster time ÷ plain `cp` time for a ~3 GB ISO, measured in one run.

    .venv/bin/python benchmarks/remaster_vs_cp.py [--size-mib 3000] [--workdir DIR] [--repeat 2]

Builds a stand-in ISO padded to the size of Ubuntu's live-server ISO, then times `builder`'s
remaster (xorriso -indev/-outdev with boot image replay) and `cp` of the same base file, into the
same folder, alternating, and prints each time and the ratio of the medians. Needs ~3× the size
in free disk space; everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from builder.media.fetch import cache_dir  # noqa: E402
from builder.media.iso import RemasterSpec, remaster  # noqa: E402
from builder.testbed.standin_iso import build_standin_iso  # noqa: E402

SEED = {"user-data": b"#cloud-config\nautoinstall:\n  version: 1\n", "meta-data": b"instance-id: bench\n"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--size-mib", type=int, default=3000, help="padding added to the stand-in (default 3000)")
    ap.add_argument("--workdir", type=Path, default=None, help="folder on the disk to measure (default: /var/tmp)")
    ap.add_argument("--repeat", type=int, default=2, help="measurements of each (default 2)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-remaster-", dir=args.workdir or "/var/tmp") as tmp:
        work = Path(tmp)
        base = work / "standin-padded.iso"
        t = time.monotonic()
        build_standin_iso(base, cache_dir(), 1769126400, pad_mib=args.size_mib)
        size = base.stat().st_size
        print(f"built padded stand-in: {size / (1 << 30):.2f} GiB in {time.monotonic() - t:.1f}s", flush=True)
        subprocess.run(["cat", str(base)], stdout=subprocess.DEVNULL, check=True)  # same cache state for both
        spec = RemasterSpec("bench", 1769126400, ("console=ttyS0,115200n8",), SEED)
        cp_times, rem_times = [], []
        for i in range(args.repeat):
            out = work / f"cp-{i}.iso"
            t = time.monotonic()
            subprocess.run(["cp", str(base), str(out)], check=True)
            subprocess.run(["sync", str(out)], check=True)
            cp_times.append(time.monotonic() - t)
            out.unlink()
            out = work / f"remaster-{i}.iso"
            t = time.monotonic()
            remaster(base, out, spec, allow_standin=True)
            subprocess.run(["sync", str(out)], check=True)
            rem_times.append(time.monotonic() - t)
            out.unlink()
            print(f"run {i + 1}: cp {cp_times[-1]:.2f}s   remaster {rem_times[-1]:.2f}s", flush=True)
        cp_m, rem_m = statistics.median(cp_times), statistics.median(rem_times)
        print(f"size {size / (1 << 30):.2f} GiB: cp {cp_m:.2f}s, remaster {rem_m:.2f}s "
              f"(median of {args.repeat}); remaster / cp = {rem_m / cp_m:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
