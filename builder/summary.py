"""The build summary: every stage's status and time, every artifact with its SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from builder.media.digest import cached_sha256
from builder.media.fetch import cache_dir
from builder.store import write_text_atomic

COLLAPSE_OVER = 20  # files in one folder before the terminal table shows the folder as one row


@dataclass(frozen=True)
class StageResult:
    name: str
    status: str  # ok | failed | skipped | not run
    seconds: float = 0.0
    detail: str = ""
    code: int = 0  # the stage's exit code (0 ok, 1 checks failed, 2 builder error, Packer's own code)


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the output folder
    size: int
    sha256: str


def collect_artifacts(out: Path, hostname: str) -> list[Artifact]:
    """Every file under out/<host>/ (staging folders, starting with '.', excluded), sorted."""
    root = out / hostname
    seen: dict[tuple[int, int, int, int], str] = {}  # hard links (PXE's ISO copy) are hashed once
    arts = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            st = p.stat()
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key not in seen:
                seen[key] = cached_sha256(p, cache_dir())  # the ISO's was remembered when it was written
            arts.append(Artifact(str(p.relative_to(out)), st.st_size, seen[key]))
    return arts


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def summary_text(results: list[StageResult], arts: list[Artifact]) -> str:
    lines = ["", "Stages:"]
    for r in results:
        took = f"{r.seconds:6.1f}s" if r.status in ("ok", "failed") else " " * 7
        lines.append(f"  {r.name:<9} {r.status:<8} {took}  {r.detail}".rstrip())
    rows = table_rows(arts)
    lines += ["", f"Artifacts (SHA-256; {len(arts)} files, each listed in build-summary.json):"]
    width = max((len(a.path) for a in rows), default=10)
    for a in rows:
        lines.append(f"  {a.sha256}  {a.path:<{width}}  {_size(a.size):>10}")
    if not rows:
        lines.append("  (none)")
    return "\n".join(lines)


def table_rows(arts: list[Artifact], max_per_dir: int = COLLAPSE_OVER) -> list[Artifact]:
    """Folders holding many files (GRUB's module folders in the PXE bundle) become one row whose
    SHA-256 is that of their `sha256sum`-style listing, so the table stays readable."""
    by_dir: dict[str, list[Artifact]] = {}
    for a in arts:
        by_dir.setdefault(a.path.rsplit("/", 1)[0], []).append(a)
    rows = []
    for a in arts:
        folder = a.path.rsplit("/", 1)[0]
        group = by_dir[folder]
        if len(group) <= max_per_dir:
            rows.append(a)
        elif a is group[0]:
            listing = "".join(f"{g.sha256}  {g.path.rsplit('/', 1)[1]}\n" for g in group).encode()
            rows.append(Artifact(f"{folder}/ ({len(group)} files)", sum(g.size for g in group),
                                 hashlib.sha256(listing).hexdigest()))
    return rows


def write_summary(out: Path, hostname: str, results: list[StageResult], arts: list[Artifact]) -> Path:
    target = out / hostname / "build-summary.json"
    data = {
        "host": hostname,
        "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 1), "detail": r.detail}
                   for r in results],
        "artifacts": [{"path": a.path, "size": a.size, "sha256": a.sha256} for a in arts],
    }
    write_text_atomic(target, json.dumps(data, indent=2) + "\n")
    return target


def exit_code(results: list[StageResult]) -> int:
    """The exit code of the first failed stage (0 when none failed)."""
    failed = [r for r in results if r.status == "failed"]
    return failed[0].code or 2 if failed else 0
