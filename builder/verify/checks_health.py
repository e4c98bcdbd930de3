"""Health checks for the seed's recommended alerts: GPU unavailable, NFS mounts unavailable, scratch
disk pressure. Each check fails while its alert holds; `builder verify --only health` runs only these,
as often as a person or a timer likes (exit code 1: an alert holds).
"""

from __future__ import annotations

import shlex
from dataclasses import replace

from builder.model import HostModel
from builder.verify.core import SEED, Check, Context, Outcome, failed, not_applicable, passed
from builder.verify.targets import NO_GPU_IN_QEMU

NFS_BOUND = 5  # seconds a mount may take to answer `ls` + `stat -f` before it counts as down
GPU_BOUND = 30  # seconds for nvidia-smi (it hangs when the driver is wedged)


def gpu_health_check() -> Check:
    def fn(ctx: Context) -> Outcome:
        res = ctx.run("if ! command -v nvidia-smi >/dev/null; then echo 'nvidia-smi: not installed' >&2; exit 127; "
                      f"fi; timeout -s KILL {GPU_BOUND} nvidia-smi -L; exit $?", timeout=GPU_BOUND + 30)
        gpus = [ln.strip() for ln in res.stdout.splitlines() if ln.strip().startswith("GPU ")]
        if res.rc == 127:
            return failed("GPU unavailable: nvidia-smi is not installed", expected="nvidia-smi -L lists a GPU",
                          found="no nvidia-smi")
        if res.rc in (124, 137):
            return failed(f"GPU unavailable: nvidia-smi did not answer within {GPU_BOUND}s",
                          expected="nvidia-smi -L lists a GPU", found="timeout")
        if not res.ok or not gpus:
            return failed(f"GPU unavailable: nvidia-smi -L {'failed' if not res.ok else 'lists no GPU'}: "
                          f"{res.brief()}", expected="nvidia-smi -L lists a GPU", found=res.brief() or "no GPU")
        return passed(f"{len(gpus)} GPU(s): {'; '.join(gpus)}"[:300], found=gpus[0])

    return Check("health.gpu", "alert gpu-unavailable: nvidia-smi lists the GPU", SEED["alert-gpu"],
                 f"timeout {GPU_BOUND} nvidia-smi -L", "at least one GPU listed", fn, family="health",
                 not_on=NO_GPU_IN_QEMU)


def nfs_probe_script(mountpoints: list[str], bound: int = NFS_BOUND) -> str:
    """All mounts probed in parallel, each bounded: one line 'MOUNTPOINT|rc|fstype or error' per mount.

    Entering the folder triggers an automount, `ls` and `stat -f` need an answer from the server; a
    hard mount whose server is gone hangs until `timeout` kills it (rc 137). Each probe runs in a
    subshell so the kill never reaches the SSH session."""
    probe = 'cd "$1" && ls . >/dev/null && stat -f -c %T .'
    return (f"for mp in {' '.join(shlex.quote(m) for m in mountpoints)}; do "
            f"( out=$(timeout -s KILL {bound} sh -c {shlex.quote(probe)} _ \"$mp\" 2>&1); rc=$?; "
            "printf '%s|%s|%s\\n' \"$mp\" \"$rc\" \"$(printf %s \"$out\" | tr '\\n' ' ')\" ) & "
            "done; wait")


def parse_nfs_probe(text: str) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        parts = line.split("|", 2)
        if len(parts) == 3 and parts[1].strip().lstrip("-").isdigit():
            out[parts[0]] = (int(parts[1]), parts[2].strip())
    return out


