"""Checks of the seed's optional features (builder.seed.features), present only when the model enables
them: monitoring (node exporter on SERVERS only, host-health textfile metrics that tell the truth,
alert rules, DCGM exporter) and virtualization (libvirt hook + policy, default network off, admin in
the libvirt group). Plus the GPU model name against `nvidia-smi` on a live host.

`monitoring.host-health` refreshes the metrics once (`systemctl start prometheus-host-health.service`,
the timer's own unit) after judging the timer's freshness, so what it compares is the script's view
of *now* against the check's own probes, not a snapshot up to one interval old.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from typing import Any

import yaml

from builder.seed import features as feat
from builder.seed.templating import environment
from builder.verify.checks_health import nfs_probe_script, parse_df, parse_nfs_probe, scratch_df_command
from builder.verify.checks_hostconfig import parse_listeners
from builder.verify.core import SEED, Check, Context, Outcome, failed, not_applicable, passed
from builder.verify.targets import NO_GPU_IN_QEMU, QEMU_KINDS, not_on

HEALTH_FILE = f"{feat.TEXTFILE_DIR}/prometheus-host-health.prom"
SCRATCH_TOLERANCE = 0.02  # metric vs df: both read the same filesystem moments apart
DCGM_NOT_IN_QEMU = not_on(QEMU_KINDS, "no GPU inside QEMU: the DCGM exporter needs one; judged on the live host")

_SAMPLE_RE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')

# Fetch an HTTP URL inside the host (python3 is on every Ubuntu server; curl may not be): prints
# "HTTP <status> <n lines>" then the sample lines whose name starts with one of the given prefixes.
FETCH = (
    "import sys, urllib.request\n"
    "url, prefixes = sys.argv[1], tuple(sys.argv[2:])\n"
    "try:\n"
    "    r = urllib.request.urlopen(url, timeout=10)\n"
    "except Exception as e:\n"
    "    print(f'ERROR {type(e).__name__}: {e}'); sys.exit(1)\n"
    "lines = r.read().decode(errors='replace').splitlines()\n"
    "print(f'HTTP {r.status} {len(lines)}')\n"
    "print('\\n'.join(ln for ln in lines if ln.startswith(prefixes)))\n"
)


def fetch_command(url: str, *prefixes: str) -> str:
    return "python3 -c " + shlex.quote(FETCH) + " " + " ".join(shlex.quote(a) for a in (url, *prefixes))


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text format -> {(name, sorted labels): value}; comments and junk are skipped."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        m = _SAMPLE_RE.match(line.strip())
        if not m or line.lstrip().startswith("#"):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        labels = tuple(sorted(_LABEL_RE.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = value
    return out


def _fetch_status(res_stdout: str) -> tuple[str, list[str]]:
    lines = res_stdout.splitlines()
    return (lines[0].strip() if lines else ""), lines[1:]


def _port_listeners(ctx: Context, port: int) -> tuple[list[str], list[str]]:
    """(all listeners on `port` as text, those not on the SERVERS address)."""
    res = ctx.run(f"ss -Htulnp 'sport = :{port}'", root=True)  # -u too: ss prints the Netid column then
    lns = [ln for ln in parse_listeners(res.stdout) if ln.port == port]
    srv = ctx.model.servers.ip
    return [str(ln) for ln in lns], [str(ln) for ln in lns if ln.addr != srv]


def _exporter_check(model: Any, cid: str, title: str, port: int, prefix: str, seed_key: str,
                    not_on_kinds: tuple = ()) -> Check:
    srv = model.servers.ip
    url = f"http://{srv}:{port}/metrics"
    expect = f"{url} answers with {prefix}* metrics; port {port} listens on {srv} only"

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(fetch_command(url, prefix), timeout=40)
        status, samples = _fetch_status(res.stdout)
        found, elsewhere = _port_listeners(ctx, port)
        listening = "; ".join(found) or f"nothing listens on port {port}"
        problems = []
        if not res.ok or not status.startswith("HTTP 200"):
            problems.append(f"{url} did not answer: {status or res.brief()}")
        elif not samples:
            problems.append(f"{url} answered without any {prefix}* metric")
        if not found or len(elsewhere) == len(found):
            problems.append(f"nothing listens on {srv}:{port}")
        if elsewhere:
            problems.append(f"port {port} also listens beyond the SERVERS address: {'; '.join(elsewhere)}")
        if problems:
            return failed("; ".join(problems), expected=expect, found=listening)
        return passed(f"{url}: {status.split()[2] if len(status.split()) > 2 else '?'} lines, "
                      f"{len(samples)} {prefix}* samples; {listening}", found=listening)

    return Check(cid, title, SEED[seed_key], f"GET {url}; ss -Htulnp 'sport = :{port}'", expect, fn,
                 family="monitoring", not_on=not_on_kinds)


def node_exporter_check(model: Any) -> Check:
    return _exporter_check(model, "monitoring.node-exporter", "node exporter answers on the SERVERS address only",
                           feat.NODE_EXPORTER_PORT, "node_", "host-metrics")


def dcgm_answers_check(model: Any) -> Check:
    return _exporter_check(model, "monitoring.dcgm-exporter.answers",
                           "DCGM exporter answers on the SERVERS address only", feat.DCGM_PORT, "DCGM_FI_",
                           "dcgm", DCGM_NOT_IN_QEMU)


def _series(metrics: dict, name: str, **labels: str) -> float | None:
    return metrics.get((name, tuple(sorted(labels.items()))))


def host_health_check(model: Any) -> Check:
    mon = model.features.monitoring
    mounts = [mt.mountpoint for mt in model.nfs.mounts]
    scratch = feat.scratch_mountpoint(model)
    max_age = 2 * mon.health_interval_seconds + 60
    bound = mon.probe_timeout_seconds
    expect = (f"{HEALTH_FILE} written within {max_age}s; after a refresh, host_health_nfs_mount_up matches a "
              f"bounded probe of each mount and host_health_scratch_used_ratio matches df (±{SCRATCH_TOLERANCE})")

    def fn(ctx: Context) -> Outcome:
        first = ctx.run(f"date +%s; cat {HEALTH_FILE}")
        lines = first.stdout.splitlines()
        if not first.ok or len(lines) < 2:
            return failed(f"no host-health metrics: {first.brief() or HEALTH_FILE + ' is empty'} "
                          f"({feat.HEALTH_UNIT}.timer has not run, or failed)", expected=expect)
        now = int(lines[0].strip())
        stamp = _series(parse_metrics("\n".join(lines[1:])), "host_health_last_run_timestamp_seconds")
        problems = []
        if stamp is None:
            problems.append("host_health_last_run_timestamp_seconds is missing")
        elif now - stamp > max_age:
            problems.append(f"stale: written {now - stamp:.0f}s ago (timer every {mon.health_interval_seconds}s)")
        refresh = ctx.run(f"systemctl start {feat.HEALTH_UNIT}.service", root=True,
                          timeout=bound * (len(mounts) + 2) + 60)
        if not refresh.ok:
            problems.append(f"{feat.HEALTH_UNIT}.service failed: {refresh.brief()}")
        text = ctx.run(f"cat {HEALTH_FILE}").stdout
        metrics = parse_metrics(text)
        probes = parse_nfs_probe(ctx.run(nfs_probe_script(mounts, bound), root=True, timeout=bound + 30).stdout) \
            if mounts else {}
        seen = []
        for mp in mounts:
            rc, what = probes.get(mp, (-1, "no probe answer"))
            really = 1.0 if rc == 0 and what.startswith("nfs") else 0.0
            metric = _series(metrics, "host_health_nfs_mount_up", mountpoint=mp)
            seen.append(f"{mp}={'?' if metric is None else int(metric)}")
            if metric is None:
                problems.append(f"no host_health_nfs_mount_up for {mp}")
            elif metric != really:
                problems.append(f"{mp}: metric says {'up' if metric else 'down'}, the probe finds it "
                                f"{'up' if really else 'down'} ({what or f'exit {rc}'})")
        if scratch:
            df = ctx.run(scratch_df_command(scratch), timeout=30)
            parsed = parse_df(df.stdout)
            ratio = _series(metrics, "host_health_scratch_used_ratio", mountpoint=scratch)
            real = parsed[0] / max(parsed[0] + parsed[1], 1) if parsed else None
            shown = "?" if ratio is None else f"{ratio:.3f}"
            seen.append(f"scratch={shown} (df {'?' if real is None else f'{real:.3f}'})")
            if ratio is None:
                problems.append(f"no host_health_scratch_used_ratio for {scratch}")
            elif real is None:
                problems.append(f"cannot read df of {scratch}: {df.brief()}")
            elif abs(ratio - real) > SCRATCH_TOLERANCE:
                problems.append(f"scratch: metric {ratio:.3f}, df {real:.3f}")
        found = ", ".join(seen)
        if problems:
            return failed("host-health metrics disagree with the host: " + "; ".join(problems), expected=expect,
                          found=found)
        return passed(f"fresh and true: {found}", found=found)

    return Check("monitoring.host-health", "host-health textfile metrics are fresh and match the host",
                 SEED["alerts"], f"cat {HEALTH_FILE}; systemctl start {feat.HEALTH_UNIT}; NFS probe; df",
                 expect, fn, family="monitoring")


def alert_rules_check(model: Any) -> Check:
    want = yaml.safe_load(feat.alert_rules_text(model))

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(f"cat {feat.RULES_PATH}")
        if not res.ok:
            return failed(f"{feat.RULES_PATH} is missing: {res.brief()}", expected="the rendered alert rules")
        try:
            got = yaml.safe_load(res.stdout)
        except yaml.YAMLError as exc:
            return failed(f"{feat.RULES_PATH} is not YAML: {exc}", expected="the rendered alert rules")
        names = sorted(r.get("alert", "") for g in (got or {}).get("groups", []) for r in g.get("rules", []))
        if got != want:
            return failed(f"{feat.RULES_PATH} differs from the rules rendered for this model",
                          expected="alerts: " + ", ".join(sorted(r.get("alert", "") for g in want.get("groups", [])
                                                                 for r in g.get("rules", []))),
                          found="alerts: " + ", ".join(names))
        return passed(f"{feat.RULES_PATH}: {', '.join(names)}", found=", ".join(names))

    return Check("monitoring.alert-rules", "the seed's alert rules are installed as rendered", SEED["alerts"],
                 f"cat {feat.RULES_PATH}", "same rules as `builder render` (YAML equal)", fn, family="monitoring")


def promtool_check(model: Any) -> Check:
    def fn(ctx: Context) -> Outcome:
        res = ctx.run(f"command -v promtool >/dev/null || exit 127; promtool check rules {feat.RULES_PATH}")
        if res.rc == 127:
            return not_applicable("promtool is not installed on the host (Debian/Ubuntu package `prometheus`); "
                                  "the rules are proven with promtool in tests/test_alert_rules.py")
        if not res.ok:
            return failed(f"promtool check rules failed: {res.brief()}", expected="SUCCESS", found=res.brief())
        return passed(res.brief(), found="SUCCESS")

    return Check("monitoring.alert-rules.promtool", "promtool accepts the installed alert rules", SEED["alerts"],
                 f"promtool check rules {feat.RULES_PATH}", "SUCCESS (or n/a without promtool)", fn,
                 family="monitoring")


def dcgm_unit_check(model: Any) -> Check:
    mon = model.features.monitoring
    publish = f"{model.servers.ip}:{feat.DCGM_PORT}:9400"

    def fn(ctx: Context) -> Outcome:
        res = ctx.run("systemctl show -p LoadState -p UnitFileState -p ExecStart dcgm-exporter.service")
        props = dict(ln.split("=", 1) for ln in res.stdout.splitlines() if "=" in ln)
        found = f"LoadState={props.get('LoadState', '?')} UnitFileState={props.get('UnitFileState', '?')}"
        problems = []
        if props.get("LoadState") != "loaded":
            problems.append("dcgm-exporter.service is not installed")
        else:
            if props.get("UnitFileState") != "enabled":
                problems.append(f"not enabled ({props.get('UnitFileState') or '?'})")
            start = props.get("ExecStart", "")
            for part in (mon.dcgm_exporter_image, publish, "--runtime nvidia"):
                if part not in start:
                    problems.append(f"ExecStart lacks {part}")
        if problems:
            return failed("DCGM exporter unit: " + "; ".join(problems),
                          expected=f"enabled, runs {mon.dcgm_exporter_image} published on {publish}", found=found)
        return passed(f"{found}; {mon.dcgm_exporter_image} on {publish}", found=found)

    return Check("monitoring.dcgm-exporter.unit", "DCGM exporter unit installed and enabled", SEED["dcgm"],
                 "systemctl show dcgm-exporter.service", f"enabled, publish {publish}", fn, family="monitoring")


def _shipped_hook() -> str:
    env = environment()
    assert env.loader is not None
    return env.loader.get_source(env, f"{feat.FILES}/libvirt-qemu-hook.py")[0]


def libvirt_hook_check(model: Any) -> Check:
    want = hashlib.sha256(_shipped_hook().encode()).hexdigest()

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(f"test -x {feat.HOOK_PATH} || {{ ls -l {feat.HOOK_PATH}; exit 3; }}; sha256sum {feat.HOOK_PATH}",
                      root=True)
        if res.rc == 3:
            return failed(f"{feat.HOOK_PATH} is not executable: libvirt skips it", expected="mode 0755",
                          found=res.brief() or "absent")
        got = res.stdout.split()[0] if res.ok and res.stdout.split() else ""
        if got != want:
            return failed(f"{feat.HOOK_PATH} is not the policy hook builder ships ({res.brief() or 'absent'})",
                          expected=f"sha256 {want[:16]}…", found=f"sha256 {got[:16]}…" if got else "absent")
        return passed(f"{feat.HOOK_PATH} executable, sha256 {got[:16]}…", found=got)

    return Check("virt.hook", "libvirt QEMU hook installed and executable", SEED["virt-policy"],
                 f"test -x {feat.HOOK_PATH}; sha256sum", "the shipped hook, executable", fn, family="virt")


def libvirt_policy_check(model: Any) -> Check:
    want = feat.libvirt_policy(model)

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(f"cat {feat.POLICY_PATH}", root=True)
        try:
            got = json.loads(res.stdout) if res.ok else None
        except ValueError:
            got = None
        if got is None:
            return failed(f"{feat.POLICY_PATH} is missing or not JSON: {res.brief()}",
                          expected=json.dumps(want, sort_keys=True))
        diff = [f"{k}: {got.get(k)!r} (model: {v!r})" for k, v in sorted(want.items()) if got.get(k) != v]
        diff += [f"{k}: unexpected" for k in sorted(set(got) - set(want))]
        if diff:
            return failed(f"{feat.POLICY_PATH} does not match the model: " + "; ".join(diff),
                          expected=json.dumps(want, sort_keys=True), found=json.dumps(got, sort_keys=True))
        return passed(json.dumps(got, sort_keys=True), found=json.dumps(got, sort_keys=True))

    return Check("virt.policy", "the hook's policy file matches the model", SEED["virt-policy"],
                 f"cat {feat.POLICY_PATH}", json.dumps(want, sort_keys=True), fn, family="virt")


def parse_net_list(text: str) -> dict[str, tuple[str, str]]:
    """`virsh net-list --all` -> {name: (state, autostart)}."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] != "Name" and not set(line.strip()) <= {"-"}:
            out[f[0]] = (f[1], f[2])
    return out


