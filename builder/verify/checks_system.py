"""System checks: cloud-init result, failed units, hostname, admin accounts, root locked."""

from __future__ import annotations

import json
import shlex
from typing import Any

from builder.model import HostModel, User
from builder.verify.core import SEED, Check, Context, Outcome, failed, passed


def cloud_init_check() -> Check:
    def fn(ctx: Context) -> Outcome:
        st = ctx.run("cloud-init status --long")
        status = _field(st.stdout, "status")
        extended = _field(st.stdout, "extended_status")
        res = ctx.run("cat /run/cloud-init/result.json", root=True)
        errors: list[str] = []
        recoverable: dict[str, Any] = {}
        if res.ok:
            try:
                v1 = json.loads(res.stdout).get("v1", {})
                errors = [str(e) for e in v1.get("errors") or []]
                recoverable = v1.get("recoverable_errors") or {}
            except (ValueError, AttributeError):
                errors = [f"unreadable result.json: {res.stdout[:200]!r}"]
        if status != "done":
            return failed(
                f"cloud-init status is {status or 'unknown'!r}" + (f"; errors: {'; '.join(errors)}" if errors
                                                                 else f"; {st.brief()}"),
                expected="status: done", found=f"status: {status}",
            )
        if not res.ok:
            return failed("cloud-init has no /run/cloud-init/result.json", expected="result.json with no errors",
                          found=res.brief())
        if errors:
            return failed(f"cloud-init finished with {len(errors)} error(s): {'; '.join(errors)[:600]}",
                          expected="errors: []", found=f"errors: {len(errors)}")
        hard = recoverable.get("ERROR") or []
        if hard:
            return failed(f"cloud-init logged {len(hard)} ERROR(s): {'; '.join(map(str, hard))[:600]}",
                          expected="no ERROR in recoverable_errors", found=str(hard)[:300])
        soft = {k: len(v) for k, v in recoverable.items() if v}
        note = f" (recoverable: {soft})" if soft else ""
        return passed(f"cloud-init done, no errors{note}", found=extended or status)

    return Check("system.cloud-init", "cloud-init finished without errors", SEED["rebuilt-procedures"],
                 "cloud-init status --long; cat /run/cloud-init/result.json", "status done, errors []", fn,
                 family="system")


def failed_units_check() -> Check:
    def fn(ctx: Context) -> Outcome:
        res = ctx.run("systemctl list-units --failed --plain --no-legend --no-pager")
        if not res.ok:
            return failed(f"systemctl failed: {res.brief()}")
        units = [ln.split()[0] for ln in res.stdout.splitlines() if ln.strip()]
        if units:
            detail = ctx.run("systemctl status --no-pager --lines=3 " + " ".join(map(shlex.quote, units)))
            return failed(f"{len(units)} failed unit(s): {', '.join(units)}", expected="no failed units",
                          found=", ".join(units) + f" — {detail.stdout.strip()[:300]}")
        return passed("no failed units")

    return Check("system.failed-units", "no failed systemd units", SEED["rebuilt-procedures"],
                 "systemctl list-units --failed", "empty list", fn, family="system")


def hostname_check(model: HostModel) -> Check:
    want = model.host.hostname

    def fn(ctx: Context) -> Outcome:
        live = ctx.run("hostname").stdout.strip()
        conf = ctx.run("cat /etc/hostname").stdout.strip()
        if live == want and conf.split(".")[0] == want:
            return passed(f"hostname is {want}", found=live)
        return failed(f"hostname is {live!r} (/etc/hostname: {conf!r})", expected=want, found=live)

    return Check("system.hostname", "hostname as modelled", SEED["hostname"], "hostname; cat /etc/hostname",
                 want, fn, family="system")


