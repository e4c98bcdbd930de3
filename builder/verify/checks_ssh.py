"""SSH checks: effective sshd configuration, listeners, reachability from outside, ssh-audit."""

from __future__ import annotations

from builder.model import HostModel
from builder.verify.core import SEED, Check, Context, Outcome, diff_sets, failed, not_applicable, passed
from builder.verify.host import Result
from builder.verify.sshaudit import fail_findings, offered, parse_report

SSHD = "/usr/sbin/sshd"


def parse_sshd_t(text: str) -> dict[str, list[str]]:
    """`sshd -T` lines 'key value' -> {key: [value, ...]} (repeated keys accumulate)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            out.setdefault(key.lower(), []).append(value.strip())
    return out


def _known_ip(model: HostModel, nic: str) -> str:
    ip = model.network.interfaces[nic].ip
    if ip is None:  # the model's rules require it; a hand-built model may still lack it
        raise ValueError(f"the model gives no address for the {nic} NIC (static address or DHCP reservation)")
    return ip


def mgmt_ip(model: HostModel) -> str:
    return _known_ip(model, model.ssh.listen_on)


def servers_ip(model: HostModel) -> str:
    return _known_ip(model, "servers")


def sshd_effective_check(model: HostModel) -> Check:
    ssh = model.ssh
    yes_no = {True: "yes", False: "no"}

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(f"{SSHD} -T", root=True)
        if not res.ok:
            return failed(f"sshd -T failed: {res.brief()}", expected="sshd -T prints the effective config")
        cfg = parse_sshd_t(res.stdout)

        def one(key: str) -> str:
            return (cfg.get(key) or [""])[0]

        problems: list[str] = []
        want_single = {
            "permitrootlogin": "no" if not ssh.permit_root_login else None,
            "passwordauthentication": yes_no[bool(ssh.password_authentication)],
            "kbdinteractiveauthentication": "no" if not ssh.password_authentication else None,
            "x11forwarding": "no",
            "pubkeyauthentication": "yes",
            "port": str(ssh.port),
        }
        for key, want in want_single.items():
            if want is not None and one(key) != want:
                problems.append(f"{key} {one(key) or '(unset)'} (want {want})")
        tries = int(one("maxauthtries") or 6)
        if tries != ssh.max_auth_tries or tries > 4:
            problems.append(f"maxauthtries {tries} (want {ssh.max_auth_tries}, ≤ 4)")
        for key, want_list in (("allowusers", ssh.allow_users), ("allowgroups", ssh.allow_groups)):
            if want_list:
                got = [v for vals in cfg.get(key, []) for v in vals.split()]
                d = diff_sets(want_list, got)
                if d:
                    problems.append(f"{key} {' '.join(got) or '(unset)'} ({d})")
        crypto = ssh.crypto
        for key, want_list in (("kexalgorithms", crypto.kex), ("ciphers", crypto.ciphers),
                               ("macs", crypto.macs), ("hostkeyalgorithms", crypto.host_key_algorithms)):
            got = [a for a in one(key).split(",") if a]
            d = diff_sets(want_list, got)
            if d:
                problems.append(f"{key} differs from the model ({d})")
        want_listen = f"{mgmt_ip(model)}:{ssh.port}"
        listen = cfg.get("listenaddress", [])
        if listen != [want_listen]:
            problems.append(f"listenaddress {', '.join(listen) or '(unset)'} (want only {want_listen})")
        if problems:
            return failed("sshd effective config: " + "; ".join(problems),
                          expected="hardened values from the model", found="; ".join(problems))
        return passed("root login off, keys only, crypto and listen address as modelled")

    return Check("ssh.sshd-effective", "sshd effective hardening (sshd -T) matches the model",
                 SEED["root-disabled"], "sudo sshd -T",
                 "PermitRootLogin no, PasswordAuthentication no, KbdInteractive no, X11Forwarding no, "
                 "MaxAuthTries, AllowUsers/Groups, crypto lists, ListenAddress = MGMT", fn, family="ssh")


def moduli_check(model: HostModel) -> Check:
    bits = model.ssh.crypto.min_moduli_bits

    def fn(ctx: Context) -> Outcome:
        # Column 5 of /etc/ssh/moduli is the size in bits minus one (3071 for a 3072-bit group).
        res = ctx.run(f"awk '!/^#/ && NF >= 7 {{ n++; if ($5 + 1 < {bits}) small++ }} "
                      "END { print n+0, small+0 }' /etc/ssh/moduli")
        parts = res.stdout.split()
        if not res.ok or len(parts) != 2:
            return failed(f"cannot read /etc/ssh/moduli: {res.brief()}", expected=f"only groups ≥ {bits} bits")
        total, small = int(parts[0]), int(parts[1])
        if small:
            return failed(f"/etc/ssh/moduli has {small} of {total} groups smaller than {bits} bits",
                          expected=f"0 groups < {bits} bits", found=f"{small} small groups")
        if total == 0:
            return failed("/etc/ssh/moduli has no groups left (group exchange falls back to built-ins)",
                          expected=f"groups ≥ {bits} bits", found="0 groups")
        return passed(f"{total} DH groups, none smaller than {bits} bits")

    return Check("ssh.moduli", f"DH moduli smaller than {bits} bits removed", SEED["key-auth"],
                 "awk ... /etc/ssh/moduli", f"no group < {bits} bits", fn, family="ssh")


def ssh_listeners_check(model: HostModel) -> Check:
    port = model.ssh.port

    def fn(ctx: Context) -> Outcome:
        res = ctx.run("ss -Htln")
        if not res.ok:
            return failed(f"ss failed: {res.brief()}")
        addrs = []
        for line in res.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 4:
                addr, _, p = cols[3].rpartition(":")
                if p == str(port):
                    addrs.append(addr.strip("[]").split("%")[0])
        want = mgmt_ip(model)
        if addrs == [want]:
            return passed(f"port {port} listens only on {want} (MGMT)", found=", ".join(addrs))
        return failed(
            f"port {port} listens on {', '.join(addrs) or 'nothing'}; expected only the MGMT address {want}",
            expected=f"{want}:{port}", found=", ".join(f"{a}:{port}" for a in addrs) or "none",
        )

    return Check("ssh.listeners", "sshd listens only on the MGMT address (ss -tln)", SEED["admin-mgmt-only"],
                 "ss -Htln", "only MGMT_ADDRESS:22", fn, family="ssh")


def outside_reachability_check() -> Check:
    def fn(ctx: Context) -> Outcome:
        if ctx.endpoints is None:
            return not_applicable("no outside view of the host (no forwarded MGMT/SERVERS ports given)")
        mg, sv = ctx.endpoints.mgmt, ctx.endpoints.servers
        m_banner, m_detail = ctx.outside.ssh_banner(mg)
        s_banner, s_detail = ctx.outside.ssh_banner(sv)
        ctx.note(f"banner {mg.host}:{mg.port} (MGMT)", Result(0 if m_banner else 1, m_banner or m_detail))
        ctx.note(f"banner {sv.host}:{sv.port} (SERVERS)", Result(0 if s_banner else 1, s_banner or s_detail))
        found = f"MGMT {mg.host}:{mg.port}: {m_banner or m_detail}; SERVERS {sv.host}:{sv.port}: " \
                f"{s_banner or s_detail}"
        if not m_banner:
            return failed(f"SSH does not answer on MGMT ({m_detail})", expected="SSH banner on MGMT",
                          found=found)
        if s_banner:
            return failed(f"SSH answers on SERVERS ({s_banner}) — it must be refused there",
                          expected="SERVERS refused", found=found)
        return passed("SSH answers on MGMT and is refused on SERVERS", found=found)

    return Check("ssh.reachability", "from outside: SSH answers on MGMT, refused on SERVERS",
                 SEED["admin-mgmt-only"], "TCP connect + banner to both forwarded ports",
                 "banner on MGMT, none on SERVERS", fn, family="ssh")


def ssh_audit_check(model: HostModel) -> Check:
    crypto = model.ssh.crypto

    def fn(ctx: Context) -> Outcome:
        if ctx.endpoints is None:
            return not_applicable("no outside view of the host (no forwarded MGMT port given)")
        ep = ctx.endpoints.mgmt
        res = ctx.outside.ssh_audit(ep)
        ctx.note(f"ssh-audit -j -p {ep.port} {ep.host}", res)
        report = parse_report(res.stdout)
        if report is None:
            return failed(f"ssh-audit gave no JSON (exit {res.rc}): {res.brief()}",
                          expected="ssh-audit report")
        findings = fail_findings(report, crypto.min_moduli_bits)
        extra = []
        for cat, want in (("kex", crypto.kex), ("enc", crypto.ciphers), ("mac", crypto.macs),
                          ("key", crypto.host_key_algorithms)):
            unexpected = sorted(set(offered(report, cat)) - set(want))
            if unexpected:
                extra.append(f"{cat} offers unmodelled {', '.join(unexpected)}")
        if findings or extra:
            msgs = [str(f) for f in findings] + extra
            return failed(f"ssh-audit: {len(msgs)} problem(s): " + "; ".join(msgs)[:800],
                          expected="no fail-level findings, only modelled algorithms",
                          found=f"{len(findings)} fail-level finding(s)")
        banner = (report.get("banner") or {}).get("raw", "")
        return passed(f"ssh-audit: no fail-level findings ({banner})", found=banner)

    return Check("ssh.ssh-audit", "ssh-audit from outside: no fail-level kex/key/cipher/MAC findings",
                 SEED["key-auth"], "ssh-audit -j -p PORT HOST", "no fail-level findings", fn, family="ssh")


def ssh_checks(model: HostModel) -> list[Check]:
    return [sshd_effective_check(model), moduli_check(model), ssh_listeners_check(model),
            outside_reachability_check(), ssh_audit_check(model)]