def default_network_check(model: Any) -> Check:
    cmd = f"{feat.VIRSH} net-list --all"

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(cmd, root=True)
        if not res.ok:
            return failed(f"virsh net-list failed: {res.brief()}", expected="default: inactive, autostart no")
        nets = parse_net_list(res.stdout)
        found = "; ".join(f"{n} {s} autostart={a}" for n, (s, a) in nets.items()) or "no networks"
        state, auto = nets.get("default", ("absent", "no"))
        problems = []
        if state == "active":
            problems.append("libvirt's default NAT network is active (virbr0 + dnsmasq listen off SERVERS)")
        if auto == "yes":
            problems.append("the default network is autostarted (it comes back at the next boot)")
        if problems:
            return failed("; ".join(problems), expected="default: inactive, autostart no", found=found)
        return passed(found, found=found)

    return Check("virt.default-network", "libvirt's default NAT network is neither active nor autostarted",
                 SEED["servers-binds"], cmd, "default: inactive, autostart no", fn, family="virt")


def libvirt_group_check(model: Any) -> Check:
    admin = model.admin.name

    def fn(ctx: Context) -> Outcome:
        res = ctx.run(f"id -nG {shlex.quote(admin)}")
        groups = res.stdout.split()
        if "libvirt" not in groups:
            return failed(f"{admin} is not in the libvirt group: virsh needs sudo",
                          expected="libvirt in the admin's groups", found=" ".join(groups) or res.brief())
        return passed(f"{admin}: {' '.join(groups)}", found=" ".join(groups))

    return Check("virt.admin-libvirt-group", "the admin is in the libvirt group", SEED["virt-libvirt"],
                 f"id -nG {admin}", "libvirt", fn, family="virt")


