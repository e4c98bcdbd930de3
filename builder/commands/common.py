"""Arguments and steps shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from builder.errors import ProblemsError
from builder.model import HostModel, load_model_with_warnings
from builder.seed.render import render_host
from builder.seed.validate import find_schema_dir, validate_rendered

DEFAULT_OUT = Path("artifacts")


def add_host_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", type=Path, default=None, metavar="FILE",
                   help="host model YAML (default: the embedded hosts/prometheus.yaml)")


def add_out_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help="output folder; results go to DIR/<hostname>/ (default: artifacts/)")


def add_schema_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schema-dir", type=Path, default=None, metavar="DIR",
                   help="folder with the upstream autoinstall/cloud-init schemas (or $BUILDER_SCHEMA_DIR)")


_WARNED: set[str] = set()  # `builder build` loads the model once per stage: warn once


def reset_warnings() -> None:
    _WARNED.clear()


def load_host(args: argparse.Namespace) -> HostModel:
    model, warnings = load_model_with_warnings(args.host)
    for w in warnings:
        if str(w) not in _WARNED:
            _WARNED.add(str(w))
            print(f"builder: {w}", file=sys.stderr)
    return model


def render_checked(model: HostModel, schema_dir: Path | None, tools: bool) -> tuple[dict[str, bytes], list]:
    """Render in memory and validate; raise with every schema/tool problem at once."""
    files = render_host(model)
    steps = validate_rendered(files, find_schema_dir(schema_dir), tools=tools)
    failed = [s for s in steps if s.status == "failed"]
    if failed:
        from builder.errors import Problem

        problems = [Problem(s.name, None, "", s.detail) for s in failed]
        raise ProblemsError(problems, what="rendered seed")
    return files, steps
