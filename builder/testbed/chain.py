"""The offline stand-in chain: what a build on a stand-in ISO bakes into its disk, so that disk can be verified.

Offline, the installed disk's first boot can only reach the harness services (signed stub APT
repositories, the Atlas NFS stand-in) at the addresses `builder verify` serves them on. So when the
base ISO is a stand-in (`--allow-standin`), `builder build` renders the seed from the harness model
(builder.testbed.services.harness_model): repository URLs and keys (stable, cached), the NFS server
(`service_address(model)`, inside the SERVERS subnet) and one extra admin login key whose private half
is kept under `<out>/<host>/standin-chain/` (0600) for the verify stage (one key per cache, like the
repository keys, so the same model still renders the same bytes). Everything else is the model
as written. This is never done for a real Ubuntu ISO, and the build says so where it is done.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from builder.model import HostModel
from builder.testbed.gpgkeys import SigningKey, archive_key, cache_root, make_key

CHAIN_DIR = "standin-chain"
IDENTITY_NAME = "admin-ed25519"


@dataclass(frozen=True)
class PlannedServices:
    """What harness_model() reads of HarnessServices: the guest-side address and the (stable) repository keys."""

    guest_ip: str
    docker_key: SigningKey
    nvidia_key: SigningKey
    archive_key: SigningKey

    @property
    def base_url(self) -> str:
        return f"http://{self.guest_ip}"


@dataclass(frozen=True)
class StandinChain:
    model: HostModel  # the harness model the seed is rendered from
    identity: Path  # the extra admin key's private half (0600)
    public_key: str
    service_address: str

    def note(self) -> str:
        return (f"stand-in chain: test overrides applied (harness APT repositories and keys and the NFS stand-in at "
                f"{self.service_address}; extra admin login key {self.identity})")


def planned_services(model: HostModel) -> PlannedServices:
    from builder.testbed.services import service_address

    keys = cache_root() / "firstboot" / "repo-keys"  # the keys harness_services() signs with
    docker = make_key(keys / "docker", "STANDIN Docker Release (test only) <standin-docker@invalid>")
    nvidia = make_key(keys / "nvidia", "STANDIN NVIDIA toolkit (test only) <standin-nvidia@invalid>")
    return PlannedServices(service_address(model), docker, nvidia, archive_key())


def chain_dir(host_dir: Path) -> Path:
    return host_dir / CHAIN_DIR


def prepare_chain(model: HostModel, host_dir: Path) -> StandinChain:
    """The harness model with a login key kept in `<host_dir>/standin-chain/` (reused when it exists)."""
    from builder.testbed.services import HarnessServices, harness_model
    from builder.verify.ssh import generate_keypair

    # one key per cache, like the repository keys: the same model renders the same seed (reproducible ISO)
    cached = cache_root() / "firstboot" / "chain-key" / IDENTITY_NAME
    if not (cached.is_file() and cached.with_name(IDENTITY_NAME + ".pub").is_file()):
        generate_keypair(cached.parent, IDENTITY_NAME)
    pub = cached.with_name(IDENTITY_NAME + ".pub").read_text().strip()
    folder = chain_dir(host_dir)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / IDENTITY_NAME
    for src, dst, mode in ((cached, key, 0o600), (cached.with_name(IDENTITY_NAME + ".pub"),
                                                  key.with_name(IDENTITY_NAME + ".pub"), 0o644)):
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            dst.unlink(missing_ok=True)
            dst.write_bytes(src.read_bytes())
        dst.chmod(mode)
    svc = planned_services(model)
    tmodel = harness_model(model, cast(HarnessServices, svc), extra_ssh_key=pub)
    chain = StandinChain(tmodel, key, pub, svc.guest_ip)
    (folder / "chain.json").write_text(json.dumps({
        "note": chain.note(), "identity": str(key), "public_key": pub, "service_address": svc.guest_ip,
    }, indent=2) + "\n")
    return chain


def load_chain(model: HostModel, host_dir: Path) -> StandinChain | None:
    """The chain a stand-in build left in `<host_dir>/standin-chain/` (None when there is none)."""
    if not (chain_dir(host_dir) / "chain.json").is_file():
        return None
    return prepare_chain(model, host_dir)
