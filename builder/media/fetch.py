"""Acquire the base ISO: a given file, or the model's Ubuntu ISO downloaded into the cache.

Downloads stream into `<name>.part` (resumed with a Range request when it exists), are checked
against the model's pinned SHA-256 *and* the release's SHA256SUMS (whose GPG signature is checked
with gpgv when a keyring is given), and only then renamed to `<name>`. A mismatch never leaves a
file named like a good ISO and never touches a file the user passed in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from builder.errors import BuilderError
from builder.media.digest import cached_sha256, remember_sha256
from builder.model import HostModel
from builder.run import require_tool, run

log = logging.getLogger("builder.media.fetch")
CHUNK = 1 << 20


@dataclass(frozen=True)
class IsoSource:
    name: str
    url: str
    sha256: str
    sha256sums_url: str

    @classmethod
    def from_model(cls, model: HostModel) -> IsoSource:
        iso = model.os.iso
        sums = iso.sha256sums_url or iso.url.rsplit("/", 1)[0] + "/SHA256SUMS"
        return cls(iso.name, iso.url, iso.sha256.lower(), sums)


def cache_dir() -> Path:
    return Path(os.environ.get("BUILDER_CACHE") or Path.home() / ".cache" / "prometheus-builder")


def _offline_error(url: str, exc: Exception) -> BuilderError:
    host = urlsplit(url).netloc
    return BuilderError(
        f"cannot download {url}: {host} is not reachable (offline?): {exc.__class__.__name__}",
        hint="download the ISO on a machine with internet access and pass it with --base PATH",
    )


def _get(session: requests.Session, url: str, **kw) -> requests.Response:  # noqa: ANN003
    try:
        resp = session.get(url, timeout=(15, 60), **kw)
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _offline_error(url, exc) from exc
    if resp.status_code >= 400 and resp.status_code != 416:
        resp.close()
        raise BuilderError(f"download failed: HTTP {resp.status_code} for {url}")
    return resp


def parse_sha256sums(text: str, name: str) -> str | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == name:
            return parts[0].lower()
    return None


def fetch_sums(src: IsoSource, dest: Path, session: requests.Session, keyring: Path | None) -> str:
    """Download SHA256SUMS (and verify SHA256SUMS.gpg with gpgv if a keyring is given)."""
    resp = _get(session, src.sha256sums_url)
    sums = resp.content
    (dest / "SHA256SUMS").write_bytes(sums)
    if keyring is not None:
        gpgv = require_tool("gpgv", "gpgv")
        sig = _get(session, src.sha256sums_url + ".gpg").content
        (dest / "SHA256SUMS.gpg").write_bytes(sig)
        proc = run([gpgv, "--keyring", keyring.resolve(), dest / "SHA256SUMS.gpg", dest / "SHA256SUMS"],
                   check=False)
        if proc.returncode != 0:
            raise BuilderError(
                f"the GPG signature of {src.sha256sums_url} does not verify with {keyring}",
                hint=proc.stderr.decode(errors="replace").strip()[-500:],
            )
        log.info("SHA256SUMS signature: good (%s)", keyring)
    listed = parse_sha256sums(sums.decode(errors="replace"), src.name)
    if listed is None:
        raise BuilderError(f"{src.name} is not listed in {src.sha256sums_url}")
    if listed != src.sha256:
        raise BuilderError(
            f"the host model pins sha256 {src.sha256} for {src.name}, but SHA256SUMS says {listed}",
            hint="check os.iso in the host model (a new point release?)",
        )
    return listed


class Progress:
    """A one-line progress bar on a terminal, a log line every 10 % otherwise."""

    def __init__(self, total: int | None, done: int, label: str) -> None:
        self.total, self.done, self.label = total, done, label
        self.tty = sys.stderr.isatty()
        self.last_pct = -10
        self.started, self.start_bytes = time.monotonic(), done

    def add(self, n: int) -> None:
        self.done += n
        pct = int(self.done * 100 / self.total) if self.total else 0
        mib = self.done / (1 << 20)
        rate = (self.done - self.start_bytes) / max(time.monotonic() - self.started, 1e-3) / (1 << 20)
        total = f"/{self.total / (1 << 20):.0f}" if self.total else ""
        if self.tty:
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {mib:.0f}{total} MiB {pct}% {rate:.1f} MiB/s")
        elif pct >= self.last_pct + 10:
            self.last_pct = pct - pct % 10
            log.info("%s: %.0f%s MiB (%d%%)", self.label, mib, total, pct)

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _hash_prefix(part: Path, size: int) -> hashlib._Hash:
    h = hashlib.sha256()
    with open(part, "rb") as f:
        while size > 0 and (chunk := f.read(min(CHUNK, size))):
            h.update(chunk)
            size -= len(chunk)
    return h


def download(url: str, part: Path, session: requests.Session, label: str) -> str:
    """Stream `url` into `part`, resuming from its current size; raise if cut short; return its sha256.

    The bytes are hashed as they arrive (a resumed part's existing bytes are read once first), so
    the downloaded ISO is not read back for its checksum.
    """
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    resp = _get(session, url, headers=headers, stream=True)
    with resp:
        if resp.status_code == 416:  # nothing left to fetch: the part is already complete
            return _hash_prefix(part, have).hexdigest()
        if resp.status_code == 206:
            total = int(resp.headers.get("Content-Range", "*/0").rsplit("/", 1)[1] or 0) or None
            mode = "ab"
            log.info("resuming %s at %d bytes", label, have)
            h = _hash_prefix(part, have)
        else:
            have, mode = 0, "wb"
            total = int(resp.headers["Content-Length"]) if "Content-Length" in resp.headers else None
            h = hashlib.sha256()
        progress = Progress(total, have, label)
        try:
            with open(part, mode) as f:
                for chunk in resp.iter_content(CHUNK):
                    f.write(chunk)
                    h.update(chunk)
                    progress.add(len(chunk))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise BuilderError(
                f"download of {url} was interrupted at {progress.done} bytes ({exc.__class__.__name__})",
                hint=f"run the same command again to resume from {part}",
            ) from exc
        finally:
            progress.close()
    got = part.stat().st_size
    if total is not None and got != total:
        raise BuilderError(
            f"download of {url} was interrupted: {got} of {total} bytes",
            hint=f"run the same command again to resume from {part}",
        )
    return h.hexdigest()


def acquire_base(src: IsoSource, cache: Path | None = None, keyring: Path | None = None,
                 session: requests.Session | None = None) -> Path:
    """Return the path of a verified copy of the model's ISO, downloading it when needed."""
    cache = cache or cache_dir()
    folder = cache / "iso"
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / src.name, folder / (src.name + ".part")
    session = session or requests.Session()
    if final.exists():
        got = cached_sha256(final, cache)
        if got == src.sha256:
            log.info("base ISO from cache: %s (sha256 ok)", final)
            return final
        aside = final.with_name(final.name + f".sha256-{got[:12]}.mismatch")
        os.replace(final, aside)
        raise BuilderError(
            f"cached {final} has sha256 {got}, the model pins {src.sha256}; moved it to {aside}",
            hint="run again to download a fresh copy, or pass --base PATH",
        )
    fetch_sums(src, folder, session, keyring)
    got = download(src.url, part, session, src.name)
    if got != src.sha256:
        bad = part.with_name(src.name + ".corrupt")
        os.replace(part, bad)
        raise BuilderError(
            f"downloaded {src.name} has sha256 {got}, expected {src.sha256} (model and SHA256SUMS); "
            f"kept it as {bad} for inspection",
            hint="delete it and run again; if it repeats, the mirror or the pin is wrong",
        )
    os.replace(part, final)
    remember_sha256(final, got, cache)  # the next build does not read it again
    log.info("base ISO downloaded and verified: %s", final)
    return final


def check_given_base(path: Path, src: IsoSource | None, cache: Path | None = None) -> str:
    """A --base file: must exist; its sha256 is returned (and compared to the pin when given).

    The sha256 is remembered in the build cache (`cache`, default `cache_dir()`) while the file is
    unchanged, so checking the same base again costs a stat, not a read of the whole ISO.
    """
    if not path.is_file():
        raise BuilderError(f"base ISO not found: {path}")
    got = cached_sha256(path, cache or cache_dir())
    if src is not None and got != src.sha256:
        raise BuilderError(
            f"--base {path} has sha256 {got}, but the host model pins {src.sha256} for {src.name}",
            hint="pass the ISO the model names, update os.iso.sha256, or add --no-pin-check",
        )
    return got
