"""gpg-agent bookkeeping for tests: gpg starts an agent per GNUPGHOME that outlives the test unless stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def running_agents() -> dict[int, Path]:
    """Live gpg-agent processes (zombies excluded) → the GNUPGHOME each serves (its `--homedir`)."""
    found = {}
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
        homes = [b for a, b in zip(argv, argv[1:], strict=False) if a == b"--homedir"]
        if homes:
            found[int(entry.name)] = Path(os.fsdecode(homes[0]))
    return found


def agents_for(home: Path) -> list[int]:
    """PIDs of live gpg-agent processes serving `home`."""
    want = Path(home).resolve()
    return sorted(pid for pid, h in running_agents().items() if h == want)


def agents_under(root: Path) -> dict[int, Path]:
    """Live gpg-agent processes whose GNUPGHOME lies below `root`."""
    root = Path(root).resolve()
    return {pid: h for pid, h in running_agents().items() if h.is_relative_to(root)}


def stop_agents(home: Path) -> None:
    """`gpgconf --kill all` for `home` (waits until the agent has exited)."""
    if shutil.which("gpgconf"):
        subprocess.run(["gpgconf", "--kill", "all"], env={**os.environ, "GNUPGHOME": str(home)},
                       capture_output=True, timeout=30, check=False)
    deadline = time.monotonic() + 10  # the agent exits asynchronously (slowly on a loaded machine)
    while agents_for(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in agents_for(home):  # still there: it ignored the request
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while agents_for(home) and time.monotonic() < deadline:
        time.sleep(0.1)
