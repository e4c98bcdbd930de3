"""The disk target and the offline stand-in chain without a VM: input errors (exit 2, nothing written) and
which base ISO gets the harness model."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.cli import main
from builder.model import load_model
from builder.pipeline import BaseIso, apply_standin_chain, make_context
from builder.verify.disk import disk_args, find_images

needs_tools = pytest.mark.skipif(any(shutil.which(t) is None for t in ("xorriso", "qemu-img", "ssh-keygen", "gpg")),
                                 reason="needs xorriso, qemu-img, ssh-keygen, gpg")


def _iso(tmp: Path, info: str) -> Path:
    tree = tmp / "tree"
    (tree / ".disk").mkdir(parents=True)
    (tree / ".disk" / "info").write_text(info)
    out = tmp / "base.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-r", "-o", str(out), str(tree)], check=True)
    return out


def _keypair(tmp: Path, name: str = "id") -> Path:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key


def _disks(tmp: Path, *, scratch: bool = True) -> Path:
    images = tmp / "images"
    images.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "prometheus"), "64M"], check=True)
    if scratch:
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(images / "prometheus-1"), "16M"], check=True)
    return images / "prometheus"


@needs_tools
def test_a_standin_base_gets_the_harness_model_and_a_kept_login_key(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ctx = make_context(None, tmp_path / "out")
    said: list[str] = []
    base = BaseIso(_iso(tmp_path, 'Ubuntu-Server 24.04 STANDIN test\n'), allow_standin=True)
    chained = apply_standin_chain(ctx, base,
                                  say=said.append)
    assert chained.chain is not None and said == [f"builder: {chained.chain.note()}"]
    assert said[0].startswith("builder: stand-in chain: test overrides applied")
    model = chained.model
    assert model.nfs.server == chained.chain.service_address != ctx.model.nfs.server
    assert model.apt.docker.url.startswith(f"http://{chained.chain.service_address}/")
    assert chained.chain.public_key in model.admin.ssh_authorized_keys
    assert chained.chain.public_key not in ctx.model.admin.ssh_authorized_keys
    assert chained.chain.identity.stat().st_mode & 0o777 == 0o600
    assert chained.chain.identity.parent == tmp_path / "out" / "prometheus" / "standin-chain"
    # the seed the iso stage embeds is the harness one: NFS server, repository, the extra key
    user_data = chained.seed["autoinstall/user-data"].decode()
    assert f"{chained.chain.service_address}:" in user_data and chained.chain.public_key in user_data
    assert chained.chain.public_key not in ctx.seed["autoinstall/user-data"].decode()
    # deterministic: a second build reuses the key and renders the same seed
    again = apply_standin_chain(ctx, BaseIso(_iso(tmp_path / "2", "STANDIN\n"), allow_standin=True), say=said.append)
    assert again.seed == chained.seed


@needs_tools
def test_a_real_iso_or_no_allow_standin_is_left_alone(tmp_path: Path) -> None:
    ctx = make_context(None, tmp_path / "out")
    real = _iso(tmp_path, 'Ubuntu-Server 24.04.3 LTS "Noble Numbat" - Release amd64\n')
    assert apply_standin_chain(ctx, BaseIso(real, allow_standin=True), say=pytest.fail) is ctx
    assert apply_standin_chain(ctx, BaseIso(None, allow_standin=True), say=pytest.fail) is ctx
    assert apply_standin_chain(ctx, BaseIso(_iso(tmp_path / "s", "STANDIN\n")), say=pytest.fail) is ctx
    assert not (tmp_path / "out" / "prometheus" / "standin-chain").exists()


@needs_tools
def test_disk_images_are_found_with_their_formats_and_presented_on_the_modelled_buses(tmp_path: Path) -> None:
    model = load_model()
    images = find_images(model, _disks(tmp_path))
    assert (images.os_format, images.scratch_format) == ("qcow2", "raw")
    assert images.scratch == tmp_path / "images" / "prometheus-1"
    args = " ".join(disk_args(model, tmp_path / "os.qcow2", tmp_path / "sc.qcow2"))
    assert "ide-hd,bus=ahci0.0,serial=S6PNNX0T000001,drive=osdisk,bootindex=1" in args  # sata OS disk, boot disk
    assert "nvme,serial=S64ANS0T000001,drive=scratch" in args
    assert "-kernel" not in args


@needs_tools
@pytest.mark.parametrize("case", ["no-identity", "missing-disk", "no-scratch", "foreign-key"])
def test_disk_target_input_errors_exit_2_before_anything_is_written(tmp_path: Path, case: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    disk = _disks(tmp_path / "d", scratch=case != "no-scratch")
    key = _keypair(tmp_path)
    if case == "missing-disk":
        disk = tmp_path / "nothing.qcow2"
    argv = ["verify", "--out", str(out), "--target", f"disk:{disk}"]
    if case != "no-identity":
        argv += ["--identity", str(key)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    expected = {
        "no-identity": "needs --identity KEY",
        "missing-disk": "disk image not found",
        "no-scratch": "no image of it is beside",
        "foreign-key": "keys in the host model",
    }[case]
    assert expected in err, err
    assert "Traceback" not in err
    assert not (out / "prometheus" / "verify").exists()
    assert not list(out.glob("prometheus/.verify-*"))


def test_report_json_names_the_disk_and_its_digest(tmp_path: Path) -> None:
    from builder.verify.report import Report, report_dict
    from builder.verify.targets import disk_target

    rep = Report("prometheus", "admin@127.0.0.1 on the disk", (), target_info=disk_target(tmp_path / "d", "ab" * 32),
                 notes=("stand-in chain: test overrides applied (...)",))
    text = json.dumps(report_dict(rep))
    assert '"kind": "disk"' in text and "ab" * 32 in text and str(tmp_path / "d") in text
    assert "stand-in chain: test overrides applied" in text


@needs_tools
@pytest.mark.vm
def test_a_disk_that_does_not_boot_is_exit_2_with_the_serial_log_tail(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A blank disk under OVMF: no SSH within --boot-timeout; the error quotes the firmware's last lines (~40 s)."""
    out = tmp_path / "out"
    ctx = make_context(None, out)
    chain = apply_standin_chain(ctx, BaseIso(_iso(tmp_path, "STANDIN\n"), allow_standin=True), say=lambda _: None).chain
    assert chain is not None
    disk = _disks(tmp_path / "d")
    argv = ["verify", "--out", str(out), "--target", f"disk:{disk}", "--identity", str(chain.identity),
            "--boot-timeout", "25"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"the disk {disk} did not come up" in err and "serial log's last lines" in err, err
    assert "  | " in err and ("BdsDxe" in err or "UEFI" in err or "Shell" in err), err  # OVMF's own lines
    assert "Traceback" not in err
    assert not (out / "prometheus" / "verify").exists()
    assert not list(out.glob("prometheus/.verify-*"))  # the work folder (overlays) is gone


@needs_tools
@pytest.mark.parametrize("flag,want", [((), True), (("--no-second-boot",), False)])
def test_disk_target_boots_twice_unless_told_not_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    flag: tuple[str, ...], want: bool) -> None:
    """The disk target reboots its disk for the second-boot checks by default (issue 11: "on both boots")."""
    import builder.pipeline as pipeline
    from builder.verify.report import Report

    seen = []

    def fake(ctx, disk, identity, opts, on_result=None):  # noqa: ANN001, ANN202
        seen.append(opts.second_boot)
        out = tmp_path / "report"
        out.mkdir(exist_ok=True)
        return pipeline.VerifyResult(Report("prometheus", "fake", (), {}, None), out)

    monkeypatch.setattr(pipeline, "stage_verify_disk", fake)
    disk, key = _disks(tmp_path), _keypair(tmp_path)
    rc = main(["verify", "--out", str(tmp_path / "out"), "--target", f"disk:{disk}", "--identity", str(key), *flag])
    assert rc == 0 and seen == [want]
