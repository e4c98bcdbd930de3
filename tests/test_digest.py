"""One pass over big files: the piped writer's hash and failures, and the input-hash cache."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

import builder.media.digest as digest
from builder.errors import BuilderError
from builder.media.digest import HASH_CACHE, cached_sha256, write_hashed
from builder.media.fetch import check_given_base
from builder.run import PIPE_FD, run_piped

# A command that writes 9 MiB of patterned bytes to a given descriptor (or stdout) and chatters on stderr.
WRITER = (
    "import os, sys\n"
    "fd = int(sys.argv[1]) if len(sys.argv) > 1 else 1\n"
    "block = bytes(range(256)) * 4096\n"
    "sys.stderr.write('x' * 200000)\n"  # more than a pipe holds: must not block
    "for i in range(9):\n"
    "    os.write(fd, block[i:] + block[:i])\n"
)
EXPECTED = b"".join((bytes(range(256)) * 4096)[i:] + (bytes(range(256)) * 4096)[:i] for i in range(9))


@pytest.mark.parametrize("via", ["fd", "stdout"])
def test_write_hashed_writes_and_hashes_in_one_pass(via: str, tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    cmd = [sys.executable, "-c", WRITER, *([PIPE_FD] if via == "fd" else [])]
    old = os.umask(0o077)
    try:
        w = write_hashed(cmd, out, mode=0o640)
    finally:
        os.umask(old)
    assert out.read_bytes() == EXPECTED
    assert (w.size, w.sha256) == (len(EXPECTED), hashlib.sha256(EXPECTED).hexdigest())
    assert out.stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("where", ["disk", "tmpfs", "no-direct"])
def test_unaligned_tail_and_file_systems_without_o_direct(where: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """O_DIRECT while chunks are aligned, ordinary writes for a ragged tail or where it is refused."""
    folder = tmp_path
    if where == "tmpfs":
        if not Path("/dev/shm").is_dir():
            pytest.skip("no /dev/shm")
        folder = Path(tempfile.mkdtemp(dir="/dev/shm"))
    if where == "no-direct":
        real_open = os.open

        def refuse_direct(path: str, flags: int, mode: int = 0o777) -> int:
            if flags & getattr(os, "O_DIRECT", 0):
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, mode)

        monkeypatch.setattr(digest.os, "open", refuse_direct)
    data = os.urandom((9 << 20) + 1000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    out = folder / "out.bin"
    try:
        w = write_hashed(["cat", src], out)
        assert out.read_bytes() == data and w.sha256 == hashlib.sha256(data).hexdigest()
    finally:
        if where == "tmpfs":
            shutil.rmtree(folder)


def test_write_hashed_refuses_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        write_hashed([sys.executable, "-c", WRITER], out)
    assert out.read_bytes() == b"keep"


def test_failing_command_raises_with_its_messages(tmp_path: Path) -> None:
    cmd = [sys.executable, "-c", "import sys; sys.stdout.write('partial'); sys.stderr.write('boom'); sys.exit(3)"]
    with pytest.raises(BuilderError) as exc:
        run_piped(cmd, sink=lambda _: None)
    assert "exit code 3" in exc.value.message and exc.value.message.endswith("boom")


def test_timeout_kills_the_command() -> None:
    started = time.monotonic()
    with pytest.raises(BuilderError, match=r"timed out after 0\.5s"):
        run_piped([sys.executable, "-c", "import time; time.sleep(30)"], sink=lambda _: None, timeout=0.5)
    assert time.monotonic() - started < 10


def test_sink_error_stops_the_command(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    cmd = [sys.executable, "-c", f"import os; open({str(pidfile)!r}, 'w').write(str(os.getpid()))\n"
           "while True: os.write(1, b'x' * 65536)"]

    def sink(_: memoryview) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        run_piped(cmd, sink=sink)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not left running


def test_cached_sha256_reads_an_unchanged_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest, "CACHE_MIN_SIZE", 0)
    cache, f = tmp_path / "cache", tmp_path / "base.iso"
    f.write_bytes(b"a" * 5000)
    reads: list[Path] = []
    real = digest.sha256_file

    def counting(p: Path) -> str:
        reads.append(p)
        return real(p)

    monkeypatch.setattr(digest, "sha256_file", counting)
    want = hashlib.sha256(b"a" * 5000).hexdigest()
    assert cached_sha256(f, cache) == want
    assert cached_sha256(f, cache) == want
    assert check_given_base(f, None, cache) == want
    assert reads == [f.resolve()]
    # Same size, old mtime put back: ctime still tells that it changed.
    st = f.stat()
    f.write_bytes(b"b" * 5000)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cached_sha256(f, cache) == hashlib.sha256(b"b" * 5000).hexdigest()
    assert len(reads) == 2


def test_small_files_are_not_cached(tmp_path: Path) -> None:
    f = tmp_path / "small"
    f.write_bytes(b"s" * 100)
    assert cached_sha256(f, tmp_path / "cache") == hashlib.sha256(b"s" * 100).hexdigest()
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(shutil.which("xorriso") is None, reason="xorriso not installed")
def test_remastered_iso_is_never_read_back(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`builder iso` hashes the ISO as it is written and remembers it: Packer's iso_checksum and the
    build summary (cached_sha256) then get it without reading the file."""
    from builder.cli import main
    from builder.media.fetch import cache_dir
    from builder.testbed.standin_iso import cached_standin_iso

    base = cached_standin_iso(cache_dir())
    monkeypatch.setenv("BUILDER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(digest, "CACHE_MIN_SIZE", 0)
    reads: list[Path] = []
    real = digest.sha256_file

    def counting(p: Path) -> str:
        reads.append(p)
        return real(p)

    monkeypatch.setattr(digest, "sha256_file", counting)
    out = tmp_path / "out"
    assert main(["iso", "--host", str(model_dir / "prometheus.yaml"), "--base", str(base), "--out", str(out),
                 "--allow-standin"]) == 0
    iso = out / "prometheus" / "prometheus-autoinstall.iso"
    assert reads == [base.resolve()]  # the base, once, for the pin check
    digest_line = (iso.parent / (iso.name + ".sha256")).read_text().split()[0]
    assert cached_sha256(iso, tmp_path / "cache") == digest_line == hashlib.sha256(iso.read_bytes()).hexdigest()
    assert reads == [base.resolve()]


def test_broken_or_unwritable_cache_only_costs_a_rehash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest, "CACHE_MIN_SIZE", 0)
    f = tmp_path / "base.iso"
    f.write_bytes(b"z")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / HASH_CACHE).write_text("{not json")
    assert cached_sha256(f, cache) == hashlib.sha256(b"z").hexdigest()
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    assert cached_sha256(f, blocked) == hashlib.sha256(b"z").hexdigest()
