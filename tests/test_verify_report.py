"""Report outputs (table, report.json, JUnit XML), Host backends, parsers and seed references."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.model import load_model
from builder.verify.catalog import build_catalog, select
from builder.verify.checks_docker import parse_sources
from builder.verify.checks_ssh import parse_sshd_t
from builder.verify.core import SEED, Context, run_checks
from builder.verify.host import FakeHost, HostUnreachable, LocalHost, Result, SshHost
from builder.verify.report import Report, junit_xml, render_table, report_dict, write_report
from builder.verify.sshaudit import fail_findings
from tests.verify_canned import ENDPOINTS, EPHEMERAL, FakeOutside, healthy_responses

MODEL = load_model(None)
SEED_DOC = Path("/work/shared/seed/prometheus.md")


def _report(responses: dict | None = None) -> Report:
    r = {**healthy_responses(MODEL), **(responses or {})}
    ctx = Context(FakeHost(r), MODEL, ENDPOINTS, FakeOutside(MODEL), extra_authorized_keys=(EPHEMERAL,))
    results = run_checks(build_catalog(MODEL), ctx)
    return Report("prometheus", "fake", tuple(results), {"boot_to_login": 61.2, "checks": 3.4}, "/tmp/serial.log")


def test_report_files_written_atomically(tmp_path: Path) -> None:
    serial = tmp_path / "serial.log"
    serial.write_text("Cloud-init v. 22.4.2 finished\n")
    rep = _report({"systemctl list-units --failed": Result(0, "broken.service loaded failed failed x\n")})
    out = write_report(rep, tmp_path / "artifacts" / "prometheus" / "verify", serial_log=serial)
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.json", "report.txt", "serial.log"]
    data = json.loads((out / "report.json").read_text())
    assert data["ok"] is False and data["summary"]["fail"] == 1
    assert data["timings"]["boot_to_login"] == 61.2
    failed = [c for c in data["checks"] if c["status"] == "fail"]
    assert failed[0]["id"] == "system.failed-units" and failed[0]["seed"]["line"] == 115
    assert failed[0]["commands"][0]["cmd"].startswith("systemctl list-units --failed")
    # a second write replaces the folder, leaving no temp folders behind
    write_report(_report(), out)
    assert json.loads((out / "report.json").read_text())["ok"] is True
    assert [p.name for p in out.parent.iterdir()] == ["verify"]


def test_junit_counts_and_cases() -> None:
    rep = _report({"apt-mark showhold": Result(0, "linux-generic linux-image-generic linux-headers-generic\n")})
    root = ET.fromstring(junit_xml(rep))
    suite = root.find("testsuite")
    assert suite is not None
    # skipped: nvidia.smi, health.gpu, nvidia.gpu-name, docker.storage-on-scratch (no scratch disk on the stand-in)
    assert suite.get("failures") == "1" and suite.get("skipped") == "4"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert len(cases) == len(rep.results)
    fail = cases["nvidia.driver.hold"].find("failure")
    assert fail is not None and "not held" in (fail.get("message") or "")
    assert cases["nvidia.smi"].find("skipped") is not None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["timing.boot_to_login"] == "61.2"


def test_table_shows_each_status_and_timings() -> None:
    rep = _report({"/usr/sbin/sshd -T": Result(1, "", "bad config")})
    text = render_table(rep)
    assert "FAIL    ssh.sshd-effective" in text
    assert "N/A     nvidia.smi" in text
    assert "PASS    system.hostname" in text
    assert "timings: boot_to_login 61.2s, checks 3.4s" in text
    lines = text.splitlines()
    rows = [line.split()[0] for line in lines[2:2 + len(rep.results)]]
    assert set(rows) == {"PASS", "FAIL", "N/A"} and rows.count("FAIL") == 1
    # the count is a whole number on its own ("1 fail" would also be found in "11 fail")
    assert (f"prometheus (fake): {len(rep.results)} checks, {rows.count('PASS')} pass, 1 fail, "
            f"{rows.count('N/A')} not applicable") in lines
    detail = lines.index(next(x for x in lines if x.startswith("FAIL ssh.sshd-effective [")))
    assert lines[detail + 1].startswith("     expected: ") and lines[detail + 2].startswith("     found:    ")
    assert report_dict(rep)["summary"] == {"total": len(rep.results), "pass": rows.count("PASS"), "fail": 1,
                                           "n/a": rows.count("N/A")}


def test_select_by_prefix() -> None:
    checks = build_catalog(MODEL)
    assert {c.family for c in select(checks, ["nfs."])} == {"nfs"}
    assert select(checks, None) == checks


def test_seed_references_quote_the_seed_document() -> None:
    if not SEED_DOC.exists():
        pytest.skip("seed document not present")
    lines = SEED_DOC.read_text().splitlines()
    for key, ref in SEED.items():
        assert ref.text in lines[ref.line - 1], f"{key}: line {ref.line} is {lines[ref.line - 1]!r}"
    used = {c.seed for c in build_catalog(MODEL)}
    assert used <= set(SEED.values())


def test_parse_sshd_t_accumulates_repeated_keys() -> None:
    cfg = parse_sshd_t("port 22\nallowusers ops\nallowusers alice\nListenAddress 10.99.0.20:22\n")
    assert cfg["allowusers"] == ["ops", "alice"] and cfg["listenaddress"] == ["10.99.0.20:22"]


def test_parse_sources_one_line_and_deb822() -> None:
    text = "\n".join([
        "/etc/apt/sources.list.d/docker.list:# deb http://old",
        "/etc/apt/sources.list.d/docker.list:deb [arch=amd64 signed-by=/k.asc] https://d/x noble stable",
        "/etc/apt/sources.list.d/n.sources:Types: deb",
        "/etc/apt/sources.list.d/n.sources:URIs: https://n/y",
        "/etc/apt/sources.list.d/n.sources:Signed-By: /n.gpg",
        "/etc/apt/sources.list.d/n.sources:",
        "/etc/apt/sources.list.d/n.sources:URIs: https://n/z",
        "/etc/apt/sources.list.d/n.sources:Trusted: yes",
    ])
    got = {e["uri"]: e for e in parse_sources(text)}
    assert got["https://d/x"]["signed_by"] == "/k.asc"
    assert got["https://n/y"]["signed_by"] == "/n.gpg"
    assert got["https://n/z"]["trusted"] == "yes" and not got["https://n/z"]["signed_by"]
    assert "http://old" not in got


def test_fail_findings_ignore_info_and_warn() -> None:
    rep = {"kex": [{"algorithm": "curve25519-sha256", "notes": {"info": ["x"], "warn": ["y"]}},
                   {"algorithm": "diffie-hellman-group-exchange-sha256", "keysize": 3072, "notes": {}},
                   {"algorithm": "kex-strict-s-v00@openssh.com", "notes": {"fail": ["unknown"]}}],
           "recommendations": {"warning": {"del": {"kex": [{"name": "curve25519-sha256"}]}}}}
    assert fail_findings(rep, 3072) == []


def test_local_host_runs_commands() -> None:
    h = LocalHost()
    assert h.run("echo hi; echo err >&2; exit 3") == Result(3, "hi\n", "err\n")


def test_ssh_host_wraps_sudo_and_detects_transport_failures() -> None:
    seen = []

    def runner(access, cmd, timeout):  # noqa: ANN001
        seen.append(cmd)
        if "boom" in cmd:
            return subprocess.CompletedProcess([], 255, "", "ssh: connect to host 127.0.0.1 port 1: "
                                                         "Connection refused\n")
        return subprocess.CompletedProcess([], 0, "root\n", "")

    access = SimpleNamespace(user="ops", ssh_host="127.0.0.1", ssh_port=1)
    h = SshHost(access, runner=runner)
    assert h.sudo("id -un && echo 'x'").stdout == "root\n"
    assert seen[-1] == "sudo -n sh -c 'id -un && echo '\"'\"'x'\"'\"''"
    with pytest.raises(HostUnreachable, match="Connection refused"):
        h.run("boom")


def test_ssh_host_remote_killed_by_signal_is_a_result_not_unreachable() -> None:
    def runner(access, cmd, timeout):  # noqa: ANN001
        return subprocess.CompletedProcess([], 255, "", "")

    h = SshHost(SimpleNamespace(user="ops", ssh_host="127.0.0.1", ssh_port=1), runner=runner)
    r = h.run("timeout -s KILL 1 sleep 5")
    assert r.rc == 255 and "killed by a signal" in r.stderr
