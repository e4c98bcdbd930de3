"""A report with a second-boot section: text, report.json and JUnit show each boot; a failure on the
second boot alone fails the report. And which checks a second boot re-runs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from builder.model import load_model
from builder.verify.catalog import build_catalog
from builder.verify.core import Context, run_checks
from builder.verify.host import FakeHost, Result
from builder.verify.report import BootSection, Report, junit_xml, render_table, report_dict, write_report
from builder.verify.session import SECOND_BOOT_CHECKS, second_boot_checks
from tests.verify_canned import ENDPOINTS, EPHEMERAL, FakeOutside, healthy_responses, rules

MODEL = load_model(None)
NO_RULE = {"ip -j -4 rule show": Result(0, rules(MODEL))}  # the MGMT source rule did not come back


def _results(ids: list[str] | None = None, responses: dict | None = None) -> tuple:
    r = {**healthy_responses(MODEL), **(responses or {})}
    ctx = Context(FakeHost(r), MODEL, ENDPOINTS, FakeOutside(MODEL), extra_authorized_keys=(EPHEMERAL,))
    checks = [c for c in build_catalog(MODEL) if ids is None or c.id in ids]
    return tuple(run_checks(checks, ctx))


def _report(second: dict | None = None, serial2: str | None = None) -> Report:
    ids = [c.id for c in second_boot_checks(MODEL)]
    boot2 = BootSection("boot 2", _results(ids, second), {"poweroff": 9.5, "ssh_ready": 71.0}, serial2)
    return Report("prometheus", "fake", _results(), {"boot_to_login": 61.2}, None, boots=(boot2,))


def test_second_boot_reruns_reachability_listeners_routing_mounts_docker_only() -> None:
    ids = [c.id for c in second_boot_checks(MODEL)]
    for want in ("ssh.reachability", "ssh.listeners", "net.listeners", "net.mgmt-policy-routing",
                 "network.default-route", "nfs.mounted:/mnt/atlas/appdata", "nfs.access:/mnt/atlas",
                 "docker.requires-mounts", "docker.bind-servers"):
        assert want in ids
    # first-boot-only facts (users, keys, sshd's effective config, packages' pins) are not re-run
    assert not [i for i in ids if i.startswith(("users.", "ssh.sshd-effective", "nvidia.", "apt."))], ids
    assert all(any(i.startswith(p) for p in SECOND_BOOT_CHECKS) for i in ids)
    assert [c.id for c in second_boot_checks(MODEL, ["nfs."])] == [i for i in ids if i.startswith("nfs.")]
    assert second_boot_checks(MODEL, ["users."]) == []  # --only users.: no second boot at all


def test_sections_in_text_json_and_junit(tmp_path: Path) -> None:
    serial2 = tmp_path / "serial-boot2.log"
    serial2.write_text("Cloud-init v. 25.1 finished\n")
    rep = _report(serial2=str(serial2))
    assert rep.ok
    text = render_table(rep)
    lines = text.splitlines()
    first = next(i for i, x in enumerate(lines) if x.startswith("== boot 1 (first boot): "))
    second = next(i for i, x in enumerate(lines) if x.startswith("== boot 2: "))
    assert first < second
    assert "(poweroff 9.5s, ssh_ready 71.0s)" in lines[second]
    assert sum(1 for x in lines[second + 1:] if x.startswith(("PASS ", "N/A "))) == len(rep.boots[0].results)
    total = len(rep.results) + len(rep.boots[0].results)
    assert f"prometheus (fake): {total} checks over 2 boots, " in text

    data = report_dict(rep)
    assert [b["name"] for b in data["boots"]] == ["boot 1 (first boot)", "boot 2"]
    assert data["boots"][1]["timings"] == {"poweroff": 9.5, "ssh_ready": 71.0}
    assert data["summary"]["total"] == total and len(data["checks"]) == len(rep.results)

    suites = ET.fromstring(junit_xml(rep)).findall("testsuite")
    assert [s.get("name") for s in suites] == ["verify.prometheus", "verify.prometheus.boot2"]
    assert suites[1].get("tests") == str(len(rep.boots[0].results))
    assert {c.get("classname") for c in suites[1].iter("testcase")} >= {"verify.docker.boot2", "verify.nfs.boot2"}

    out = write_report(rep, tmp_path / "verify")
    saved = json.loads((out / "report.json").read_text())
    assert saved["boots"][1]["serial_log_copy"] == "serial-boot2.log"
    assert (out / "serial-boot2.log").read_text() == serial2.read_text()


def test_failure_on_second_boot_only_fails_the_report() -> None:
    rep = _report(NO_RULE)
    assert all(r.status != "fail" for r in rep.results)
    assert not rep.ok and rep.counts["fail"] == 1
    text = render_table(rep)
    assert "FAIL net.mgmt-policy-routing (boot 2) [" in text
    data = report_dict(rep)
    assert data["ok"] is False
    assert data["boots"][0]["ok"] is True and data["boots"][1]["ok"] is False
    suites = ET.fromstring(junit_xml(rep)).findall("testsuite")
    assert [s.get("failures") for s in suites] == ["0", "1"]


def test_single_boot_report_has_no_sections() -> None:
    rep = Report("prometheus", "fake", _results(), {"boot_to_login": 61.2})
    assert "==" not in render_table(rep) and "boots" not in report_dict(rep)
    assert len(ET.fromstring(junit_xml(rep)).findall("testsuite")) == 1
