"""The one wrapper for external commands: logs the command, clears stdin, raises with stderr."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from builder.errors import BuilderError

log = logging.getLogger("builder.run")


def require_tool(name: str, package: str | None = None) -> str:
    """Return the path of an external tool or fail with the package that provides it."""
    path = shutil.which(name)
    if path is None:
        pkg = package or name
        raise BuilderError(
            f"required tool '{name}' was not found on PATH",
            hint=f"install it, e.g. `apt-get install {pkg}`",
        )
    return path


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = True,
    check: bool = True,
    timeout: float | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command with LANG=C.UTF-8 and no stdin; raise BuilderError with stderr on failure."""
    argv = [os.fspath(c) for c in cmd]
    log.debug("+ %s", shlex.join(argv))
    full_env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **(env or {})}
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=full_env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise BuilderError(f"command not found: {argv[0]}", hint="install the tool that provides it") from exc
    except subprocess.TimeoutExpired as exc:
        raise BuilderError(f"command timed out after {timeout}s: {shlex.join(argv)}") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip()
        out = (proc.stdout or b"").decode(errors="replace").strip()
        detail = err or out
        raise BuilderError(
            f"command failed with exit code {proc.returncode}: {shlex.join(argv)}"
            + (f"\n{detail[-4000:]}" if detail else "")
        )
    return proc


def run_streaming(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    on_line: Callable[[str], None],
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> int:
    """Run a long command, handing each output line (stdout+stderr) to `on_line`; return its exit code.

    Same environment rules as `run()`. On timeout or Ctrl-C the command's process group gets SIGINT
    (so tools like packer clean up), then SIGKILL after 30 s. `stop_when` is polled twice a second
    (from another thread); once it returns True the process group is stopped the same way.
    """
    argv = [os.fspath(c) for c in cmd]
    log.debug("+ %s", shlex.join(argv))
    full_env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **(env or {})}
    try:
        proc = subprocess.Popen(
            argv, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    except FileNotFoundError as exc:
        raise BuilderError(f"command not found: {argv[0]}", hint="install the tool that provides it") from exc
    deadline = None if timeout is None else time.monotonic() + timeout
    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, stop_process_group, args=(proc, signal.SIGINT, 30))
        timer.daemon = True
        timer.start()
    if stop_when is not None:
        threading.Thread(target=_stop_when, args=(proc, stop_when), daemon=True).start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            on_line(raw.decode(errors="replace").rstrip("\r\n"))
        rc = proc.wait()
    except BaseException:
        stop_process_group(proc, signal.SIGINT, grace=30)
        raise
    finally:
        if timer is not None:
            timer.cancel()
    if deadline is not None and time.monotonic() >= deadline and rc != 0:
        raise BuilderError(f"command timed out after {timeout}s: {shlex.join(argv)}")
    return rc


def _stop_when(proc: subprocess.Popen[bytes], stop_when: Callable[[], bool]) -> None:
    while proc.poll() is None:
        if stop_when():
            stop_process_group(proc, signal.SIGINT, grace=30)
            return
        time.sleep(0.5)


def stop_process_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """Send `sig` to the process group of `proc` (started with start_new_session), SIGKILL after `grace` s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
