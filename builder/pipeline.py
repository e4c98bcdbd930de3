"""`builder build`: validate → render → iso → pxe → packer → verify, then a summary of every artifact.

Each stage is the very subcommand a user would run (same parser, same handler), so `builder build`
cannot drift from the single commands. The first failing stage stops the pipeline; the summary
still lists every stage (ok / failed / not run / skipped) and every file under `<out>/<host>/` with
its SHA-256, and is also written to `<out>/<host>/build-summary.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuilderError
from builder.isofetch import cache_dir
from builder.media.digest import cached_sha256
from builder.outputs import staged_file

STAGES = ("validate", "render", "iso", "pxe", "packer", "verify")
SKIPPABLE = ("pxe", "packer", "verify")
COLLAPSE_OVER = 20  # files in one folder before the terminal table shows the folder as one row
DEMO_HINT = ("for a demo without the Ubuntu ISO: `builder standin iso --out standin.iso` and then "
             "`builder build --base standin.iso --allow-standin`")


@dataclass(frozen=True)
class BuildOptions:
    host: Path | None
    out: Path
    base: Path | None
    allow_standin: bool = False
    schema_dir: Path | None = None
    keyring: Path | None = None
    no_pin_check: bool = False
    skip: tuple[str, ...] = ()
    accel: str | None = None
    packer_timeout: float | None = None


@dataclass(frozen=True)
class StageResult:
    name: str
    status: str  # ok | failed | skipped | not run
    seconds: float = 0.0
    detail: str = ""


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the output folder
    size: int
    sha256: str


def stage_argv(name: str, opts: BuildOptions, hostname: str) -> list[str]:
    """The subcommand line the stage runs (what a user would type)."""
    common = ["--host", str(opts.host)] if opts.host else []
    out = ["--out", str(opts.out)]
    schema = ["--schema-dir", str(opts.schema_dir)] if opts.schema_dir else []
    base = ["--base", str(opts.base)] if opts.base else []
    base += ["--allow-standin"] if opts.allow_standin else []
    base += ["--keyring", str(opts.keyring)] if opts.keyring else []
    base += ["--no-pin-check"] if opts.no_pin_check else []
    if name == "validate":
        return ["validate", *common, *schema]
    if name == "render":
        return ["render", *common, *out, *schema]
    if name in ("iso", "pxe"):
        return [name, *common, *out, *schema, *base]
    if name == "packer":
        extra = ["--accel", opts.accel] if opts.accel else []
        extra += ["--packer-timeout", str(opts.packer_timeout)] if opts.packer_timeout else []
        return ["packer", *common, *out, *extra]
    if name == "verify":
        # The verify stage renders the same model again (deterministic, so the same seed as the render
        # stage) with its test overrides; `builder verify --seed DIR` checks a hand-edited seed instead.
        return ["verify", *common, *out]
    raise ValueError(name)


def prepare(name: str, opts: BuildOptions, hostname: str) -> None:
    """Make a stage re-runnable: the remaster refuses to overwrite, so drop the previous ISO."""
    if name == "iso":
        iso = opts.out / hostname / f"{hostname}-autoinstall.iso"
        for p in (iso, iso.with_name(iso.name + ".sha256")):
            if p.exists():
                print(f"builder: replacing {p} (the remaster is reproducible)")
                p.unlink()


def run_stage(parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    args = parser.parse_args(list(argv))
    return int(args.func(args) or 0)


def run_pipeline(opts: BuildOptions, hostname: str, parser: argparse.ArgumentParser,
                 say: Callable[[str], None] = print) -> list[StageResult]:
    results: list[StageResult] = []
    stopped = False
    for i, name in enumerate(STAGES, 1):
        if stopped:
            results.append(StageResult(name, "not run", detail="an earlier stage failed"))
            continue
        if name in opts.skip:
            results.append(StageResult(name, "skipped", detail="--skip " + name))
            continue
        argv = stage_argv(name, opts, hostname)
        say(f"\n=== [{i}/{len(STAGES)}] {name}: builder {' '.join(argv)}")
        started = time.monotonic()
        try:
            prepare(name, opts, hostname)
            rc = run_stage(parser, argv)
            detail = "" if rc == 0 else f"exit code {rc}"
        except BuilderError as exc:
            if name == "iso" and opts.base is None:
                exc = BuilderError(exc.message, hint="; ".join(h for h in (exc.hint, DEMO_HINT) if h))
            say(f"builder: error: {exc}")
            rc, detail = 2, exc.message.splitlines()[0]
        seconds = time.monotonic() - started
        results.append(StageResult(name, "ok" if rc == 0 else "failed", seconds, detail))
        stopped = rc != 0
    return results


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
    with staged_file(target, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return target


def exit_code(results: list[StageResult]) -> int:
    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return 0
    first = failed[0]
    code = first.detail.removeprefix("exit code ")
    return int(code) if code.isdigit() else 2
