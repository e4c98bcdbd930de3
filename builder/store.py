"""Atomic outputs: build into a temporary folder beside the target, rename when complete."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final`, on error it vanishes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            _rmdir_if_empty(final.parent)
        raise
    os.chmod(tmp, 0o755)
    if final.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, trash / final.name)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def staged_file(final: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final` (not created); on success it is renamed to `final`."""
    final = Path(final)
    if final.exists() and not overwrite:
        from builder.errors import BuilderError

        raise BuilderError(f"output file already exists: {final}", hint="remove it or choose another --out")
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    os.unlink(name)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.replace(tmp, final)


def _rmdir_if_empty(path: Path) -> None:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(final: Path, text: str, mode: int = 0o644) -> None:
    """Replace `final` with `text` in one rename (the one atomic-write helper for small files)."""
    with staged_file(final, overwrite=True) as tmp:
        tmp.write_text(text)
        os.chmod(tmp, mode)


def update_manifest(manifest: Path, section: str, data: dict) -> None:
    """Set one stage's section of manifest.json (the render stage writes the file; iso and pxe add theirs)."""
    import json

    try:
        current = json.loads(manifest.read_text())
    except FileNotFoundError:
        current = {}
    except json.JSONDecodeError as exc:
        from builder.errors import BuilderError

        raise BuilderError(f"{manifest}: not valid JSON ({exc})", hint="run `builder render` again") from None
    current[section] = data
    write_text_atomic(manifest, json.dumps(current, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def cache_lock(cache: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock while filling one entry of the shared build cache, so that two
    builder processes (or two test workers) never build the same entry at once."""
    import fcntl

    locks = Path(cache) / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
