"""The throwaway signing keys of the stand-in APT repositories leave no gpg-agent behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.testbed.gpgkeys import make_key
from tests.gpgagent import agents_for, stop_agents


@pytest.mark.skipif(shutil.which("gpg") is None or shutil.which("gpgconf") is None, reason="gnupg not installed")
def test_make_key_and_signing_stop_their_agent(tmp_path: Path) -> None:
    key = make_key(tmp_path / "key", "Builder test key (test only) <t@invalid>")
    try:
        assert agents_for(key.gnupghome) == []
        release = tmp_path / "Release"
        release.write_text("Origin: test\n")
        key.sign_release(release)
        assert (tmp_path / "InRelease").read_text().startswith("-----BEGIN PGP SIGNED MESSAGE-----")
        assert agents_for(key.gnupghome) == []
    finally:
        stop_agents(key.gnupghome)  # so that a failure above does not leave one either
