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
FIRST_BOOT = "boot 1 (first boot)"


@dataclass(frozen=True)
class BootSection:
    """The checks run during one later boot of the same machine (boot 2, ...) and its timings."""

    name: str  # "boot 2"
    results: tuple[CheckResult, ...]
    timings: dict[str, float] = field(default_factory=dict)
    serial_log: str | None = None

    @property
    def counts(self) -> Counter[str]:
        return Counter(r.status for r in self.results)

    @property
    def ok(self) -> bool:
        return self.counts["fail"] == 0


@dataclass(frozen=True)
class Report:
    host: str  # the model's hostname
    target: str  # how it was reached, e.g. "ops@127.0.0.1:40022 (QEMU stand-in)"
    results: tuple[CheckResult, ...]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    serial_log: str | None = None
    notes: tuple[str, ...] = ()
    target_info: Target | None = None  # the target kind and description (None: the stand-in)
    boots: tuple[BootSection, ...] = ()  # later boots of the same machine (results above: the first boot)

    @property
    def spec(self) -> Target:
        return self.target_info or STANDIN

    @property
    def sections(self) -> tuple[BootSection, ...]:
        """Every boot's section, the first boot first (its timings are the report's)."""
        first = BootSection(FIRST_BOOT, self.results, self.timings, self.serial_log)
        return (first, *self.boots)

    @property
    def counts(self) -> Counter[str]:
        return sum((b.counts for b in self.sections), Counter())

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
    out: dict[str, Any] = {
        "host": rep.host,
        "target": rep.target,
        "target_kind": rep.spec.kind,
        "target_info": {**rep.spec.as_dict(), "reached": rep.target},
        "ok": rep.ok,
        "summary": _summary(counts),
        "timings": rep.timings,
        "serial_log": rep.serial_log,
        "notes": list(rep.notes),
        "checks": [result_dict(r) for r in rep.results],
    }
    if rep.boots:  # "checks" stays the first boot's; "boots" holds every boot's section
        out["boots"] = [_section_dict(b) for b in rep.sections]
    return out


def _summary(counts: Counter[str]) -> dict[str, int]:
    return {"total": sum(counts.values()), "pass": counts["pass"], "fail": counts["fail"], "n/a": counts["n/a"]}


def _section_dict(b: BootSection) -> dict[str, Any]:
    return {"name": b.name, "ok": b.ok, "summary": _summary(b.counts), "timings": b.timings,
            "serial_log": b.serial_log, "checks": [result_dict(r) for r in b.results]}


def format_timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())


def _rows(results: tuple[CheckResult, ...], idw: int, room: int) -> list[str]:
    lines = []
    for r in results:
        msg = r.outcome.message.replace("\n", " ")
        if len(msg) > room:
            msg = msg[: room - 3] + "..."
        lines.append(f"{MARK[r.status]:6}  {r.check.id:{idw}}  {msg}")
    return lines


def render_table(rep: Report, width: int = 120) -> str:
    sections = rep.sections
    every = [r for b in sections for r in b.results]
    idw = min(max((len(r.check.id) for r in every), default=10), 40)
    room = max(width - idw - 10, 30)
    lines = [f"{'STATUS':6}  {'CHECK':{idw}}  RESULT", f"{'-' * 6}  {'-' * idw}  {'-' * 20}"]
    if not rep.boots:
        lines += _rows(rep.results, idw, room)
    else:
        for b in sections:
            c = b.counts
            lines.append(f"== {b.name}: {len(b.results)} checks, {c['pass']} pass, {c['fail']} fail, "
                         f"{c['n/a']} not applicable" + (f" ({format_timings(b.timings)})" if b.timings else ""))
            lines += _rows(b.results, idw, room)
    c = rep.counts
    lines.append("")
    boots = f" over {len(sections)} boots" if rep.boots else ""
    lines.append(f"{rep.host} ({rep.target}): {sum(c.values())} checks{boots}, {c['pass']} pass, "
                 f"{c['fail']} fail, {c['n/a']} not applicable")
    lines.append(f"target: {rep.spec.kind}: {rep.spec.description}")
    if rep.spec.kind == "disk":
        lines.append(f"disk sha256: {rep.spec.sha256 or '(not computed)'}")
    if rep.timings:
        lines.append(f"timings: {format_timings(rep.timings)}")
    for b in rep.boots:
        if b.timings:
            lines.append(f"timings {b.name}: {format_timings(b.timings)}")
    if rep.serial_log:
        lines.append(f"serial log: {rep.serial_log}")
    for b in sections:
        where = f" ({b.name})" if rep.boots else ""
        for r in b.results:
            if r.status == "fail":
                lines.append(f"FAIL {r.check.id}{where} [{r.check.seed}]: {r.outcome.message}")
                if r.outcome.expected or r.outcome.found:
                    lines.append(f"     expected: {r.outcome.expected}\n     found:    {r.outcome.found}")
    return "\n".join(lines)


def junit_xml(rep: Report) -> str:
    c = rep.counts
    every = [r for b in rep.sections for r in b.results]
    total = sum(r.seconds for r in every)
    suites = ET.Element("testsuites", name=f"builder verify {rep.host}", tests=str(len(every)),
                        failures=str(c["fail"]), skipped=str(c["n/a"]), time=f"{total:.3f}")
    for n, b in enumerate(rep.sections, start=1):
        # The first boot keeps the suite name it always had; later boots get their own suite.
        _junit_suite(suites, rep, b, f"verify.{rep.host}" if n == 1 else f"verify.{rep.host}.boot{n}",
                     "" if n == 1 else f".boot{n}")
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _junit_suite(suites: ET.Element, rep: Report, b: BootSection, name: str, suffix: str) -> None:
    c = b.counts
    total = sum(r.seconds for r in b.results)
    suite = ET.SubElement(suites, "testsuite", name=name, tests=str(len(b.results)),
                          failures=str(c["fail"]), errors="0", skipped=str(c["n/a"]), time=f"{total:.3f}")
    props = ET.SubElement(suite, "properties")
    for k, v in {**{f"timing.{k}": f"{v:.1f}" for k, v in b.timings.items()}, "boot": b.name,
                 "target": rep.target, "serial_log": b.serial_log or "", **_target_props(rep.spec)}.items():
        ET.SubElement(props, "property", name=k, value=str(v))
    for r in b.results:
        case = ET.SubElement(suite, "testcase", classname=f"verify.{r.check.family or 'check'}{suffix}",
                             name=r.check.id, time=f"{r.seconds:.3f}")
        if r.status == "fail":
            f = ET.SubElement(case, "failure", message=r.outcome.message[:1000], type="CheckFailed")
            f.text = (f"seed: {r.check.seed}\nexpected: {r.outcome.expected}\nfound: {r.outcome.found}\n")
        elif r.status == "n/a":
            ET.SubElement(case, "skipped", message=r.outcome.message[:1000])
        out = ET.SubElement(case, "system-out")
        out.text = "\n".join(f"$ {'sudo ' if x.root else ''}{x.cmd}  # rc={x.rc}\n{x.output}" for x in r.commands)


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
        for n, b in enumerate(rep.boots, start=2):  # each later boot's console, beside the first's
            if b.serial_log and Path(b.serial_log).exists():
                shutil.copyfile(b.serial_log, tmp / f"serial-boot{n}.log")
                data["boots"][n - 1]["serial_log_copy"] = f"serial-boot{n}.log"
        (tmp / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        (tmp / "junit.xml").write_text(junit_xml(rep))
        (tmp / "report.txt").write_text(render_table(rep) + "\n")
    return Path(out_dir)
