"""Base ISO download against a real local HTTP server: resume, checksums, signature, failures."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from builder.errors import BuilderError
from builder.media.fetch import IsoSource, acquire_base, parse_sha256sums
from builder.media.serve import serving
from tests.gpgagent import agents_for, stop_agents

NAME = "ubuntu-24.04.3-live-server-amd64.iso"
DATA = os.urandom(3 << 20)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    d = tmp_path / "mirror"
    d.mkdir()
    (d / NAME).write_bytes(DATA)
    (d / "SHA256SUMS").write_text(f"{'0' * 64} *other.iso\n{SHA} *{NAME}\n")
    return d


@contextlib.contextmanager
def served(directory: Path) -> Iterator[str]:
    with serving(directory) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def source(base_url: str, sha: str = SHA) -> IsoSource:
    return IsoSource(NAME, f"{base_url}/{NAME}", sha, f"{base_url}/SHA256SUMS")


def no_iso_named_file(cache: Path) -> bool:
    return not (cache / "iso" / NAME).exists()


def test_parse_sha256sums() -> None:
    assert parse_sha256sums(f"{SHA} *{NAME}\n", NAME) == SHA
    assert parse_sha256sums(f"{SHA}  {NAME}\n", NAME) == SHA
    assert parse_sha256sums(f"{SHA}  x.iso\n", NAME) is None


def test_download_verify_and_cache(mirror: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    with served(mirror) as url:
        path = acquire_base(source(url), cache)
    assert path == cache / "iso" / NAME and path.read_bytes() == DATA
    assert not (cache / "iso" / (NAME + ".part")).exists()
    with caplog.at_level("INFO"):  # the server is gone: the cached copy is used
        assert acquire_base(source("http://127.0.0.1:9"), cache) == path
    assert "from cache" in caplog.text


def test_resume_partial_download(mirror: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    (cache / "iso").mkdir(parents=True)
    (cache / "iso" / (NAME + ".part")).write_bytes(DATA[: 1 << 20])
    with served(mirror) as url, caplog.at_level("INFO"):
        path = acquire_base(source(url), cache)
    assert path.read_bytes() == DATA
    assert f"resuming {NAME} at {1 << 20} bytes" in caplog.text


class CutHandler(BaseHTTPRequestHandler):
    """Promises the whole file, sends a third, then drops the connection."""

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.endswith("SHA256SUMS"):
            body = f"{SHA} *{NAME}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(DATA)))
        self.end_headers()
        self.wfile.write(DATA[: len(DATA) // 3])
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args: object) -> None:
        pass


def test_interrupted_download_keeps_part_and_resumes(mirror: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    server = ThreadingHTTPServer(("127.0.0.1", 0), CutHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(BuilderError, match="interrupted") as exc:
            acquire_base(source(f"http://127.0.0.1:{server.server_address[1]}"), cache)
    finally:
        server.shutdown()
        server.server_close()
    assert "resume" in (exc.value.hint or "")
    part = cache / "iso" / (NAME + ".part")
    assert part.exists() and part.stat().st_size < len(DATA)
    assert no_iso_named_file(cache)
    with served(mirror) as url:
        assert acquire_base(source(url), cache).read_bytes() == DATA


def test_model_pin_disagrees_with_sha256sums(mirror: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with served(mirror) as url, pytest.raises(BuilderError, match="pins sha256"):
        acquire_base(source(url, sha="f" * 64), cache)
    assert no_iso_named_file(cache) and not (cache / "iso" / (NAME + ".part")).exists()


def test_corrupt_download_is_not_named_like_the_iso(mirror: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (mirror / NAME).write_bytes(DATA[:-1] + b"\x00")  # the mirror serves damaged bytes
    with served(mirror) as url, pytest.raises(BuilderError, match="expected") as exc:
        acquire_base(source(url), cache)
    assert no_iso_named_file(cache)
    assert (cache / "iso" / (NAME + ".corrupt")).exists()
    assert "kept it as" in exc.value.message


def test_cached_copy_with_wrong_hash_is_moved_aside(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "iso").mkdir(parents=True)
    (cache / "iso" / NAME).write_bytes(b"not the iso")
    with pytest.raises(BuilderError, match="moved it to"):
        acquire_base(source("http://127.0.0.1:9"), cache)
    assert no_iso_named_file(cache)
    assert [p.read_bytes() for p in (cache / "iso").glob("*.mismatch")] == [b"not the iso"]


def test_offline_says_so_and_suggests_base(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nothing listens
    with pytest.raises(BuilderError, match="offline") as exc:
        acquire_base(source(f"http://127.0.0.1:{port}"), tmp_path / "cache")
    assert "--base" in (exc.value.hint or "")


@pytest.fixture
def gnupghome(tmp_path: Path) -> Iterator[Path]:
    """A throwaway GNUPGHOME whose gpg-agent is stopped at the end, and checked to be gone."""
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    try:
        yield home
    finally:
        stop_agents(home)
    assert agents_for(home) == [], f"gpg-agent for {home} is still running"


@pytest.mark.skipif(shutil.which("gpg") is None or shutil.which("gpgv") is None, reason="gnupg/gpgv not installed")
def test_signature_checked_with_gpgv(mirror: Path, tmp_path: Path, gnupghome: Path) -> None:
    home = gnupghome
    env = {**os.environ, "GNUPGHOME": str(home)}
    gpg = ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "CD Image Signing (test) <t@example.invalid>", "ed25519", "sign",
                    "never"], env=env, check=True, capture_output=True)
    keyring = tmp_path / "keyring.gpg"
    keyring.write_bytes(subprocess.run(["gpg", "--batch", "--export"], env=env, check=True,
                                       capture_output=True).stdout)
    subprocess.run([*gpg, "--detach-sign", "-o", str(mirror / "SHA256SUMS.gpg"), str(mirror / "SHA256SUMS")],
                   env=env, check=True, capture_output=True)
    with served(mirror) as url:
        assert acquire_base(source(url), tmp_path / "good", keyring=keyring).read_bytes() == DATA
        (mirror / "SHA256SUMS").write_text(f"{SHA} *{NAME}\n")  # changed after signing
        with pytest.raises(BuilderError, match="signature"):
            acquire_base(source(url), tmp_path / "bad", keyring=keyring)
    assert no_iso_named_file(tmp_path / "bad")
