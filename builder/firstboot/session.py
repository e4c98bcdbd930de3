"""One call for "boot the host as modelled and give me SSH": image + services + seed + boot.

    with firstboot_session(model, workdir) as access:
        ssh_run(access, "cloud-init status --long")
        access.nfs.stop()   # fault: Atlas down
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml

from builder.errors import BuilderError
from builder.firstboot.boot import DEFAULT_TIMEOUT, SEED_FILES, booted_guest
from builder.firstboot.image import StandinImage, build_image
from builder.firstboot.services import harness_services, test_model
from builder.firstboot.ssh import GuestAccess, generate_keypair
from builder.model import HostModel

log = logging.getLogger("builder.firstboot.session")


def write_test_seed(model: HostModel, out: Path) -> Path:
    """Render the model's first-boot seed (user-data, meta-data, network-config) into `out`."""
    from builder.render import render_host

    files = render_host(model)
    out.mkdir(parents=True, exist_ok=True)
    for name in SEED_FILES:
        data = files.get(f"first-boot/{name}")
        if data is not None:
            (out / name).write_bytes(data)
            (out / name).chmod(0o600)
    return out


def inject_admin_key(seed_dir: Path, out: Path, admin: str, pubkey: str) -> Path:
    """Copy a seed folder as given, adding only `pubkey` to `admin`'s ssh_authorized_keys."""
    out.mkdir(parents=True, exist_ok=True)
    for name in SEED_FILES:
        if (seed_dir / name).is_file():
            shutil.copyfile(seed_dir / name, out / name)
    ud_path = out / "user-data"
    text = ud_path.read_text()
    if not text.startswith("#cloud-config"):
        raise BuilderError(f"{seed_dir / 'user-data'} is not a #cloud-config user-data")
    data = yaml.safe_load(text) or {}
    users = data.get("users") or []
    for u in users:
        if isinstance(u, dict) and u.get("name") == admin:
            u["ssh_authorized_keys"] = [*(u.get("ssh_authorized_keys") or []), pubkey]
            break
    else:
        raise BuilderError(f"user-data in {seed_dir} defines no user '{admin}' (the model's admin)")
    ud_path.write_text("#cloud-config\n" + yaml.safe_dump(data, sort_keys=False))
    return out


@contextlib.contextmanager
def firstboot_session(
    model: HostModel,
    workdir: Path,
    *,
    image: StandinImage | None = None,
    seed_dir: Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    keep: bool = False,
) -> Iterator[GuestAccess]:
    """Build/reuse the image, start the harness services, render the test seed, boot, yield access.

    With `seed_dir`, that seed is used as given (only the ephemeral admin key is added); it must
    point its repositories and NFS server at the harness (render it from `test_model`).
    """
    image = image or build_image()
    workdir.mkdir(parents=True, exist_ok=True)
    identity, pubkey = generate_keypair(workdir / "ssh")
    with harness_services(model, workdir / "services") as services:
        if seed_dir is None:
            seed = write_test_seed(test_model(model, services, pubkey), workdir / "seed")
        else:
            seed = inject_admin_key(seed_dir, workdir / "seed", model.admin.name, pubkey)
        with booted_guest(model, seed, image, workdir / "vm", identity_file=identity,
                          guestfwds=services.guestfwds(), nfs=services.nfs, timeout=timeout,
                          keep=keep) as access:
            yield access
