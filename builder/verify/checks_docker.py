"""Docker checks: signed APT sources, no snap, packages, daemon.json, start only after NFS mounts."""

from __future__ import annotations

import json
import shlex
from typing import Any

from builder.model import AptRepo, HostModel
from builder.verify.checks_nvidia import is_installed
from builder.verify.core import SEED, Check, Context, Outcome, failed, not_applicable, passed

SOURCES_CMD = "grep -rsH '' /etc/apt/sources.list /etc/apt/sources.list.d/"


def parse_sources(text: str) -> list[dict[str, str]]:
    """`grep -rH ''` over the APT source files -> [{file, uri, signed_by, trusted}] (one-line and deb822)."""
    entries: list[dict[str, str]] = []
    stanzas: dict[str, list[dict[str, str]]] = {}
    for raw in text.splitlines():
        fname, _, line = raw.partition(":")
        line = line.strip()
        if fname.endswith(".sources"):
            blocks = stanzas.setdefault(fname, [{}])
            if not line:
                blocks.append({})
            elif not line.startswith("#") and ":" in line:
                k, _, v = line.partition(":")
                blocks[-1][k.strip().lower()] = v.strip()
            continue
        if not line.startswith("deb"):
            continue
        words = line.split()
        opts: dict[str, str] = {}
        rest = words[1:]
        if rest and rest[0].startswith("["):
            opt_words = []
            while rest:
                w = rest.pop(0)
                opt_words.append(w.strip("[]"))
                if w.endswith("]"):
                    break
            for w in opt_words:
                k, _, v = w.partition("=")
                if k:
                    opts[k] = v
        uri = rest[0] if rest else ""
        entries.append({"file": fname, "uri": uri, "signed_by": opts.get("signed-by", ""),
                        "trusted": opts.get("trusted", "")})
    for fname, blocks in stanzas.items():
        for b in blocks:
            for uri in b.get("uris", "").split():
                entries.append({"file": fname, "uri": uri, "signed_by": b.get("signed-by", ""),
                                "trusted": b.get("trusted", "")})
    return entries


def apt_source_check(name: str, repo: AptRepo, seed_key: str) -> Check:
    url = repo.url.rstrip("/")

    def fn(ctx: Context) -> Outcome:
        entries = [e for e in parse_sources(ctx.run(SOURCES_CMD).stdout) if e["uri"].rstrip("/") == url]
        if not entries:
            return failed(f"no APT source for {url}", expected=f"deb [signed-by=...] {url}", found="none")
        problems = []
        for e in entries:
            where = e["file"].rsplit("/", 1)[-1]
            if e["trusted"].lower() == "yes":
                problems.append(f"{where}: trusted=yes disables signature checks")
            if not e["signed_by"]:
                problems.append(f"{where}: no signed-by")
            elif e["signed_by"].startswith("/"):
                if not ctx.run(f"test -s {shlex.quote(e['signed_by'])}").ok:
                    problems.append(f"{where}: keyring {e['signed_by']} missing or empty")
        found = "; ".join(f"{e['file']} signed-by={e['signed_by'] or '-'}" for e in entries)
        if problems:
            return failed(f"{name} APT source: " + "; ".join(problems), expected="signed-by=<keyring>",
                          found=found)
        return passed(f"{name} APT source pinned to its key: {found}", found=found)

    return Check(f"apt.{name}.signed-by", f"{name} APT source uses signed-by", SEED[seed_key],
                 SOURCES_CMD, f"deb [signed-by=KEYRING] {url} ...", fn, family="apt")


def no_docker_snap_check() -> Check:
    def fn(ctx: Context) -> Outcome:
        bin_snap = ctx.run("test -e /snap/bin/docker").ok
        has_snap = ctx.run("command -v snap").ok
        snap_docker = has_snap and ctx.run("snap list docker").ok
        if bin_snap or snap_docker:
            return failed("Docker is installed as a snap", expected="no docker snap",
                          found="snap list docker: installed" if snap_docker else "/snap/bin/docker exists")
        return passed("no Docker snap" + ("" if has_snap else " (snapd not installed)"))

    return Check("docker.no-snap", "no snap-based Docker", SEED["no-snap-docker"],
                 "snap list docker; test -e /snap/bin/docker", "absent", fn, family="docker")


def docker_packages_check(model: HostModel) -> Check:
    pkgs = list(model.docker.packages)
    version = model.docker.version

    def fn(ctx: Context) -> Outcome:
        res = ctx.run("dpkg-query -W -f='${Package}|${db:Status-Abbrev}|${Version}\\n' "
                      + " ".join(shlex.quote(p) for p in pkgs))
        got = {}
        for line in res.stdout.splitlines():
            parts = line.split("|")
            if len(parts) == 3:
                got[parts[0]] = (parts[1].strip(), parts[2])
        problems = [f"{p} not installed" for p in pkgs if not is_installed(got.get(p, ("", ""))[0])]
        if version:
            problems += [f"{p} {got[p][1]} (want {version})" for p in ("docker-ce", "docker-ce-cli")
                         if p in got and got[p][1] != version]
        found = ", ".join(f"{p}={v[1]}" for p, v in sorted(got.items()) if is_installed(v[0]))
        if problems:
            return failed("Docker packages: " + "; ".join(problems), expected=", ".join(pkgs), found=found)
        return passed(f"installed: {found}", found=found)

    return Check("docker.packages", "Docker Engine + Compose plugin installed from APT", SEED["docker-baseline"],
                 "dpkg-query -W " + " ".join(pkgs), "all installed", fn, family="docker")


