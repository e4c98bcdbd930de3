"""The base ISO a stage remasters: the given file (pin-checked) or the model's ISO from the cache."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from builder.media.fetch import IsoSource, acquire_base, cache_dir, check_given_base
from builder.media.iso import STANDIN_MARKER, check_base, extract, list_files
from builder.model import HostModel

if TYPE_CHECKING:
    from builder.pipeline import BaseIso


@dataclass(frozen=True)
class BaseSource:
    path: Path
    name: str
    sha256: str


def resolve_base(model: HostModel, base: BaseIso) -> BaseSource:
    """The base ISO path, a display name and its sha256; checks the pin and the stand-in status."""
    src = IsoSource.from_model(model)
    if base.path is None:
        return BaseSource(acquire_base(src, cache_dir(), base.keyring), src.name, src.sha256)
    path = base.path.absolute()
    sha = check_given_base(path, None)
    if sha != src.sha256 and not base.no_pin_check:
        info = extract_info(path)
        if STANDIN_MARKER.encode() not in info:
            check_given_base(path, src)  # raises with the pin mismatch
        elif not base.allow_standin:
            check_base(["/casper/vmlinuz", "/casper/initrd", "/boot/grub/grub.cfg"], info, path, False)
    return BaseSource(path, path.name, sha)


def extract_info(iso: Path) -> bytes:
    """The ISO's /.disk/info (empty when it has none)."""
    files = list_files(iso)
    if "/.disk/info" not in files:
        return b""
    with tempfile.TemporaryDirectory() as tmp:
        return extract(iso, ["/.disk/info"], Path(tmp))["/.disk/info"]
