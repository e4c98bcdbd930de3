"""`builder pxe` and `builder serve`: bundle layout, HTTP HEAD/Range, and network boots under QEMU.

The VM tests boot the stand-in kernel over QEMU's built-in TFTP (BIOS: iPXE script; UEFI: the GRUB
netboot image from grub-mknetdir); its initrd fetches the seed and the ISO from `builder serve`
on loopback (the guest sees the host's loopback as 10.0.2.2).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from builder.cli import main
from builder.media.fetch import cache_dir
from builder.media.serve import serving
from builder.qemu import Nic, VmSpec
from builder.testbed.console import parse_console
from builder.testbed.standin_iso import STANDIN_INFO, cached_standin_iso
from tests.vmboot import boot_all

needs_tools = pytest.mark.skipif(
    shutil.which("xorriso") is None or shutil.which("grub-mknetdir") is None,
    reason="xorriso or grub-mknetdir not installed (scripts/install-deps)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("pxe")
    port = free_port()
    base = cached_standin_iso(cache_dir())
    assert main(["pxe", "--base", str(base), "--allow-standin", "--out", str(out), "--http-port", str(port)]) == 0
    return out / "prometheus", port


@needs_tools
def test_bundle_layout(bundle: tuple[Path, int]) -> None:
    host, port = bundle
    pxe = host / "pxe"
    for rel in ("vmlinuz", "initrd", "boot.ipxe", "boot/grub/grub.cfg", "boot/grub/i386-pc/core.0",
                "boot/grub/x86_64-efi/core.efi", "seed/prometheus/user-data", "seed/prometheus/meta-data"):
        assert (pxe / rel).is_file(), rel
    assert (pxe / "seed/prometheus/user-data").read_bytes() == (host / "autoinstall/user-data").read_bytes()
    ipxe = (pxe / "boot.ipxe").read_text()
    assert ipxe.startswith("#!ipxe\n")
    assert f"ds=nocloud;s=http://${{next-server}}:{port}/seed/prometheus/" in ipxe
    assert "initrd=initrd" in ipxe and " autoinstall " in ipxe and "url=http://" in ipxe
    grub = (pxe / "boot/grub/grub.cfg").read_text()
    assert f'"ds=nocloud;s=http://${{net_default_server}}:{port}/seed/prometheus/"' in grub
    assert "--- console=tty0 console=ttyS0,115200n8" in grub


@needs_tools
def test_pxe_refuses_standin_without_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = cached_standin_iso(cache_dir())
    assert main(["pxe", "--base", str(base), "--out", str(tmp_path)]) == 2
    assert "--allow-standin" in capsys.readouterr().err
    assert not (tmp_path / "prometheus" / "pxe").exists()


def test_serve_head_and_ranges(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    (tmp_path / "f.bin").write_bytes(data)
    with serving(tmp_path) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/f.bin"
        head = requests.head(url, timeout=5)
        assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
        assert head.headers["Accept-Ranges"] == "bytes"
        r = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=5)
        assert r.status_code == 206 and r.content == data[100:200]
        assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        r = requests.get(url, headers={"Range": "bytes=10000-"}, timeout=5)
        assert r.status_code == 206 and r.content == data[10000:]
        r = requests.get(url, headers={"Range": "bytes=-16"}, timeout=5)
        assert r.status_code == 206 and r.content == data[-16:]
        r = requests.get(url, headers={"Range": f"bytes={len(data)}-"}, timeout=5)
        assert r.status_code == 416
        assert requests.get(url, timeout=5).content == data
        assert requests.get(url.replace("f.bin", "nope"), timeout=5).status_code == 404


@contextlib.contextmanager
def builder_serve(directory: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`builder serve` as a user runs it, in its own process (stopped by pid afterwards)."""
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "builder", "serve", str(directory), "--port", str(port)],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError):
                requests.head(f"http://127.0.0.1:{port}/boot.ipxe", timeout=2)
                break
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


BOOTS = [("bios", "boot.ipxe"), ("uefi", "boot/grub/x86_64-efi/core.efi")]


@pytest.fixture(scope="module")
def net_boots(bundle: tuple[Path, int], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """Both network boots at once against one `builder serve`; (name -> serial log, serve log)."""
    host, port = bundle
    pxe = host / "pxe"
    work = tmp_path_factory.mktemp("pxe-vms")
    specs = [VmSpec(name=f"pxe-{fw}", serial_log=work / f"pxe-{fw}.log", firmware=fw,
                    nics=(Nic("n0", netdev=f"tftp={pxe},bootfile={bootfile}", bootindex=0),))
             for fw, bootfile in BOOTS]
    serve_log = work / "serve.log"
    with builder_serve(pxe, port, serve_log):
        logs = boot_all(specs, work, 360)
    return logs, serve_log.read_text()


@needs_tools
@pytest.mark.vm
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
@pytest.mark.parametrize("firmware", [fw for fw, _ in BOOTS])
def test_network_boot_fetches_seed_from_builder_serve(bundle: tuple[Path, int], net_boots: tuple[dict, str],
                                                       firmware: str) -> None:
    host, port = bundle
    logs, served = net_boots
    text = logs[f"pxe-{firmware}"]
    if isinstance(text, Exception):
        raise text
    report = parse_console(text)
    assert report.cmdline is not None, text[-3000:]
    args = report.cmdline.split()
    assert "autoinstall" in args
    assert f"ds=nocloud;s=http://10.0.2.2:{port}/seed/prometheus/" in args
    assert "console=ttyS0,115200n8" in args
    assert report.seeds["user-data"] == (host / "autoinstall/user-data").read_bytes()
    assert report.seeds["meta-data"] == (host / "autoinstall/meta-data").read_bytes()
    medium = re.fullmatch(r"medium-over-http: *(\d+) bytes, info: (.*)", report.line("medium-over-http:") or "")
    assert medium is not None, text[-2000:]
    served_iso = next((host / "pxe").glob("standin-*.iso"))
    assert int(medium.group(1)) == served_iso.stat().st_size
    assert medium.group(2) == STANDIN_INFO.strip()
    assert "GET /seed/prometheus/user-data" in served and "GET /standin-" in served
