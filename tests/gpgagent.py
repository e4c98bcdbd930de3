"""gpg-agent bookkeeping for tests: gpg starts an agent per GNUPGHOME that outlives the test unless stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def agents_for(home: Path) -> list[int]:
    """PIDs of live gpg-agent processes serving `home` (found by their `--homedir` argument)."""
    want = os.fsencode(str(Path(home).resolve()))
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state == "Z" or not argv or os.path.basename(argv[0]) != b"gpg-agent":
            continue
        if any(a == b"--homedir" and b == want for a, b in zip(argv, argv[1:], strict=False)):
            pids.append(int(entry.name))
    return pids


def stop_agents(home: Path) -> None:
    """`gpgconf --kill all` for `home` (waits until the agent has exited)."""
    if shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)},
                       capture_output=True, timeout=30, check=False)
