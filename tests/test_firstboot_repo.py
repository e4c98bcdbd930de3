"""The stand-in APT repositories: signed, laid out like the real ones, resolved by real apt (no VM)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder.media.serve import serving
from builder.testbed.aptrepo import build_repos
from builder.testbed.gpgkeys import make_key

TOOLS = ("gpg", "gpgv", "dpkg-deb", "apt-ftparchive", "apt-get")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    for t in TOOLS:
        if shutil.which(t) is None:
            pytest.skip(f"tool '{t}' not installed")
    d = tmp_path_factory.mktemp("repo")
    keys = {n: make_key(d / f"key-{n}", f"test {n} <{n}@invalid>") for n in ("archive", "docker", "nvidia")}
    build_repos(d / "http", archive=keys["archive"], docker=keys["docker"], nvidia=keys["nvidia"],
                sde=1769126400)
    with serving(d / "http", access_log=d / "access.log") as http:
        yield d, keys, http


def test_release_files_are_signed(repo):
    d, keys, _ = repo
    for rel, key in (("ubuntu/dists/noble-updates", "archive"), ("docker/linux/ubuntu/dists/noble", "docker"),
                     ("nvidia/stable/deb/amd64", "nvidia")):
        keyring = d / f"{key}.gpg"
        subprocess.run(["gpg", "--batch", "--dearmor", "-o", keyring, keys[key].public_asc], check=True)
        proc = subprocess.run(["gpgv", "--keyring", keyring, d / "http" / rel / "InRelease"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def _apt(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    opts = [
        f"-oDir={root}", f"-oDir::State::status={root}/status", "-oDir::Etc::sourceparts=-",
        f"-oDir::Etc::sourcelist={root}/sources.list", f"-oDir::Etc::TrustedParts={root}/trusted.gpg.d",
        f"-oDir::Etc::preferencesparts={root}/preferences.d", "-oAPT::Architecture=amd64",
        "-oAPT::Architectures::=amd64", "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root",
        "-oAcquire::Languages=none",
    ]
    return subprocess.run(["apt-get", *opts, *args], capture_output=True, text=True, timeout=120)


def test_real_apt_resolves_signed_by_pins_and_newest(repo, tmp_path):
    d, keys, http = repo
    root = tmp_path / "aptroot"
    for sub in ("trusted.gpg.d", "preferences.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
        (root / sub).mkdir(parents=True)
    (root / "status").write_text("")
    shutil.copy(keys["archive"].public_asc, root / "trusted.gpg.d" / "archive.asc")  # like ubuntu-keyring
    base = f"http://127.0.0.1:{http.server_address[1]}"
    (root / "sources.list").write_text(
        f"deb {base}/ubuntu noble main restricted\n"
        f"deb {base}/ubuntu noble-updates main restricted\n"
        f"deb [signed-by={keys['docker'].public_asc}] {base}/docker/linux/ubuntu noble stable\n"
        f"deb [signed-by={keys['nvidia'].public_asc}] {base}/nvidia/stable/deb/amd64 /\n"
    )
    (root / "preferences.d" / "pin").write_text(
        "Package: nvidia-driver-550-server\nPin: version 550.127.05-0ubuntu0.24.04.1\nPin-Priority: 1001\n")
    upd = _apt(root, "update")
    assert upd.returncode == 0 and "W:" not in upd.stdout + upd.stderr, upd.stdout + upd.stderr
    sim = _apt(root, "install", "-s", "nvidia-driver-550-server", "nvidia-container-toolkit=1.17.8-1",
               "docker-ce", "docker-ce-cli", "containerd.io", "docker-buildx-plugin", "docker-compose-plugin")
    assert sim.returncode == 0, sim.stdout + sim.stderr
    out = sim.stdout
    assert "Inst nvidia-driver-550-server (550.127.05-0ubuntu0.24.04.1" in out  # pinned, not newest
    assert "Inst nvidia-container-toolkit (1.17.8-1" in out
    assert "Inst docker-ce (5:28.1.1-1~ubuntu.24.04~noble" in out  # newest when unpinned
    # Without signed-by the vendor repositories are not trusted.
    (root / "sources.list").write_text(f"deb {base}/docker/linux/ubuntu noble stable\n")
    bad = _apt(root, "update")
    assert "NO_PUBKEY" in bad.stdout + bad.stderr or "not signed" in bad.stdout + bad.stderr
