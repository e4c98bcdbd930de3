"""One pass over big files: hash a stream while it is written, and never hash an unchanged input twice.

`write_hashed()` runs a command that writes a large file into a pipe (xorriso `-outdev
stdio:/dev/fd/N`) and tees the stream into the output file and a SHA-256 at the same time, so the
ISO passes once (through the builder, from the pipe) instead of being written and then read back.

`cached_sha256()` remembers the SHA-256 of input files (the base ISO) in the build cache, keyed by
path, device, inode, size, mtime_ns and ctime_ns: a second remaster of the same base does not read
its 3 GB again. ctime cannot be set from user space, so a file rewritten in place and given its old
mtime back still misses the cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from builder.run import run_piped
from builder.store import sha256_file

log = logging.getLogger("builder.digest")
HASH_CACHE = "sha256-cache.json"
MAX_ENTRIES = 256
CACHE_MIN_SIZE = 16 << 20  # smaller files are hashed again: cheaper than the cache's own bookkeeping


@dataclass(frozen=True)
class Written:
    path: Path
    size: int
    sha256: str


def write_hashed(cmd: Sequence[str | os.PathLike[str]], out: Path, *, mode: int = 0o600,
                 env: dict[str, str] | None = None, timeout: float | None = None) -> Written:
    """Run `cmd`, writing its stream (see `run_piped`) to `out` (created, must not exist, with `mode`)
    and hashing it, in one pass: each chunk is hashed in one thread while it is written in another."""
    h = hashlib.sha256()
    writer = _DirectWriter(out, mode)
    size = 0

    def sink(chunk: memoryview) -> None:
        nonlocal size
        hashing = hasher.submit(h.update, chunk)  # hashlib releases the GIL, and so does os.write
        writer.write(chunk)
        hashing.result()
        size += len(chunk)

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") as hasher:
            run_piped(cmd, sink=sink, env=env, timeout=timeout)
        os.fchmod(writer.fd, mode)  # the umask may have narrowed it; the mode is part of the contract
    finally:
        os.close(writer.fd)
    return Written(out, size, h.hexdigest())


class _DirectWriter:
    """Writes a new file with O_DIRECT while chunks are block-aligned, buffered otherwise.

    Measured on the build VM (3 GiB, ext4 on virtio): buffered writes cost 6.6 s of system time and
    16 s in all (the page cache under memory pressure), O_DIRECT 0.5 s and 3.5 s. The output is not
    read again by the build, so caching it buys nothing. Where O_DIRECT is refused (tmpfs, some FUSE
    file systems) or a chunk is not aligned (the last one), it falls back to ordinary writes.
    """

    ALIGN = 4096

    def __init__(self, path: Path, mode: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        direct = getattr(os, "O_DIRECT", 0)
        self.direct = False
        if direct:
            try:
                self.fd = os.open(path, flags | direct, mode)
                self.direct = True
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        self.fd = os.open(path, flags, mode)

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False

    def write(self, chunk: memoryview) -> None:
        if self.direct and len(chunk) % self.ALIGN:
            self._buffered()
        done = 0
        while done < len(chunk):
            try:
                n = os.write(self.fd, chunk[done:])
            except OSError as exc:
                if not self.direct or exc.errno != errno.EINVAL:
                    raise
                self._buffered()  # accepted at open, refused at write
                continue
            done += n
            if done < len(chunk):
                self._buffered()  # a short write leaves an unaligned offset


def _key(path: Path, st: os.stat_result) -> str:
    return f"{path}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _load(cache_file: Path) -> dict[str, str]:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def remember_sha256(path: Path, digest: str, cache: Path) -> None:
    """Record `digest` for `path` as it is now (best effort: an unwritable cache only costs a re-hash;
    files under CACHE_MIN_SIZE are not recorded)."""
    path = Path(path).resolve()
    cache_file = cache / HASH_CACHE
    tmp: str | None = None
    try:
        st = path.stat()
        if st.st_size < CACHE_MIN_SIZE:
            return
        entries = {k: v for k, v in _load(cache_file).items() if not k.startswith(f"{path}|")}
        entries[_key(path, st)] = digest
        keep = dict(list(entries.items())[-MAX_ENTRIES:])
        cache.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{HASH_CACHE}.tmp-", dir=cache)
        with os.fdopen(fd, "w") as f:
            json.dump(keep, f, indent=1)
        os.replace(tmp, cache_file)
    except OSError as exc:
        log.debug("sha256 cache not updated (%s)", exc)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def cached_sha256(path: Path, cache: Path) -> str:
    """SHA-256 of `path`, from the cache in `cache` when the file is unchanged, else computed and recorded
    (files under CACHE_MIN_SIZE are always hashed)."""
    path = Path(path).resolve()
    st = path.stat()
    if st.st_size < CACHE_MIN_SIZE:
        return sha256_file(path)
    hit = _load(cache / HASH_CACHE).get(_key(path, st))
    if hit is not None:
        log.info("sha256 of %s from the cache (unchanged since it was hashed)", path.name)
        return hit
    digest = sha256_file(path)
    if path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size:
        remember_sha256(path, digest, cache)
    return digest
