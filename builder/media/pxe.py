"""PXE bundle: kernel + initrd from the ISO, iPXE script, GRUB netboot trees, per-host seed.

Layout of `DIR/<hostname>/pxe/` (serve it over TFTP *and* HTTP, e.g. with `builder serve`):

    vmlinuz, initrd                 from the ISO's /casper/
    boot.ipxe                       iPXE clients (BIOS and UEFI)
    boot/grub/i386-pc/core.0        BIOS PXE (grub-mknetdir)
    boot/grub/x86_64-efi/core.efi   UEFI PXE (grub-mknetdir)
    boot/grub/grub.cfg              menu used by both GRUB netboot images
    seed/<hostname>/{user-data,meta-data}   NoCloud seed, fetched over HTTP
    <iso name>                      the ISO casper downloads (`url=`), unless --iso-url is given

The HTTP server defaults to "the machine that answered TFTP" (`${next-server}` in iPXE,
`$net_default_server` in GRUB) on --http-port; --server HOST[:PORT] fixes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from builder import store
from builder.errors import BuilderError
from builder.media.iso import extract, grub_quote, list_files
from builder.run import require_tool, run
from builder.store import staged_dir

log = logging.getLogger("builder.media.pxe")
GRUB_PLATFORMS = {"i386-pc": "core.0", "x86_64-efi": "core.efi"}
DEFAULT_HTTP_PORT = 8080


@dataclass(frozen=True)
class PxeSpec:
    hostname: str
    source_date_epoch: int
    kernel_cmdline: tuple[str, ...]
    seed: dict[str, bytes] = field(hash=False)
    server: str | None = None  # HOST[:PORT]; None: the TFTP server, on http_port
    http_port: int = DEFAULT_HTTP_PORT
    iso_url: str | None = None  # None: the ISO is copied into the bundle
    timeout_s: int = 3


def _base_url(spec: PxeSpec, var: str) -> str:
    return f"http://{spec.server}" if spec.server else f"http://{var}:{spec.http_port}"


def ipxe_script(spec: PxeSpec, iso_name: str) -> str:
    base = _base_url(spec, "${next-server}")
    iso_url = spec.iso_url or f"{base}/{iso_name}"
    args = [
        "initrd=initrd", "ip=dhcp", f"url={iso_url}", "autoinstall",
        f"ds=nocloud;s={base}/seed/{spec.hostname}/", "cloud-config-url=/dev/null", "---",
        *spec.kernel_cmdline,
    ]
    return "\n".join([
        "#!ipxe",
        f"# Network install of {spec.hostname}, written by `builder pxe`. Do not edit: rebuild.",
        "isset ${next-server} || dhcp",
        "echo Installing " + spec.hostname + " from " + base,
        "kernel vmlinuz " + " ".join(args),
        "initrd initrd",
        "boot",
        "",
    ])


def grub_net_cfg(spec: PxeSpec, iso_name: str) -> str:
    base = _base_url(spec, "${net_default_server}")
    iso_url = spec.iso_url or f"{base}/{iso_name}"
    # Double quotes: GRUB expands the server variable and keeps the `;` inside the argument.
    args = " ".join([
        "ip=dhcp", f'"url={iso_url}"', "autoinstall", f'"ds=nocloud;s={base}/seed/{spec.hostname}/"',
        "cloud-config-url=/dev/null", "---", *(grub_quote(a) for a in spec.kernel_cmdline),
    ])
    return "\n".join([
        f"# Network install of {spec.hostname}, written by `builder pxe`. Do not edit: rebuild.",
        f"set timeout={spec.timeout_s}",
        "set default=0",
        "serial --unit=0 --speed=115200",
        "terminal_input console serial",
        "terminal_output console serial",
        f'menuentry "Install {spec.hostname} over the network (autoinstall)" {{',
        f"\tlinux\t/vmlinuz {args}",
        "\tinitrd\t/initrd",
        "}",
        "",
    ])


def _place_iso(iso: Path, dest: Path) -> None:
    try:
        os.link(iso, dest)
    except OSError:
        shutil.copyfile(iso, dest)


def build_bundle(iso: Path, out_dir: Path, spec: PxeSpec) -> Path:
    """Write the bundle into `out_dir` (replaced as a whole when complete)."""
    require_tool("xorriso", "xorriso")
    require_tool("grub-mknetdir", "grub-common")
    files = list_files(iso)
    for needed in ("/casper/vmlinuz", "/casper/initrd"):
        if needed not in files:
            raise BuilderError(f"{iso} has no {needed}: not an Ubuntu live-server ISO")
    for name in ("user-data", "meta-data"):
        if name not in spec.seed:
            raise BuilderError(f"the autoinstall seed has no {name}", hint="run `builder render` first")
    with staged_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix="builder-pxe-") as work:
        got = extract(iso, ["/casper/vmlinuz", "/casper/initrd"], Path(work))
        (tmp / "vmlinuz").write_bytes(got["/casper/vmlinuz"])
        (tmp / "initrd").write_bytes(got["/casper/initrd"])
        for platform, image in GRUB_PLATFORMS.items():
            src = Path("/usr/lib/grub") / platform
            if not src.is_dir():
                pkg = "grub-pc-bin" if platform == "i386-pc" else "grub-efi-amd64-bin"
                raise BuilderError(f"GRUB modules for {platform} not found in {src}", hint=f"apt-get install {pkg}")
            run(["grub-mknetdir", f"--net-directory={tmp}", "--subdir=boot/grub", "-d", src])
            if not (tmp / "boot" / "grub" / platform / image).exists():
                raise BuilderError(f"grub-mknetdir did not write boot/grub/{platform}/{image}")
        (tmp / "boot" / "grub" / "grub.cfg").write_text(grub_net_cfg(spec, iso.name))
        (tmp / "boot.ipxe").write_text(ipxe_script(spec, iso.name))
        seed = tmp / "seed" / spec.hostname
        seed.mkdir(parents=True)
        for name, data in sorted(spec.seed.items()):
            (seed / name).write_bytes(data)
        if not spec.iso_url:
            _place_iso(iso, tmp / iso.name)
        epoch = spec.source_date_epoch
        summary = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file() and p.name != iso.name:
                summary[str(p.relative_to(tmp))] = hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(tmp.rglob("*"), reverse=True):
            if not p.is_symlink() and p.name != iso.name:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
                os.utime(p, (epoch, epoch))
        (tmp / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in summary.items()))
    log.info("PXE bundle: %s", out_dir)
    return out_dir


def update_manifest(manifest: Path, bundle: Path, iso: Path, iso_sha256: str) -> None:
    store.update_manifest(manifest, "pxe", {"dir": bundle.name, "iso": {"name": iso.name, "sha256": iso_sha256}})
