"""NFS checks: every modelled mount is in fstab and mounted with its options; RW writable, RO refuses."""

from __future__ import annotations

import json
import shlex
from typing import Any

from builder.model import HostModel, NfsMount
from builder.verify.core import SEED, Check, Context, Outcome, failed, passed

# Options that mount(8)/systemd consume; the kernel never shows them in the live mount.
USERSPACE_ONLY = {"_netdev", "nofail", "auto", "noauto", "defaults", "user", "users", "nouser", "owner"}
IO_TIMEOUT = 20  # seconds; NFS "hard" mounts hang forever when the server is gone


def bounded(script: str, seconds: int = IO_TIMEOUT) -> str:
    """Run `script` under `timeout -s KILL`, in a shell that outlives it: timeout kills its whole
    process group, and if that were the SSH session's leader, ssh would exit 255 (killed by a
    signal) instead of reporting the timeout's 137."""
    return f"timeout -s KILL {seconds} sh -c {shlex.quote(script)}; exit $?"


def _userspace(opt: str) -> bool:
    return opt in USERSPACE_ONLY or opt.startswith(("x-", "comment="))


def expected_options(model: HostModel, mount: NfsMount) -> list[str]:
    return [*model.nfs.options, *getattr(mount, "options", ()), mount.access]


def expected_source(model: HostModel, mount: NfsMount) -> str:
    export = "/" + mount.export.strip("/")
    return f"{model.nfs.server}:{export}"


def _norm_source(src: str) -> str:
    host, _, path = src.partition(":")
    return f"{host}:/{path.strip('/')}"


def _seed(mount: NfsMount):
    return SEED.get(f"mount:{mount.mountpoint}", SEED["nfs-hosted"])


def _table(ctx: Context, fstab: bool) -> list[dict[str, Any]]:
    cmd = "findmnt -J -l -o TARGET,SOURCE,FSTYPE,OPTIONS" + (" --fstab" if fstab else "")
    res = ctx.run(cmd)
    if not res.ok and not res.stdout.strip():
        return []
    return json.loads(res.stdout or "{}").get("filesystems", [])


def nfs_mounted_check(model: HostModel, mount: NfsMount) -> Check:
    mp = mount.mountpoint
    want_opts = expected_options(model, mount)
    want_src = expected_source(model, mount)
    version = str(model.nfs.version)
    expect = f"{want_src} on {mp} type nfs4 ({','.join(want_opts)}, vers={version})"

    def fn(ctx: Context) -> Outcome:
        q = shlex.quote(mp)
        # Reading the folder triggers an automount; statfs needs an answer from the server.
        trig = ctx.run(bounded(f"ls {q} >/dev/null && stat -f -c %T {q}"), timeout=IO_TIMEOUT + 30)
        fstab = [e for e in _table(ctx, fstab=True) if e.get("target") == mp]
        live = [e for e in _table(ctx, fstab=False)
                if e.get("target") == mp and str(e.get("fstype", "")).startswith("nfs")]
        problems = []
        if not fstab:
            problems.append("no /etc/fstab entry")
        else:
            f = fstab[0]
            fopts = str(f.get("options") or "").split(",")
            missing = [o for o in want_opts if o not in fopts]
            if missing:
                problems.append(f"fstab options lack {','.join(missing)}")
            if _norm_source(str(f.get("source"))) != want_src:
                problems.append(f"fstab source {f.get('source')} (want {want_src})")
        if trig.rc in (124, 137, 255):
            problems.append(f"not responding within {IO_TIMEOUT}s (NFS server down or unreachable?)")
        elif not trig.ok:
            problems.append(f"cannot access: {trig.brief()}")
        if not live:
            problems.append("not mounted")
            found = "not mounted"
        else:
            m = live[-1]
            opts = str(m.get("options") or "").split(",")
            found = f"{m.get('source')} type {m.get('fstype')} ({m.get('options')})"
            if _norm_source(str(m.get("source"))) != want_src:
                problems.append(f"source {m.get('source')} (want {want_src})")
            kernel_missing = [o for o in want_opts
                              if not _userspace(o) and o not in opts and o not in ("ro", "rw")]
            if kernel_missing:
                problems.append(f"live options lack {','.join(kernel_missing)}")
            if opts[:1] != [mount.access]:
                problems.append(f"mounted {opts[0] if opts else '?'} (want {mount.access})")
            vers = next((o.split("=", 1)[1] for o in opts if o.startswith("vers=")), "?")
            if vers != version:
                problems.append(f"NFS version {vers} (want {version})")
        if problems:
            return failed(f"{mp}: " + "; ".join(problems), expected=expect, found=found)
        return passed(f"{mp}: {found}", found=found)

    return Check(f"nfs.mounted:{mp}", f"{mp} in fstab and mounted with the modelled options", _seed(mount),
                 f"ls {mp}; stat -f {mp}; findmnt [--fstab]", expect, fn, family="nfs")


def nfs_access_check(mount: NfsMount) -> Check:
    mp = mount.mountpoint
    probe = shlex.quote(f"{mp.rstrip('/')}/.builder-verify-write-test")

    def fn(ctx: Context) -> Outcome:
        if mount.access == "rw":
            res = ctx.run(bounded(f"echo ok > {probe} && cat {probe} && rm -f {probe}"), timeout=IO_TIMEOUT + 30)
            if res.ok and res.stdout.strip() == "ok":
                return passed(f"{mp}: the admin user can write", found="write ok")
            why = "timed out (NFS server down?)" if res.rc in (124, 137, 255) else res.brief()
            return failed(f"{mp} is modelled rw but a write by the admin user failed: {why}",
                          expected="write succeeds", found=why)
        # Read-only: even root must be refused, by the mount itself (EROFS), not by permissions.
        res = ctx.run(bounded(f"if touch {probe}; then rm -f {probe}; echo WROTE; fi"), root=True,
                      timeout=IO_TIMEOUT + 30)
        text = res.stdout + res.stderr
        if "WROTE" in res.stdout:
            return failed(f"{mp} is modelled ro but root could write to it", expected="Read-only file system",
                          found="write succeeded")
        if res.rc in (124, 137, 255):
            return failed(f"{mp}: write test timed out (NFS server down?)", expected="Read-only file system",
                          found="timeout")
        if "Read-only file system" in text:
            return passed(f"{mp}: write refused (Read-only file system)", found="EROFS")
        return failed(f"{mp}: write refused, but not by a read-only mount: {res.brief()}",
                      expected="Read-only file system", found=res.brief())

    want = "admin user can write" if mount.access == "rw" else "root gets 'Read-only file system'"
    return Check(f"nfs.access:{mp}", f"{mp} is {mount.access.upper()} in practice", SEED["least-privilege-mounts"],
                 f"write a test file to {mp}", want, fn, family="nfs")


def nfs_checks(model: HostModel) -> list[Check]:
    checks: list[Check] = []
    for m in model.nfs.mounts:
        checks += [nfs_mounted_check(model, m), nfs_access_check(m)]
    return checks
