"""A small static HTTP server for PXE bundles: GET, HEAD and single byte ranges, each request logged.

Casper fetches the ISO given by `url=` and the NoCloud seed over HTTP; installers and iPXE use HEAD
and Range requests, which Python's SimpleHTTPRequestHandler does not answer.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from builder.errors import BuilderError

log = logging.getLogger("builder.media.serve")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files below `directory`; honours `Range: bytes=a-b` (one range) with 206."""

    protocol_version = "HTTP/1.1"
    _range: tuple[int, int] | None = None
    access_log: Path | None = None  # set by make_server: requests go to this file, not the log

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        if self.access_log is None:
            log.info("%s %s", self.address_string(), format % args)
        else:
            with open(self.access_log, "a") as f:
                f.write(f"{self.log_date_time_string()} {self.address_string()} {format % args}\n")

    def send_head(self):
        self._range = None
        path = self.translate_path(self.path)
        if os.path.isdir(path) or "Range" not in self.headers:
            return super().send_head()
        m = _RANGE.match(self.headers["Range"].strip())
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to the caller like the stdlib does
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        if not m or (not m.group(1) and not m.group(2)):
            return self._whole(f, size)
        if m.group(1):
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:  # suffix range: the last N bytes
            start, end = max(0, size - int(m.group(2))), size - 1
        if start >= size or start > end:
            f.close()
            self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self._range = (start, end)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        f.seek(start)
        return f

    def _whole(self, f, size: int):
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        return f

    def end_headers(self) -> None:
        if self._range is None and self.command in ("GET", "HEAD"):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()

    def copyfile(self, source, outputfile) -> None:
        if self._range is None:
            shutil.copyfileobj(source, outputfile, 1 << 20)
            return
        remaining = self._range[1] - self._range[0] + 1
        while remaining > 0:
            chunk = source.read(min(1 << 20, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)


def port_number(text: str) -> int:
    """argparse type of a TCP port option: a whole number 1-65535 (0 = any free port is not a choice
    a user means), so a bad value is a usage error (exit 2) naming the option, not a traceback."""
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def make_server(directory: Path, bind: str = "127.0.0.1", port: int = 0,
                access_log: Path | None = None) -> ThreadingHTTPServer:
    cls = RangeHandler if access_log is None else type("FileLoggedHandler", (RangeHandler,), {"access_log": access_log})
    handler = partial(cls, directory=str(directory))
    try:
        server = ThreadingHTTPServer((bind, port), handler)
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise BuilderError(f"cannot listen on {bind}:{port}: {reason}",
                           hint="choose another --port or --bind (ports below 1024 need root)") from exc
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def serving(directory: Path, bind: str = "127.0.0.1", port: int = 0,
            access_log: Path | None = None) -> Iterator[ThreadingHTTPServer]:
    """Serve `directory` in a background thread for the duration of the block."""
    server = make_server(directory, bind, port, access_log)
    thread = threading.Thread(target=server.serve_forever, name="builder-serve", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
