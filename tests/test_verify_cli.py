"""`builder verify` wiring without a VM: arguments, errors, and adapting a given seed folder."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from builder.cli import main
from builder.errors import BuilderError
from builder.model import load_model
from builder.verify.session import adapt_seed, image_from_file

MODEL = load_model(None)


def test_verify_is_registered() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--help"])
    assert exc.value.code == 0


def test_missing_image_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["verify", "--image", str(tmp_path / "nope.img"), "--out", str(tmp_path / "out")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "stand-in image incomplete" in err and "builder standin image" in err
    assert not list((tmp_path / "out" / "prometheus").glob(".verify-work-*"))


def test_image_from_file_finds_kernel_and_initrd(tmp_path: Path) -> None:
    for name in ("disk.img", "disk.vmlinuz", "disk.initrd"):
        (tmp_path / name).write_bytes(b"x")
    img = image_from_file(tmp_path / "disk.img")
    assert img.kernel == tmp_path / "disk.vmlinuz" and img.initrd == tmp_path / "disk.initrd"
    with pytest.raises(BuilderError):
        image_from_file(tmp_path / "other.img")


def test_adapt_seed_changes_only_the_test_overrides(tmp_path: Path) -> None:
    docker_key = MODEL.resolve(MODEL.apt.docker.key_file).read_text()
    src = tmp_path / "artifacts" / "prometheus" / "first-boot"
    src.mkdir(parents=True)
    user_data = {
        "hostname": "prometheus",
        "users": [{"name": "ops", "ssh_authorized_keys": list(MODEL.users[0].ssh_authorized_keys)}],
        "write_files": [{"path": "/etc/apt/keyrings/docker.asc", "content": docker_key}],
        "apt": {"sources": {"docker.list": {"source": f"deb [signed-by=/k] {MODEL.apt.docker.url} noble stable"}}},
        "mounts": [[f"{MODEL.nfs.server}:/appdata", "/mnt/atlas/appdata", "nfs4", "hard,rw", "0", "0"]],
    }
    (src / "user-data").write_text("#cloud-config\n" + yaml.safe_dump(user_data))
    (src / "meta-data").write_text("instance-id: x\n")
    test_key = tmp_path / "test-docker.asc"
    test_key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\nTEST\n-----END PGP PUBLIC KEY BLOCK-----\n")
    nvidia_key = tmp_path / "test-nvidia.asc"
    nvidia_key.write_text("NVKEY\n")
    apt = SimpleNamespace(
        docker=SimpleNamespace(url="http://10.60.0.10/docker", key_file=str(test_key)),
        nvidia=SimpleNamespace(url="http://10.60.0.10/nvidia", key_file=str(nvidia_key)),
        ubuntu_mirror="http://10.60.0.10/ubuntu", ubuntu_security_mirror="http://10.60.0.10/ubuntu")
    tmodel = SimpleNamespace(apt=apt, nfs=SimpleNamespace(server="10.60.0.10"))
    dest = adapt_seed(src.parent, MODEL, tmodel, "ssh-ed25519 AAAAtest ephemeral", tmp_path / "seed")
    text = (dest / "user-data").read_text()
    assert text.startswith("#cloud-config\n")
    out = yaml.safe_load(text)
    assert out["hostname"] == "prometheus"
    assert out["users"][0]["ssh_authorized_keys"][-1] == "ssh-ed25519 AAAAtest ephemeral"
    assert "TEST" in out["write_files"][0]["content"] and "BEGIN PGP" in out["write_files"][0]["content"]
    assert "http://10.60.0.10/docker noble stable" in out["apt"]["sources"]["docker.list"]["source"]
    assert out["mounts"][0][0] == "10.60.0.10:/appdata"
    assert (dest / "meta-data").read_text() == "instance-id: x\n"


def test_bad_seed_or_image_fails_before_writing(tmp_path: Path, capsys) -> None:
    from builder.cli import main

    out = tmp_path / "out"
    assert main(["verify", "--seed", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no user-data in" in capsys.readouterr().err
    assert main(["verify", "--image", str(tmp_path / "missing.img"), "--out", str(out)]) == 2
    assert "stand-in image incomplete" in capsys.readouterr().err
    assert not out.exists()