def user_account_check(user: User) -> Check:
    name = user.name

    def fn(ctx: Context) -> Outcome:
        pw = ctx.run(f"getent passwd {shlex.quote(name)}")
        if not pw.ok or not pw.stdout.strip():
            return failed(f"user {name} does not exist", expected=f"{name} uid={user.uid}", found="absent")
        f = pw.stdout.strip().split(":")
        uid, gid, gecos, shell = int(f[2]), int(f[3]), f[4], f[6]
        groups = ctx.run(f"id -nG {shlex.quote(name)}").stdout.split()
        problems = []
        if uid != user.uid:
            problems.append(f"uid {uid} != {user.uid}")
        if gid != user.gid:
            problems.append(f"gid {gid} != {user.gid}")
        if shell != user.shell:
            problems.append(f"shell {shell} != {user.shell}")
        if user.gecos and gecos.split(",")[0] != user.gecos:
            problems.append(f"gecos {gecos!r} != {user.gecos!r}")
        missing = sorted(set(user.groups) - set(groups))
        if missing:
            problems.append(f"not in group(s) {', '.join(missing)}")
        found = f"uid={uid} gid={gid} shell={shell} groups={','.join(groups)}"
        expected = f"uid={user.uid} gid={user.gid} shell={user.shell} groups⊇{','.join(user.groups)}"
        if problems:
            return failed(f"user {name}: " + "; ".join(problems), expected=expected, found=found)
        return passed(f"user {name}: {found}", found=found)

    return Check(f"users.{name}.account", f"user {name} with fixed UID/GID and groups", SEED["uid-gid"],
                 f"getent passwd {name}; id -nG {name}", f"uid={user.uid} gid={user.gid}", fn, family="users")


def _key_id(line: str) -> str:
    """'type base64' of an authorized_keys line (options and comment dropped)."""
    parts = line.split()
    for i, p in enumerate(parts[:-1]):
        if p.startswith(("ssh-", "ecdsa-", "sk-")):
            return f"{p} {parts[i + 1]}"
    return line.strip()


def user_keys_check(user: User) -> Check:
    name = user.name
    want = [_key_id(k) for k in user.ssh_authorized_keys]

    def fn(ctx: Context) -> Outcome:
        home = ctx.run(f"getent passwd {shlex.quote(name)} | cut -d: -f6").stdout.strip() or f"/home/{name}"
        res = ctx.run(f"cat {shlex.quote(home)}/.ssh/authorized_keys", root=True)
        if not res.ok:
            return failed(f"no authorized_keys for {name}: {res.brief()}", expected=f"{len(want)} key(s)")
        found = [_key_id(ln) for ln in res.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        # Keys the harness added for this run (its ephemeral login key) are not findings.
        allowed_extra = {_key_id(k) for k in ctx.extra_authorized_keys}
        missing = sorted(set(want) - set(found))
        unexpected = sorted(set(found) - set(want) - allowed_extra)
        if missing or unexpected:
            diff = "; ".join(p for p in (f"missing: {', '.join(missing)}" if missing else "",
                                         f"unexpected: {', '.join(unexpected)}" if unexpected else "") if p)
            return failed(f"authorized_keys of {name} differ from the model ({_short(diff)})",
                          expected=f"{len(want)} modelled key(s)", found=f"{len(found)} key(s)")
        return passed(f"{name} has exactly the modelled key(s)", found=f"{len(found)} key(s)")

    return Check(f"users.{name}.ssh-key", f"user {name} has the modelled SSH key(s)", SEED["key-auth"],
                 f"cat ~{name}/.ssh/authorized_keys", "the model's keys, no others", fn, family="users")


def _short(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def password_status_check(name: str, want: str, *, seed_key: str, title: str) -> Check:
    """`passwd -S` status: L (locked) when no password is modelled, P when one is."""

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(f"passwd -S {shlex.quote(name)}", root=True)
        fields = res.stdout.split()
        if not res.ok or len(fields) < 2:
            return failed(f"passwd -S {name} failed: {res.brief()}", expected=want)
        st = fields[1]
        meaning = {"L": "locked", "NP": "NO password (login without password!)", "P": "usable password"}
        if st == want:
            return passed(f"{name}: {meaning.get(st, st)}", found=st)
        return failed(f"{name} password status is {st} ({meaning.get(st, '?')})", expected=want, found=st)

    return Check(f"users.{name}.password", title, SEED[seed_key], f"sudo passwd -S {name}",
                 f"status {want}", fn, family="users")


def system_checks(model: HostModel) -> list[Check]:
    checks = [cloud_init_check(), failed_units_check(), hostname_check(model)]
    for u in model.users:
        has_pw = bool(getattr(u, "password_hash", None) or getattr(u, "password_file", None))
        checks += [
            user_account_check(u),
            user_keys_check(u),
            password_status_check(u.name, "P" if has_pw else "L", seed_key="key-auth",
                                  title=f"user {u.name} password " + ("set" if has_pw else "locked")),
        ]
    checks.append(password_status_check("root", "L", seed_key="root-disabled", title="root account locked"))
    return checks


def _field(text: str, key: str) -> str:
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep and k.strip() == key:
            return v.strip()
    return ""
