"""One pass over big files: hash a stream while it is written, and never hash an unchanged input twice.

`write_hashed()` runs a command that writes a large file to its stdout (xorriso `-outdev -`) and tees
the stream into the output file and a SHA-256 at the same time, so the ISO is read exactly once (by
the builder, from the pipe) instead of being written and then read back for its checksum.

`cached_sha256()` remembers the SHA-256 of input files (the base ISO) in the build cache, keyed by
path, device, inode, size, mtime_ns and ctime_ns: a second remaster of the same base does not read
its 3 GB again. ctime cannot be set from user space, so a file rewritten in place and given its old
mtime back still misses the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from builder.outputs import sha256_file
from builder.run import run_piped

log = logging.getLogger("builder.digest")
HASH_CACHE = "sha256-cache.json"
MAX_ENTRIES = 64


@dataclass(frozen=True)
class Written:
    path: Path
    size: int
    sha256: str


def write_hashed(cmd: Sequence[str | os.PathLike[str]], out: Path, *, mode: int = 0o600,
                 env: dict[str, str] | None = None, timeout: float | None = None) -> Written:
    """Run `cmd`, writing its stdout to `out` (created, must not exist, with `mode`) and hashing it in one pass."""
    h = hashlib.sha256()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    size = 0

    def sink(chunk: memoryview) -> None:
        nonlocal size
        h.update(chunk)  # releases the GIL for large chunks
        done = 0
        while done < len(chunk):
            done += os.write(fd, chunk[done:])
        size += len(chunk)

    try:
        run_piped(cmd, sink=sink, env=env, timeout=timeout)
        os.fchmod(fd, mode)  # the umask may have narrowed it; the mode is part of the contract
    finally:
        os.close(fd)
    return Written(out, size, h.hexdigest())


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
    """Record `digest` for `path` as it is now (best effort: an unwritable cache only costs a re-hash)."""
    path = Path(path).resolve()
    cache_file = cache / HASH_CACHE
    tmp: str | None = None
    try:
        st = path.stat()
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
    """SHA-256 of `path`, from the cache in `cache` when the file is unchanged, else computed and recorded."""
    path = Path(path).resolve()
    st = path.stat()
    hit = _load(cache / HASH_CACHE).get(_key(path, st))
    if hit is not None:
        log.info("sha256 of %s from the cache (unchanged since it was hashed)", path.name)
        return hit
    digest = sha256_file(path)
    if path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size:
        remember_sha256(path, digest, cache)
    return digest