def _daemon_json(ctx: Context) -> tuple[dict[str, Any] | None, str]:
    res = ctx.run("cat /etc/docker/daemon.json", root=True)
    if not res.ok:
        return None, f"cannot read /etc/docker/daemon.json: {res.brief()}"
    try:
        data = json.loads(res.stdout)
    except ValueError as exc:
        return None, f"/etc/docker/daemon.json is not JSON: {exc}"
    return (data, "") if isinstance(data, dict) else (None, "daemon.json is not an object")


def no_tcp_api_check(model: HostModel) -> Check:
    def fn(ctx: Context) -> Outcome:
        if model.docker.tcp_api:
            return not_applicable("the model allows the Docker TCP API (docker.tcp_api: true)")
        data, err = _daemon_json(ctx)
        if data is None:
            return failed(err, expected="daemon.json without tcp:// hosts")
        problems = [f"daemon.json hosts has {h}" for h in data.get("hosts") or [] if "tcp://" in str(h)]
        exec_start = ctx.run("systemctl show -p ExecStart --value docker.service").stdout
        if "tcp://" in exec_start:
            problems.append("docker.service ExecStart has -H tcp://")
        listening = ctx.run("ss -Htln '( sport = :2375 or sport = :2376 )'").stdout.strip()
        if listening:
            problems.append(f"something listens on 2375/2376: {listening.splitlines()[0]}")
        if problems:
            return failed("Docker API exposed over TCP: " + "; ".join(problems), expected="unix socket only",
                          found="; ".join(problems))
        return passed("no TCP hosts in daemon.json or ExecStart, nothing on 2375/2376")

    return Check("docker.no-tcp-api", "no remote Docker API (no tcp:// hosts)", SEED["no-docker-api"],
                 "cat /etc/docker/daemon.json; systemctl show -p ExecStart docker; ss -tln", "no tcp://", fn,
                 family="docker")


def daemon_bind_check(model: HostModel) -> Check:
    iface = model.network.interfaces[model.docker.bind_published_ports_to]
    want_ip, data_root = iface.ip, model.docker.data_root

    def fn(ctx: Context) -> Outcome:
        data, err = _daemon_json(ctx)
        if data is None:
            return failed(err, expected=f'"ip": "{want_ip}"')
        problems = []
        if data.get("ip") != want_ip:
            problems.append(f"ip {data.get('ip')!r} (want {want_ip!r}, the {iface.name} address)")
        if data.get("data-root", "/var/lib/docker") != data_root:
            problems.append(f"data-root {data.get('data-root')!r} (want {data_root!r})")
        found = f"ip={data.get('ip')} data-root={data.get('data-root')}"
        if problems:
            return failed("daemon.json: " + "; ".join(problems), expected=f"ip={want_ip} data-root={data_root}",
                          found=found)
        return passed(f"published ports bind to {want_ip}; {found}", found=found)

    return Check("docker.bind-servers", "published ports bind to the SERVERS address", SEED["servers-binds"],
                 "cat /etc/docker/daemon.json", f'"ip": "{want_ip}"', fn, family="docker")


def requires_mounts_check(model: HostModel) -> Check:
    want = list(model.docker.requires_mounts)

    def fn(ctx: Context) -> Outcome:
        if not want:
            return not_applicable("the model lists no mounts Docker requires")
        res = ctx.run("systemctl show -p LoadState -p RequiresMountsFor docker.service")
        props = dict(ln.split("=", 1) for ln in res.stdout.splitlines() if "=" in ln)
        if props.get("LoadState") != "loaded":
            return failed(f"docker.service is {props.get('LoadState') or 'unknown'}", expected="loaded")
        have = props.get("RequiresMountsFor", "").split()
        missing = [p for p in want if not any(q == p or q.startswith(p.rstrip("/") + "/") for q in have)]
        if missing:
            return failed(f"docker.service may start without {', '.join(missing)}",
                          expected=f"RequiresMountsFor ⊇ {' '.join(want)}", found=" ".join(have) or "(empty)")
        return passed(f"RequiresMountsFor={' '.join(have)}", found=" ".join(have))

    return Check("docker.requires-mounts", "Docker starts only after its NFS mounts", SEED["rebuildable"],
                 "systemctl show -p RequiresMountsFor docker.service", " ".join(want), fn, family="docker")


def docker_checks(model: HostModel) -> list[Check]:
    return [
        apt_source_check("docker", model.apt.docker, "no-snap-docker"),
        apt_source_check("nvidia", model.apt.nvidia, "nvidia-toolkit"),
        no_docker_snap_check(),
        docker_packages_check(model),
        no_tcp_api_check(model),
        daemon_bind_check(model),
        requires_mounts_check(model),
    ]
