"""Arguments shared by several subcommands, and the one way a command makes its build context."""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.pipeline import BaseIso, BuildContext, make_context

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


def add_base_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, default=None, metavar="ISO",
                   help="base ISO file (default: download the model's ISO into the cache)")
    p.add_argument("--keyring", type=Path, default=None, metavar="FILE",
                   help="keyring for gpgv to check SHA256SUMS.gpg of a download")
    p.add_argument("--allow-standin", action="store_true",
                   help="accept a test stand-in base ISO (tests and demos only)")
    p.add_argument("--no-pin-check", action="store_true",
                   help="accept a --base whose sha256 differs from the model's os.iso.sha256")


def base_iso(args: argparse.Namespace) -> BaseIso:
    return BaseIso(args.base, args.keyring, args.allow_standin, args.no_pin_check)


def context(args: argparse.Namespace, *, tools: bool = False) -> BuildContext:
    """The build context of this invocation: model loaded, seed rendered and validated, once."""
    return make_context(args.host, getattr(args, "out", DEFAULT_OUT), getattr(args, "schema_dir", None),
                        tools=tools)


def positive(kind: type = float, *, maximum: float | None = None):  # noqa: ANN201 (argparse type factory)
    """An argparse type: a number > 0 (and <= maximum); argparse reports a bad value with exit code 2."""

    def parse(text: str):  # noqa: ANN202
        try:
            value = kind(text)
        except ValueError:
            kind_name = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"expected a {kind_name}, got {text!r}") from None
        if value <= 0 or (maximum is not None and value > maximum):
            bound = f" and <= {maximum:g}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"expected a number > 0{bound}, got {text!r}")
        return value

    return parse


def port(text: str) -> int:
    from builder.media.serve import port_number

    return port_number(text)