def normalise_gpu(name: str) -> str:
    return " ".join(name.split()).casefold()


def gpu_name_check(model: Any) -> Check:
    want = model.nvidia.gpu

    def fn(ctx: Context) -> Outcome:
        res = ctx.run("nvidia-smi --query-gpu=name --format=csv,noheader", timeout=60)
        names = [n.strip() for n in res.stdout.splitlines() if n.strip()]
        if not res.ok or not names:
            return failed(f"nvidia-smi lists no GPU: {res.brief()}", expected=want, found=res.brief() or "none")
        if any(normalise_gpu(n) == normalise_gpu(want) for n in names):
            return passed(f"nvidia-smi: {'; '.join(names)}", found="; ".join(names))
        return failed(f"the GPU is {names[0]!r}, the model says {want!r}: correct nvidia.gpu if this is the "
                      "intended card", expected=want, found="; ".join(names))

    return Check("nvidia.gpu-name", "the GPU is the model's (nvidia-smi name)", SEED["gpu-model"],
                 "nvidia-smi --query-gpu=name", want, fn, family="nvidia", not_on=NO_GPU_IN_QEMU)


def feature_checks(model: Any) -> list[Check]:
    checks = [gpu_name_check(model)]
    mon, virt = model.features.monitoring, model.features.virtualization
    if mon.enabled and mon.node_exporter:
        checks += [node_exporter_check(model), host_health_check(model)]
    if mon.enabled and mon.alerts:
        checks += [alert_rules_check(model), promtool_check(model)]
    if mon.enabled and mon.dcgm_exporter:
        checks += [dcgm_unit_check(model), dcgm_answers_check(model)]
    if virt.enabled:
        checks += [libvirt_hook_check(model), libvirt_policy_check(model), default_network_check(model),
                   libvirt_group_check(model)]
    return checks
