"""Thin command line: parse arguments, call one stage, turn errors into exit codes."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from builder import __version__
from builder.errors import BuilderError

# Each module in builder/commands/ exposes register(subparsers); its parser sets func=callable(args)->int.
COMMAND_MODULES = [
    "builder.commands.render",
    "builder.commands.verify",
    "builder.commands.standin",
    "builder.commands.iso",
    "builder.commands.pxe",
    "builder.commands.packer",
    "builder.commands.build",
]


def die(message: str, hint: str | None = None, code: int = 2) -> int:
    print(f"builder: error: {message}", file=sys.stderr)
    if hint:
        print(f"builder: hint: {hint}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="builder",
        description="Rebuild and verify the prometheus host from its host model (hosts/prometheus.yaml).",
    )
    parser.add_argument("--version", action="version", version=f"builder {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every external command")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args) or 0)
    except BuilderError as exc:
        return die(exc.message, exc.hint)
    except KeyboardInterrupt:
        return die("interrupted", code=130)
    except OSError as exc:
        return die(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
