"""The stand-in APT repositories: signed, laid out like the real ones, resolved by real apt (no VM)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder.media.serve import serving
from builder.model import load_model
from builder.seed.packages import package_plan
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
    plan = package_plan(load_model())  # the rendered pins: families at one version, driver on its own
    (root / "preferences.d" / "90-prometheus-pins").write_text(plan.apt_preferences)
    upd = _apt(root, "update")
    assert upd.returncode == 0 and "W:" not in upd.stdout + upd.stderr, upd.stdout + upd.stderr
    sim = _apt(root, "install", "-s", *[p.apt_arg for p in plan.first_boot])
    assert sim.returncode == 0, sim.stdout + sim.stderr
    out = sim.stdout
    assert "Inst nvidia-container-toolkit-base (1.18.2-1" in out
    assert "Inst docker-ce (5:28.1.1-1~ubuntu.24.04~noble" in out  # newest when unpinned
    drv = _apt(root, "install", "-s", *[p.apt_arg for p in plan.driver])
    assert drv.returncode == 0, drv.stdout + drv.stderr
    # Pinned, not newest: the family pin holds the siblings at the model's version too.
    assert "Inst nvidia-kernel-common-580-server (580.178.04-0ubuntu0.24.04.1" in drv.stdout
    assert "Inst nvidia-headless-no-dkms-580-server (580.178.04-0ubuntu0.24.04.1" in drv.stdout
    # The toolkit pinned alone (today's render) cannot resolve: its -base sibling would be the newest.
    alone = _apt(root, "install", "-s", "nvidia-container-toolkit=1.17.8-1")
    assert "Depends: nvidia-container-toolkit-base (= 1.17.8-1) but 1.18.2-1 is to be installed" in alone.stdout
    # Without signed-by the vendor repositories are not trusted.
    (root / "sources.list").write_text(f"deb {base}/docker/linux/ubuntu noble stable\n")
    bad = _apt(root, "update")
    assert "NO_PUBKEY" in bad.stdout + bad.stderr or "not signed" in bad.stdout + bad.stderr