def nfs_health_check(model: HostModel) -> Check:
    mounts = [m.mountpoint for m in model.nfs.mounts]

    def fn(ctx: Context) -> Outcome:
        if not mounts:
            return not_applicable("the model has no NFS mounts")
        res = ctx.run(nfs_probe_script(mounts), root=True, timeout=NFS_BOUND + 30)
        answers = parse_nfs_probe(res.stdout)
        down = []
        for mp in mounts:
            rc, what = answers.get(mp, (-1, f"no answer from the probe ({res.brief()})"))
            if rc in (124, 137):
                down.append(f"{mp} (no answer within {NFS_BOUND}s)")
            elif rc != 0:
                down.append(f"{mp} ({what or f'exit {rc}'})")
            elif not what.startswith("nfs"):
                down.append(f"{mp} (not mounted: the folder is on {what or '?'})")
        if down:
            return failed(f"NFS mounts unavailable: {len(down)} of {len(mounts)}: " + "; ".join(down),
                          expected=f"every mount answers within {NFS_BOUND}s", found="; ".join(down))
        return passed(f"all {len(mounts)} NFS mounts answer within {NFS_BOUND}s", found=f"{len(mounts)} up")

    return Check("health.nfs-mounts", f"alert nfs-mounts-unavailable: every mount answers within {NFS_BOUND}s",
                 SEED["alert-nfs"], f"timeout {NFS_BOUND}: cd MOUNT; ls; stat -f (each mount)",
                 f"every modelled mount answers within {NFS_BOUND}s", fn, family="health")


def scratch_df_command(mp: str) -> str:
    """df of the filesystem that holds `mp`; when `mp` does not exist (yet), of its nearest existing
    parent, whose path is printed first (where the data would land)."""
    return (f"p={shlex.quote(mp)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; "
            "[ \"$p\" = " + shlex.quote(mp) + " ] || echo \"$p\"; df -P -B1 \"$p\"")


def parse_df(text: str) -> tuple[int, int, str] | None:
    """`df -P -B1 PATH` -> (used, available, mounted on); None when unreadable."""
    lines = [ln.split() for ln in text.strip().splitlines() if ln.strip()]
    lines = lines[next((i for i, ln in enumerate(lines) if ln[:1] == ["Filesystem"]), 0) + 1:]
    if not lines or len(lines[-1]) < 6:
        return None
    cols = lines[-1]
    try:
        return int(cols[2]), int(cols[3]), " ".join(cols[5:])
    except ValueError:
        return None


def scratch_pressure_check(model: HostModel) -> Check:
    scratch = model.storage.scratch
    mp = (scratch.mountpoint if scratch else None) or model.docker.data_root
    limit = scratch.pressure_percent if scratch else 0

    def fn(ctx: Context) -> Outcome:
        if scratch is None:
            return not_applicable("the model has no scratch disk (storage.scratch)")
        res = ctx.run(scratch_df_command(mp), timeout=30)
        parsed = parse_df(res.stdout)
        if not res.ok or parsed is None:
            return failed(f"cannot read the usage of {mp}: {res.brief()}", expected=f"usage ≤ {limit}%")
        used, avail, on = parsed
        first = res.stdout.lstrip().split("\n", 1)[0].strip()
        missing = "" if first.startswith("Filesystem") else f"; {mp} does not exist, measured {first}"
        pct = 100.0 * used / max(used + avail, 1)
        where = mp if on == mp and not missing else f"{mp} (on the filesystem mounted at {on}{missing})"
        found = f"{pct:.1f}% used, {avail // 2**20} MiB free"
        if pct > limit:
            return failed(f"scratch disk pressure: {where} is {pct:.1f}% full (threshold {limit}%)",
                          expected=f"usage ≤ {limit}%", found=found)
        return passed(f"{where}: {found} (threshold {limit}%)", found=found)

    return Check("health.scratch-pressure", f"alert scratch-disk-pressure: {mp} at most {limit}% full",
                 SEED["alert-scratch"], f"df -P -B1 {mp}", f"usage ≤ {limit}% (storage.scratch.pressure_percent)",
                 fn, family="health")


def _if_alert_modelled(model: HostModel, alert: str, check: Check) -> Check:
    """A check whose alert the model does not list (features.monitoring.alerts) is not applicable."""
    alerts = tuple(model.features.monitoring.alerts)
    if alert in alerts:
        return check

    def fn(ctx: Context) -> Outcome:
        return not_applicable(f"the model does not list the alert {alert} (features.monitoring.alerts)")

    return replace(check, fn=fn)


def health_checks(model: HostModel) -> list[Check]:
    checks = {"gpu-unavailable": gpu_health_check(), "nfs-mounts-unavailable": nfs_health_check(model),
              "scratch-disk-pressure": scratch_pressure_check(model)}
    return [_if_alert_modelled(model, alert, c) for alert, c in checks.items()]
