"""gpg-agent bookkeeping for tests: gpg starts an agent per GNUPGHOME that outlives the test unless stopped."""

from __future__ import annotations

from pathlib import Path

from builder.testbed.gpgkeys import agent_pids, running_agents, stop_agent


def agents_for(home: Path) -> list[int]:
    """PIDs of live gpg-agent processes serving `home`."""
    return agent_pids(home)


def agents_under(root: Path) -> dict[int, Path]:
    """Live gpg-agent processes whose GNUPGHOME lies below `root`."""
    root = Path(root).resolve()
    return {pid: h for pid, h in running_agents().items() if h.is_relative_to(root)}


def stop_agents(home: Path) -> None:
    """`gpgconf --kill all` for `home`, then SIGTERM if it lingers (waits until the agent has exited)."""
    stop_agent(home)
