#!/usr/bin/python3
"""Host health metrics for node exporter's textfile collector (installed by builder).

Seed: "GPU Metrics: nvidia-smi baseline" and "Alerts (recommended): GPU unavailable, NFS mounts
unavailable, Disk pressure on local scratch". Run by prometheus-host-health.timer; writes
<textfile_dir>/prometheus-host-health.prom atomically (temporary file + rename), so node exporter
never reads half a file. Every probe is time-bounded: a hung NFS mount or a wedged GPU counts as
down instead of hanging the script.

Config: /etc/prometheus-host-health.json (rendered from the host model); HOST_HEALTH_CONFIG and
HOST_HEALTH_MOUNTS (the mount table, default /proc/self/mounts) override paths for tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CONFIG = "/etc/prometheus-host-health.json"
OUT_NAME = "prometheus-host-health.prom"
NFS_TYPES = {"nfs", "nfs4"}


def bounded(cmd: list[str], timeout: float) -> tuple[bool, str]:
    """(finished with exit 0 in time, stdout). A child that ignores the kill is abandoned, not waited for."""
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, start_new_session=True)
    except OSError:
        return False, ""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass  # stuck in the kernel (hard NFS mount); leave it
        return False, ""
    return proc.returncode == 0, out


def mounted(mounts_file: str) -> dict[str, str]:
    """mountpoint -> fstype, from the kernel's table (reading it never touches the mounts)."""
    table: dict[str, str] = {}
    with open(mounts_file, encoding="utf-8", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3:
                table[fields[1].replace("\\040", " ")] = fields[2]
    return table


def existing_parent(path: str) -> str:
    """`path`, or its nearest existing parent: where data written to `path` would land (a data root
    that Docker has not created yet is still measured on the filesystem that will hold it)."""
    while not os.path.exists(path) and path not in ("", "/"):
        path = os.path.dirname(path)
    return path or "/"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def collect(cfg: dict, mounts_file: str) -> list[str]:
    timeout = float(cfg["probe_timeout_seconds"])
    lines = []
    ok, out = bounded(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], timeout)
    names = [n.strip() for n in out.splitlines() if n.strip()] if ok else []
    lines += [
        "# HELP host_health_gpu_up 1 if nvidia-smi answered in time and listed a GPU.",
        "# TYPE host_health_gpu_up gauge",
        f"host_health_gpu_up {1 if names else 0}",
        "# HELP host_health_gpu_count GPUs listed by nvidia-smi.",
        "# TYPE host_health_gpu_count gauge",
        f"host_health_gpu_count {len(names)}",
    ]
    table = mounted(mounts_file)
    lines += [
        "# HELP host_health_nfs_mount_up 1 if the NFS mount is mounted and answers stat -f in time.",
        "# TYPE host_health_nfs_mount_up gauge",
    ]
    for mp in cfg["nfs_mounts"]:
        up = table.get(mp) in NFS_TYPES and bounded(["stat", "-f", "--", mp], timeout)[0]
        lines.append(f'host_health_nfs_mount_up{{mountpoint="{_label(mp)}"}} {1 if up else 0}')
    scratch = cfg.get("scratch_mountpoint")
    if scratch:
        lines += [
            "# HELP host_health_scratch_used_ratio Used fraction of the local scratch filesystem (as df counts it).",
            "# TYPE host_health_scratch_used_ratio gauge",
        ]
        try:
            st = os.statvfs(existing_parent(scratch))
            used = st.f_blocks - st.f_bfree
            total = used + st.f_bavail
            ratio = used / total if total else 0.0
            lines.append(f'host_health_scratch_used_ratio{{mountpoint="{_label(scratch)}"}} {ratio:.6f}')
        except OSError:
            pass  # no series: absent, not "empty"
    lines += [
        "# HELP host_health_last_run_timestamp_seconds When these metrics were collected.",
        "# TYPE host_health_last_run_timestamp_seconds gauge",
        f"host_health_last_run_timestamp_seconds {time.time():.3f}",
    ]
    return lines


def write_atomic(directory: str, name: str, text: str) -> None:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        os.unlink(tmp)
        raise


def main() -> int:
    with open(os.environ.get("HOST_HEALTH_CONFIG", CONFIG), encoding="utf-8") as f:
        cfg = json.load(f)
    lines = collect(cfg, os.environ.get("HOST_HEALTH_MOUNTS", "/proc/self/mounts"))
    write_atomic(cfg["textfile_dir"], OUT_NAME, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
