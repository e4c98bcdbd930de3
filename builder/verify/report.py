"""Verification report: a terminal table, report.json and JUnit XML, written atomically."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.store import staged_dir
from builder.verify.core import CheckResult
from builder.verify.targets import STANDIN, Target

MARK = {"pass": "PASS", "fail": "FAIL", "n/a": "N/A "}


@dataclass(frozen=True)
class Report:
    host: str  # the model's hostname
    target: str  # how it was reached, e.g. "ops@127.0.0.1:40022 (QEMU stand-in)"
    results: tuple[CheckResult, ...]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    serial_log: str | None = None
    notes: tuple[str, ...] = ()
    target_info: Target | None = None  # the target kind and description (None: the stand-in)

    @property
    def spec(self) -> Target:
        return self.target_info or STANDIN

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.status for r in self.results)

    @property
    def ok(self) -> bool:
        return self.counts["fail"] == 0


def result_dict(r: CheckResult) -> dict[str, Any]:
    c = r.check
    return {
        "id": c.id,
        "family": c.family,
        "title": c.title,
        "seed": {"file": "prometheus.md", "line": c.seed.line, "text": c.seed.text},
        "command": c.command,
        "expect": c.expect,
        "status": r.status,
        "message": r.outcome.message,
        "expected": r.outcome.expected,
        "found": r.outcome.found,
        "seconds": r.seconds,
        "commands": [
            {"cmd": x.cmd, "root": x.root, "rc": x.rc, "seconds": x.seconds, "output": x.output}
            for x in r.commands
        ],
    }


def report_dict(rep: Report) -> dict[str, Any]:
    counts = rep.counts
    return {
        "host": rep.host,
        "target": rep.target,
        "target_kind": rep.spec.kind,
        "target_info": {**rep.spec.as_dict(), "reached": rep.target},
        "ok": rep.ok,
        "summary": {"total": len(rep.results), "pass": counts["pass"], "fail": counts["fail"],
                    "n/a": counts["n/a"]},
        "timings": rep.timings,
        "serial_log": rep.serial_log,
        "notes": list(rep.notes),
        "checks": [result_dict(r) for r in rep.results],
    }


def format_timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())


def render_table(rep: Report, width: int = 120) -> str:
    idw = min(max((len(r.check.id) for r in rep.results), default=10), 40)
    lines = [f"{'STATUS':6}  {'CHECK':{idw}}  RESULT", f"{'-' * 6}  {'-' * idw}  {'-' * 20}"]
    room = max(width - idw - 10, 30)
    for r in rep.results:
        msg = r.outcome.message.replace("\n", " ")
        if len(msg) > room:
            msg = msg[: room - 3] + "..."
        lines.append(f"{MARK[r.status]:6}  {r.check.id:{idw}}  {msg}")
    c = rep.counts
    lines.append("")
    lines.append(f"{rep.host} ({rep.target}): {len(rep.results)} checks, {c['pass']} pass, "
                 f"{c['fail']} fail, {c['n/a']} not applicable")
    lines.append(f"target: {rep.spec.kind}: {rep.spec.description}")
    if rep.spec.kind == "disk":
        lines.append(f"disk sha256: {rep.spec.sha256 or '(not computed)'}")
    if rep.timings:
        lines.append(f"timings: {format_timings(rep.timings)}")
    if rep.serial_log:
        lines.append(f"serial log: {rep.serial_log}")
    for r in rep.results:
        if r.status == "fail":
            lines.append(f"FAIL {r.check.id} [{r.check.seed}]: {r.outcome.message}")
            if r.outcome.expected or r.outcome.found:
                lines.append(f"     expected: {r.outcome.expected}\n     found:    {r.outcome.found}")
    return "\n".join(lines)


def junit_xml(rep: Report) -> str:
    c = rep.counts
    total = sum(r.seconds for r in rep.results)
    suites = ET.Element("testsuites", name=f"builder verify {rep.host}", tests=str(len(rep.results)),
                        failures=str(c["fail"]), skipped=str(c["n/a"]), time=f"{total:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=f"verify.{rep.host}", tests=str(len(rep.results)),
                          failures=str(c["fail"]), errors="0", skipped=str(c["n/a"]), time=f"{total:.3f}")
    props = ET.SubElement(suite, "properties")
    for k, v in {**{f"timing.{k}": f"{v:.1f}" for k, v in rep.timings.items()},
                 "target": rep.target, "serial_log": rep.serial_log or "", **_target_props(rep.spec)}.items():
        ET.SubElement(props, "property", name=k, value=str(v))
    for r in rep.results:
        case = ET.SubElement(suite, "testcase", classname=f"verify.{r.check.family or 'check'}",
                             name=r.check.id, time=f"{r.seconds:.3f}")
        if r.status == "fail":
            f = ET.SubElement(case, "failure", message=r.outcome.message[:1000], type="CheckFailed")
            f.text = (f"seed: {r.check.seed}\nexpected: {r.outcome.expected}\nfound: {r.outcome.found}\n")
        elif r.status == "n/a":
            ET.SubElement(case, "skipped", message=r.outcome.message[:1000])
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(f"$ {'sudo ' if x.root else ''}{x.cmd}  # rc={x.rc}\n{x.output}" for x in r.commands)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _target_props(spec: Target) -> dict[str, str]:
    props = {"target.kind": spec.kind, "target.description": spec.description}
    if spec.kind == "disk":
        props["target.path"] = str(spec.path)
        props["target.sha256"] = spec.sha256 or ""
    return props


def write_report(rep: Report, out_dir: Path, serial_log: Path | None = None) -> Path:
    """Write report.json, junit.xml, report.txt (and a copy of the serial log) into `out_dir` atomically."""
    with staged_dir(Path(out_dir)) as tmp:
        data = report_dict(rep)
        if serial_log and Path(serial_log).exists():
            shutil.copyfile(serial_log, tmp / "serial.log")
            data["serial_log_copy"] = "serial.log"
        (tmp / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        (tmp / "junit.xml").write_text(junit_xml(rep))
        (tmp / "report.txt").write_text(render_table(rep) + "\n")
    return Path(out_dir)
