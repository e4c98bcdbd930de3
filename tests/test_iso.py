"""`builder iso`: remaster layout, GRUB entry, md5sum.txt, reproducibility and clean failures.

Boots of the result are in test_iso_boot.py; this file needs xorriso but no VM.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from builder.cli import main
from builder.errors import BuilderError
from builder.media.fetch import cache_dir
from builder.media.iso import (
    RemasterSpec,
    extract,
    grub_cfg,
    grub_quote,
    list_files,
    remaster,
    update_md5sums,
    xorriso_version,
)
from builder.testbed.standin_iso import cached_standin_iso

pytestmark = pytest.mark.skipif(
    shutil.which("xorriso") is None, reason="xorriso not installed (apt-get install xorriso)"
)

SEED = {"user-data": b"#cloud-config\nautoinstall:\n  version: 1\n", "meta-data": b"instance-id: t\n"}
SPEC = RemasterSpec("prometheus", 1769126400, ("console=tty0", "console=ttyS0,115200n8"), SEED)


@pytest.fixture(scope="session")
def standin_iso() -> Path:
    return cached_standin_iso(cache_dir())


def _iso_files(out_dir: Path) -> list[Path]:
    """ISO-like or temporary files left in an output folder (none after a failure)."""
    if not out_dir.exists():
        return []
    return [p for p in out_dir.rglob("*") if p.is_file() and (".iso" in p.name or ".tmp-" in p.name)]


def test_grub_quoting() -> None:
    assert grub_quote("console=ttyS0,115200n8") == "console=ttyS0,115200n8"
    assert grub_quote("ds=nocloud;s=/cdrom/nocloud/") == "'ds=nocloud;s=/cdrom/nocloud/'"
    assert grub_quote("a b'c") == "'a b'\\''c'"
    cfg = grub_cfg(SPEC)
    linux = next(line for line in cfg.splitlines() if line.strip().startswith("linux"))
    assert "/casper/vmlinuz autoinstall 'ds=nocloud;s=/cdrom/nocloud/' --- console=tty0 console=ttyS0,115200n8" in linux
    assert "set timeout=3" in cfg


def test_md5sums_update_replaces_and_appends() -> None:
    old = b"aaa  ./boot/grub/grub.cfg\nbbb  ./casper/vmlinuz\n"
    new = update_md5sums(old, {"/boot/grub/grub.cfg": b"x", "/nocloud/user-data": b"y"}).decode()
    md5 = lambda b: hashlib.md5(b).hexdigest()  # noqa: E731
    assert new.splitlines() == [f"{md5(b'x')}  ./boot/grub/grub.cfg", "bbb  ./casper/vmlinuz",
                                f"{md5(b'y')}  ./nocloud/user-data"]


def test_remaster_adds_seed_and_keeps_boot_equipment(standin_iso: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.iso"
    result = remaster(standin_iso, out, SPEC, allow_standin=True)
    assert result.iso == out and re.fullmatch(r"\d+\.\d+\.\d+", result.xorriso_version)
    files = list_files(out)
    for path in ("/nocloud/user-data", "/nocloud/meta-data", "/autoinstall.yaml", "/casper/vmlinuz"):
        assert path in files
    got = extract(out, ["/nocloud/user-data", "/nocloud/meta-data", "/boot/grub/grub.cfg",
                        "/boot/grub/loopback.cfg", "/autoinstall.yaml"], tmp_path)
    assert got["/nocloud/user-data"] == SEED["user-data"]
    assert got["/nocloud/meta-data"] == SEED["meta-data"]
    assert got["/autoinstall.yaml"] == SEED["user-data"]
    assert b"'ds=nocloud;s=/cdrom/nocloud/'" in got["/boot/grub/grub.cfg"]
    assert b"iso-scan/filename=${iso_path}" in got["/boot/grub/loopback.cfg"]
    assert b"autoinstall" in got["/boot/grub/loopback.cfg"]
    report = subprocess.run(["xorriso", "-indev", str(out), "-report_el_torito", "plain",
                             "-report_system_area", "plain"], capture_output=True, text=True).stdout
    assert "El Torito boot img :   1  BIOS" in report
    assert "El Torito boot img :   2  UEFI" in report
    # xorriso infers "cyl-align" from the image size: an image that happens to end on a cylinder
    # (64 heads x 32 sectors) reads as aligned although it was written with -partition_cyl_align off
    size = int(re.search(r"^ISO image size/512 : (\d+)$", report, re.M)[1])
    align = "on" if size % (64 * 32) == 0 else "off"
    assert f"System area summary: MBR protective-msdos-label grub2-mbr cyl-align-{align} GPT" in report.splitlines()
    assert "28732ac11ff8d211ba4b00a0c93ec93b" in report  # appended EFI System Partition
    # Hashed while xorriso wrote it into the pipe: the digest is that of the file as it lies on disk.
    assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()


def _as_mkisofs(iso: Path) -> tuple[list[str], tuple[int, int]]:
    """xorriso's replay recipe for `iso` with file names, block numbers and cylinder alignment blanked, and the ESP's
    (start, end) in 512-byte blocks."""
    text = subprocess.run(["xorriso", "-indev", str(iso), "-report_el_torito", "as_mkisofs"],
                          capture_output=True, text=True, check=True).stdout
    esp = re.search(r"-append_partition 2 \S+ --interval:local_fs:(\d+)d-(\d+)d::", text)
    assert esp is not None, text
    lines = [re.sub(r"\d+([sd])", r"N\1", line.replace(str(iso), "ISO")) for line in text.splitlines()]
    # xorriso infers cylinder alignment from the image size (one that happens to end on a cylinder reads
    # as aligned): not part of the recipe the remaster has to keep
    lines = [re.sub(r"^-partition_cyl_align (on|off)$", "-partition_cyl_align (from the size)", ln) for ln in lines]
    return lines, (int(esp.group(1)), int(esp.group(2)) + 1)


def test_boot_equipment_survives_the_pipe_byte_for_byte(standin_iso: Path, tmp_path: Path) -> None:
    """Written through a pipe (a sequential drive), the image keeps the base's El Torito entries, the
    MBR/GPT recipe and the appended EFI partition, whose bytes are copied unchanged."""
    out = tmp_path / "out.iso"
    remaster(standin_iso, out, SPEC, allow_standin=True)
    base_recipe, (b0, b1) = _as_mkisofs(standin_iso)
    out_recipe, (o0, o1) = _as_mkisofs(out)
    assert out_recipe == base_recipe
    assert "-b '/boot/grub/i386-pc/eltorito.img'" in out_recipe and "-appended_part_as_gpt" in out_recipe
    assert b1 - b0 == o1 - o0 == 4096
    with open(standin_iso, "rb") as f:
        f.seek(b0 * 512)
        base_esp = f.read((b1 - b0) * 512)
    with open(out, "rb") as f:
        f.seek(o0 * 512)
        assert f.read((o1 - o0) * 512) == base_esp


def _cli_build(base: Path, model: Path, out: Path) -> str:
    assert main(["iso", "--host", str(model), "--base", str(base), "--out", str(out), "--allow-standin"]) == 0
    iso = out / "prometheus" / "prometheus-autoinstall.iso"
    digest = hashlib.sha256(iso.read_bytes()).hexdigest()
    assert iso.stat().st_mode & 0o777 == 0o600  # holds the autoinstall user-data
    assert (iso.with_name(iso.name + ".sha256")).read_text() == f"{digest}  {iso.name}\n"
    return digest


def test_two_builds_are_bit_identical(standin_iso: Path, model_dir: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    model = model_dir / "prometheus.yaml"
    a, b = tmp_path / "one", tmp_path / "elsewhere" / "two"
    base_a, base_b = tmp_path / "base-a.iso", tmp_path / "other" / "base.iso"
    base_b.parent.mkdir()
    shutil.copyfile(standin_iso, base_a)
    shutil.copyfile(standin_iso, base_b)
    os.chmod(base_a, 0o644)
    os.chmod(model, 0o644)
    first = _cli_build(base_a, model, a)
    time.sleep(2.1)
    # Other modes, owner, mtime and umask on the inputs; another folder; a later time.
    os.chmod(base_b, 0o400)
    os.chmod(model, 0o600)
    os.utime(base_b, (1_000_000_000, 1_000_000_000))
    if os.geteuid() == 0:
        os.chown(base_b, 65534, 65534)
    old_umask = os.umask(0o077)
    try:
        second = _cli_build(base_b, model, b)
    finally:
        os.umask(old_umask)
    assert first == second
    manifest = json.loads((a / "prometheus" / "manifest.json").read_text())
    assert manifest["iso"]["sha256"] == first
    assert manifest["iso"]["base"]["sha256"] == hashlib.sha256(standin_iso.read_bytes()).hexdigest()
    assert manifest["iso"]["xorriso"]["version"] == xorriso_version()
    assert "replay" in manifest["iso"]["xorriso"]["options"]
    # ...and the hash does depend on the model: another build time gives other bytes.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1769126401")
    assert _cli_build(base_a, model, tmp_path / "three") != first


def test_standin_refused_without_flag(standin_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["iso", "--base", str(standin_iso), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "STAND-IN" in err and "--allow-standin" in err
    assert _iso_files(tmp_path) == []


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_base_is_a_clear_error(kind: str, standin_iso: Path, tmp_path: Path) -> None:
    base = tmp_path / "base.iso"
    data = standin_iso.read_bytes()
    base.write_bytes(os.urandom(len(data)) if kind == "garbage" else data[: len(data) // 3])
    out = tmp_path / "out" / "x.iso"
    with pytest.raises(BuilderError) as exc:
        remaster(base, out, SPEC, allow_standin=True)
    assert exc.value.message == f"base ISO {base} is not a readable ISO 9660 image (corrupt or truncated?)"
    assert _iso_files(tmp_path / "out") == []
    assert base.exists()  # the user's file is never deleted


def test_existing_output_is_refused_untouched(standin_iso: Path, tmp_path: Path, capsys) -> None:
    iso = tmp_path / "prometheus" / "prometheus-autoinstall.iso"
    iso.parent.mkdir()
    iso.write_bytes(b"precious")
    assert main(["iso", "--base", str(standin_iso), "--out", str(tmp_path), "--allow-standin"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert iso.read_bytes() == b"precious"
    with pytest.raises(BuilderError, match="already exists"):
        remaster(standin_iso, iso, SPEC, allow_standin=True)


def test_missing_xorriso(standin_iso: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert main(["iso", "--base", str(standin_iso), "--out", str(tmp_path / "o"), "--allow-standin"]) == 2
    err = capsys.readouterr().err
    assert "xorriso" in err and "apt-get install xorriso" in err
    assert _iso_files(tmp_path / "o") == []


def test_pin_mismatch_for_a_real_looking_base(tmp_path: Path, capsys) -> None:
    tree = tmp_path / "tree"
    (tree / "casper").mkdir(parents=True)
    (tree / "casper" / "vmlinuz").write_bytes(b"k")
    base = tmp_path / "ubuntu.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-r", "-o", str(base), str(tree)], check=True, capture_output=True)
    assert main(["iso", "--base", str(base), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pins" in err and "--no-pin-check" in err
    assert main(["iso", "--base", str(base), "--out", str(tmp_path / "o"), "--no-pin-check"]) == 2
    assert "live-server layout" in capsys.readouterr().err
    assert _iso_files(tmp_path / "o") == []
