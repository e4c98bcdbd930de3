"""The one wrapper for external commands: logs the command, clears stdin, raises with stderr."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import mmap
import os
import queue
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from builder.errors import BuilderError

log = logging.getLogger("builder.run")
PIPE_CHUNK = 4 << 20  # bytes per read from a run_piped() stream
PIPE_BUFFERS = 4  # run_piped() buffers in flight


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


PIPE_FD = "{pipe_fd}"  # in a run_piped() argument: replaced by the number of the stream's pipe


def run_piped(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    sink: Callable[[memoryview], None],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    chunk: int = PIPE_CHUNK,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command that writes a large binary stream, handing the stream to `sink` chunk by chunk.

    The command writes the stream into a pipe whose descriptor number replaces `PIPE_FD` in its
    arguments (e.g. xorriso `-outdev stdio:/dev/fd/{pipe_fd}`; the descriptor is inherited), or into
    its stdout when no argument names `PIPE_FD`. Same environment rules as `run()`. Its messages are
    collected in a temporary file (a chatty command can never block on them) and returned as stderr;
    a non-zero exit raises BuilderError with them. The pipe is widened to 1 MiB and read into a ring
    of page-aligned `chunk`-byte buffers; every chunk but the last is full. A view handed to `sink` is
    valid until `sink` returns. On timeout, on an error in `sink` or on Ctrl-C the command is killed
    (and `sink` is no longer running) before the error propagates.
    """
    rfd, wfd = os.pipe()
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(rfd, fcntl.F_SETPIPE_SZ, 1 << 20)
    argv = [os.fspath(c) for c in cmd]
    by_fd = any(PIPE_FD in a for a in argv)
    argv = [a.replace(PIPE_FD, str(wfd)) for a in argv]
    log.debug("+ %s | (builder)", shlex.join(argv))
    full_env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", **(env or {})}
    with tempfile.TemporaryFile(prefix="builder-messages-") as msgs, open(rfd, "rb") as stream:
        try:
            proc = subprocess.Popen(
                argv, env=full_env, stdin=subprocess.DEVNULL, stdout=msgs if by_fd else wfd, stderr=msgs,
                pass_fds=(wfd,) if by_fd else (), start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise BuilderError(f"command not found: {argv[0]}", hint="install the tool that provides it") from exc
        finally:
            os.close(wfd)  # only the command holds the write end: EOF when it exits
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            stop_process_group(proc, signal.SIGKILL, grace=5)

        timer = threading.Timer(timeout, expire) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        # This thread reads into a ring of buffers while a second one hands them to `sink`, so the
        # command never waits for the sink while a buffer is free.
        free: queue.Queue[memoryview] = queue.Queue()
        for _ in range(PIPE_BUFFERS):
            free.put(memoryview(mmap.mmap(-1, chunk)))  # page-aligned: usable for O_DIRECT writes
        full: queue.Queue[tuple[memoryview, int] | None] = queue.Queue()
        failed: list[BaseException] = []
        stopping = threading.Event()

        def consume() -> None:
            while (item := full.get()) is not None:
                if not failed and not stopping.is_set():
                    try:
                        sink(item[0][: item[1]])
                    except BaseException as exc:  # handed to the reading thread, which raises it
                        failed.append(exc)
                free.put(item[0])

        consumer = threading.Thread(target=consume, name="run_piped-sink", daemon=True)
        consumer.start()
        try:
            while not failed:
                view = free.get()
                n = stream.readinto(view)
                if not n:
                    break
                full.put((view, n))
            full.put(None)
            consumer.join()
            if failed:
                raise failed[0]
            rc = proc.wait()
        except BaseException:
            stop_process_group(proc, signal.SIGKILL, grace=5)
            stopping.set()
            full.put(None)
            consumer.join()  # the sink is not running any more when the caller cleans up
            raise
        finally:
            if timer is not None:
                timer.cancel()
        msgs.seek(0)
        messages = msgs.read()
    if timed_out.is_set():
        raise BuilderError(f"command timed out after {timeout}s: {shlex.join(argv)}")
    if rc != 0:
        detail = messages.decode(errors="replace").strip()
        raise BuilderError(
            f"command failed with exit code {rc}: {shlex.join(argv)}" + (f"\n{detail[-4000:]}" if detail else "")
        )
    return subprocess.CompletedProcess(argv, rc, b"", messages)


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
