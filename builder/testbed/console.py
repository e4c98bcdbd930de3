"""Read what the stand-in initrd printed on the serial console (kernel command line, seed files)."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

_B64 = re.compile(r"^[A-Za-z0-9+/=]+$")


@dataclass(frozen=True)
class StandinReport:
    cmdline: str | None
    medium: str | None
    md5_ok: bool | None
    seeds: dict[str, bytes] = field(default_factory=dict)
    lines: tuple[str, ...] = ()

    def line(self, prefix: str) -> str | None:
        return next((x for x in self.lines if x.startswith(prefix)), None)


def parse_console(text: str) -> StandinReport:
    """Pick the STANDIN lines and decode every `-----BEGIN SEED name-----` block (base64)."""
    lines = [x.rstrip("\r") for x in text.replace("\r\n", "\n").split("\n")]
    ours = tuple(x[len("STANDIN: "):] for x in lines if x.startswith("STANDIN: "))
    seeds: dict[str, bytes] = {}
    current: str | None = None
    chunks: list[str] = []
    for x in lines:
        x = x.strip()
        if m := re.match(r"^-----BEGIN SEED (\S+)-----$", x):
            current, chunks = m.group(1), []
        elif current and x == f"-----END SEED {current}-----":
            seeds[current] = base64.b64decode("".join(chunks))
            current = None
        elif current and _B64.match(x):
            chunks.append(x)
    cmd = next((x[len("cmdline: "):] for x in ours if x.startswith("cmdline: ")), None)
    medium = next((x[len("install medium: "):] for x in ours if x.startswith("install medium: ")), None)
    md5 = next((x.endswith("OK") for x in ours if x.startswith("md5sum-check: ")), None)
    return StandinReport(cmd, medium, md5, seeds, ours)
