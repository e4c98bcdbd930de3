"""Run ssh-audit (PyPI) against an endpoint and judge its JSON: fail-level findings only."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.errors import BuilderError
from builder.run import run
from builder.verify.host import Result

CATEGORIES = {"kex": "key exchange", "key": "host key", "enc": "cipher", "mac": "MAC"}
# Pseudo-algorithms that announce protocol extensions, not crypto.
PSEUDO = {"ext-info-s", "ext-info-c", "kex-strict-s-v00@openssh.com", "kex-strict-c-v00@openssh.com"}


def find_ssh_audit() -> str | None:
    beside = Path(sys.executable).parent / "ssh-audit"
    return str(beside) if beside.exists() else shutil.which("ssh-audit")


def run_ssh_audit(host: str, port: int, timeout: float = 120.0) -> Result:
    tool = find_ssh_audit()
    if tool is None:
        return Result(127, "", "ssh-audit not found (pip install ssh-audit, or the project's [test] extra)")
    try:
        proc = run([tool, "-j", "-t", "20", "-p", str(port), host], check=False, timeout=timeout)
    except BuilderError as exc:
        return Result(124, "", str(exc))
    return Result(proc.returncode, (proc.stdout or b"").decode(errors="replace"),
                  (proc.stderr or b"").decode(errors="replace"))


@dataclass(frozen=True)
class Finding:
    category: str  # kex | key | enc | mac
    algorithm: str
    why: str

    def __str__(self) -> str:
        return f"{CATEGORIES.get(self.category, self.category)} {self.algorithm}: {self.why}"


def offered(report: dict[str, Any], category: str) -> list[str]:
    return [e["algorithm"] for e in report.get(category) or [] if e.get("algorithm") not in PSEUDO]


def fail_findings(report: dict[str, Any], min_bits: int) -> list[Finding]:
    """Fail-level notes per algorithm, critical del/chg recommendations, and small moduli/RSA keys."""
    found: list[Finding] = []
    for cat in CATEGORIES:
        for entry in report.get(cat) or []:
            alg = entry.get("algorithm", "?")
            if alg in PSEUDO:
                continue
            for note in (entry.get("notes") or {}).get("fail") or []:
                found.append(Finding(cat, alg, str(note)))
            size = entry.get("keysize")
            if isinstance(size, int) and size < min_bits and (cat == "kex" or "rsa" in alg):
                found.append(Finding(cat, alg, f"{size}-bit modulus/key < {min_bits}"))
    critical = (report.get("recommendations") or {}).get("critical") or {}
    for action in ("del", "chg"):
        for cat, items in (critical.get(action) or {}).items():
            for item in items or []:
                why = "remove (critical)" if action == "del" else (item.get("notes") or "change (critical)")
                f = Finding(cat, item.get("name", "?"), why)
                if all((x.category, x.algorithm) != (f.category, f.algorithm) for x in found):
                    found.append(f)
    return found


def parse_report(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
