"""Throwaway OpenPGP keys for the stand-in APT repositories (never real vendor keys)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from builder.errors import BuilderError
from builder.run import require_tool, run
from builder.store import cache_lock


def cache_root() -> Path:
    """`${BUILDER_CACHE:-~/.cache/prometheus-builder}`."""
    env = os.environ.get("BUILDER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prometheus-builder"


@dataclass(frozen=True)
class SigningKey:
    gnupghome: Path
    fingerprint: str
    public_asc: Path  # armored public key, usable as an apt `signed-by` file

    def _env(self) -> dict[str, str]:
        return gnupg_env(self.gnupghome)

    def sign_release(self, release: Path) -> None:
        """Write InRelease (clearsigned) and Release.gpg (detached) beside `release`.

        One signer per key at a time: the key's home is shared by every process using the cache (two test
        workers start harness repositories at once), and each signer stops the home's gpg-agent when done,
        which would kill a signature another process is making with it."""
        gpg = require_tool("gpg", "gnupg")
        base = [gpg, "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
                "--local-user", self.fingerprint, "--digest-algo", "SHA512"]
        with cache_lock(self.gnupghome.parent, f"sign-{self.gnupghome.name}"):
            try:
                run([*base, "--clearsign", "-o", release.with_name("InRelease"), release], env=self._env())
                run([*base, "--armor", "--detach-sign", "-o", release.with_name("Release.gpg"), release],
                    env=self._env())
            finally:
                stop_agent(self.gnupghome)


def gnupg_env(home: Path) -> dict[str, str]:
    """GNUPGHOME for gpg. The agent's socket lives in the home folder and a socket path may not exceed
    ~107 bytes: a deep home (a test's BUILDER_CACHE) is reached through a short symlink in /tmp."""
    home = Path(home).absolute()
    if len(str(home)) <= 60:
        return {"GNUPGHOME": str(home)}
    import hashlib
    import tempfile

    link = Path(tempfile.gettempdir()) / f"builder-gnupg-{hashlib.sha256(str(home).encode()).hexdigest()[:12]}"
    if not (link.is_symlink() and Path(os.readlink(link)) == home):
        link.unlink(missing_ok=True)
        link.symlink_to(home, target_is_directory=True)
    return {"GNUPGHOME": str(link)}


def stop_agent(gnupghome: Path) -> None:
    """Stop the gpg-agent of `gnupghome` and wait until it is gone (it exits asynchronously)."""
    gpgconf = shutil.which("gpgconf")
    if gpgconf:
        with contextlib.suppress(BuilderError):
            run([gpgconf, "--kill", "all"], env=gnupg_env(gnupghome), check=False, timeout=20)
    for sig in (0, signal.SIGTERM):
        if sig:
            for pid in agent_pids(gnupghome):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while agent_pids(gnupghome) and time.monotonic() < deadline:
            time.sleep(0.1)


def running_agents() -> dict[int, Path]:
    """Live gpg-agent processes (zombies excluded) -> the GNUPGHOME each serves (its `--homedir`, resolved)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):  # gone meanwhile, or not ours to read
            continue
        if state == "Z" or not argv or os.path.basename(argv[0]) != b"gpg-agent":
            continue
        homes = [os.fsdecode(b) for a, b in zip(argv, argv[1:], strict=False) if a == b"--homedir"]
        if homes:
            found[int(entry.name)] = Path(homes[0]).resolve()
    return found


def agent_pids(gnupghome: Path) -> list[int]:
    """Live gpg-agent processes serving `gnupghome`."""
    want = Path(gnupghome).resolve()
    return sorted(pid for pid, home in running_agents().items() if home == want)


def make_key(directory: Path, uid: str) -> SigningKey:
    """Create (or reuse) an ed25519 signing key in `directory`."""
    with cache_lock(directory.parent, f"key-{directory.name}"):
        return _make_key(directory, uid)


def _make_key(directory: Path, uid: str) -> SigningKey:
    gpg = require_tool("gpg", "gnupg")
    home = directory / "gnupg"
    asc = directory / "public.asc"
    fpr_file = directory / "fingerprint"
    if asc.exists() and fpr_file.exists() and home.is_dir():
        return SigningKey(home, fpr_file.read_text().strip(), asc)
    shutil.rmtree(directory, ignore_errors=True)
    home.mkdir(parents=True, mode=0o700)
    env = gnupg_env(home)
    try:
        run([gpg, "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
             "--quick-gen-key", uid, "ed25519", "sign", "never"], env=env, timeout=60)
        out = run([gpg, "--batch", "--with-colons", "--list-keys", uid], env=env).stdout.decode()
        fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        pub = run([gpg, "--batch", "--armor", "--export", fpr], env=env).stdout
    finally:
        stop_agent(home)
    asc.write_bytes(pub)
    fpr_file.write_text(fpr + "\n")
    return SigningKey(home, fpr, asc)


def archive_key() -> SigningKey:
    """The stand-in "Ubuntu archive" key: cached, and trusted by the stand-in image.

    It plays the role of ubuntu-keyring on a real Ubuntu install: the Ubuntu mirror needs no
    `signed-by`, so the image must trust it out of the box. Docker and NVIDIA get their own keys.
    """
    return make_key(cache_root() / "firstboot" / "archive-key",
                    "Builder STANDIN Ubuntu archive key (test only) <standin-archive@invalid>")
