"""Shared fixtures. Expensive things (images, boots) are session-scoped; add fixtures additively."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA_DIR = REPO.parent / "shared" / "schemas"
DEFAULT_MODEL = REPO / "hosts" / "prometheus.yaml"

# Two xdist workers each run a TCG guest on 2 cores: with 1 vCPU each, guests are ~16% faster than
# with 2 (MTTCG threads fight over the cores). Measured: two concurrent first boots of the default
# model, up 130 s / checks 49 s with 1 vCPU, 155 s / 60 s with 2. A user's own setting wins.
os.environ.setdefault("BUILDER_VM_CPUS", "1")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    """The upstream schemas: $BUILDER_SCHEMA_DIR, else ../shared/schemas (this lab's CI lays it beside the
    checkout). A fresh clone without either skips the schema tests, saying so, instead of failing."""
    import os

    folder = Path(os.environ.get("BUILDER_SCHEMA_DIR") or SCHEMA_DIR)
    if not (folder / "autoinstall-schema.json").is_file():
        pytest.skip(f"upstream schema validation skipped: no autoinstall-schema.json in {folder} "
                    "(set BUILDER_SCHEMA_DIR to a folder with subiquity's and cloud-init's schemas)")
    return folder


def schema_args() -> list[str]:
    """`--schema-dir DIR` when the upstream schemas are here (this lab's CI), else nothing: validation
    then reports each schema as skipped, by name, and the test still runs."""
    import os

    folder = Path(os.environ.get("BUILDER_SCHEMA_DIR") or SCHEMA_DIR)
    return ["--schema-dir", str(folder)] if (folder / "autoinstall-schema.json").is_file() else []


def default_model_data() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_MODEL.read_text())


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder with a copy of the default model and its key files, safe to edit."""
    d = tmp_path / "hosts"
    shutil.copytree(REPO / "hosts", d)
    return d


@pytest.fixture
def write_model(model_dir: Path) -> Callable[..., Path]:
    """write_model(data=None, text=None, name=...) -> path of a model file beside the keys."""

    def _write(data: Any = None, text: str | None = None, name: str = "host.yaml") -> Path:
        path = model_dir / name
        if text is None:
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    return _write


# --- first boot (builder/firstboot): one booted guest shared by every VM test that needs it ---

FIRSTBOOT_TOOLS = ("mmdebstrap", "mkfs.ext4", "debugfs", "qemu-system-x86_64", "qemu-img", "xorriso",
                   "ganesha.nfsd", "nc", "gpg", "dpkg-deb", "apt-ftparchive", "ssh", "ssh-keygen")


def firstboot_missing() -> str | None:
    """Why the first-boot VM tests cannot run here (printed as the skip reason), or None."""
    import os

    missing = [t for t in FIRSTBOOT_TOOLS if shutil.which(t) is None]
    if missing:
        return f"first-boot tools missing: {', '.join(missing)} (see scripts/install-deps)"
    if os.geteuid() != 0:
        return "first-boot tests need root (mmdebstrap --mode=root, nfs-ganesha)"
    return None


@pytest.fixture(scope="session")
def firstboot_image():
    """The cached STANDIN first-boot image (built once, ~3-5 min cold; instant when cached)."""
    reason = firstboot_missing()
    if reason:
        pytest.skip(reason)
    from builder.testbed.image import build_image

    return build_image()


@pytest.fixture(scope="session")
def verify_guest_session(firstboot_image, tmp_path_factory):
    """THE one boot of the default model per test session (TCG: 1-3 min quiet, more under load).

    A builder.verify.session.Session (model as the guest sees it, .access, .services, .host).
    Read-only tests run first (test_firstboot_vm sorts before test_verify_vm); fault tests undo
    their faults. Use this instead of booting again: CI's VM budget has room for one boot.
    test_verify_vm_reboot.py (sorted after test_verify_vm.py) reboots it twice at the end: the second
    boot's checks, then a fault only a later boot shows.
    """
    from builder.model import load_model
    from builder.verify.session import guest_session

    workdir = tmp_path_factory.mktemp("guest")
    with early_close("shared-guest") as stack:
        yield stack.enter_context(guest_session(load_model(DEFAULT_MODEL), workdir))


@pytest.fixture(scope="session")
def shared_guest_catalog(verify_guest_session):
    """The whole catalog run once on the shared boot while no fault is planted (every fault test
    undoes its fault): the default-model test judges it, the live-target test compares against it,
    instead of a second ~1 min catalog run under TCG."""
    from builder.verify.session import verify_session

    return verify_session(verify_guest_session, started=None)


@pytest.fixture(scope="session")
def firstboot_guest(verify_guest_session):
    """GuestAccess of the shared boot: ssh_run(access, cmd), access.nfs.stop()/start()."""
    return verify_guest_session.access


@pytest.fixture(scope="session", autouse=True)
def no_gpg_agent_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test that runs gpg in a temporary GNUPGHOME must stop its agent (gpgconf --kill all): checked
    once at the end of the session; any agent found is stopped, so the run leaves none either way."""
    from tests.gpgagent import agents_under, stop_agents

    root = tmp_path_factory.getbasetemp()
    yield
    left = agents_under(root)
    for home in set(left.values()):
        stop_agents(home)
    assert left == {}, f"tests left gpg-agent processes running: {left}"


# --- the second shared boot: every must-show that needs a boot unlike the default one, in ONE boot ---

VARIANT_ATLAS_NAME = "atlas.standin.invalid"  # RFC 2606: nothing resolves it until the test "restores" Atlas
VARIANT_FIRST_BOOT_LIMIT = 300.0  # issue 10: "cloud-init finishes within 5 minutes under TCG" (asserted by a test)
VARIANT_BOOT_TIMEOUT = 600.0  # the fixture's own bound: a slow boot fails that test, not every test of the boot
VARIANT_HEALTH_INTERVAL = 10  # host-health timer period in this boot (the model's minimum), so changes show quickly
VARIANT_PROBE = 5  # seconds an NFS mount may take (2 s flaked with two TCG guests at once)


def variant_model_data() -> dict[str, Any]:
    """The default model with BOTH optional features on (issue 12)."""
    data = default_model_data()
    data["features"]["virtualization"]["enabled"] = True
    data["features"]["monitoring"].update(enabled=True, node_exporter=True, dcgm_exporter=False,
                                          health_interval_seconds=VARIANT_HEALTH_INTERVAL,
                                          probe_timeout_seconds=VARIANT_PROBE)
    return data


@pytest.fixture(scope="session")
def variant_guest(firstboot_image, tmp_path_factory):  # noqa: ANN001
    """THE second boot of a test session, shared by three must-shows that each need a boot unlike the
    default one (CI's VM budget has room for two first boots, not four):

    - the default model with both optional features on (tests/test_features_vm.py);
    - its FIRST boot with Atlas unreachable: no NFS server, and Atlas told to the guest by a name nothing
      resolves (tests/test_atlas_down_vm.py asserts that first-boot state, then restores Atlas);
    - MGMT as a routed network in namespaces: an admin client on another subnet behind a router at the
      MGMT gateway (tests/test_mgmt_routed_vm.py); SSH of the whole session goes that way.

    The Atlas-down tests sort first (test_atlas_down_vm.py); a module that needs Atlas calls
    `restore_atlas(session)` first, so each module also runs on its own (the first-boot assertions then
    skip, saying Atlas was restored before them)."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) missing: the routed MGMT network needs network namespaces")
    from builder.model import load_model
    from builder.verify.session import guest_session

    hosts = tmp_path_factory.mktemp("variant-model") / "hosts"
    shutil.copytree(REPO / "hosts", hosts)
    path = hosts / "variant.yaml"
    path.write_text(yaml.safe_dump(variant_model_data(), sort_keys=False))
    with early_close("variant-guest") as stack:
        s = stack.enter_context(guest_session(load_model(path), tmp_path_factory.mktemp("variant-guest"),
                                              atlas_running=False, atlas_name=VARIANT_ATLAS_NAME,
                                              boot_timeout=VARIANT_BOOT_TIMEOUT, routed_mgmt=True))
        print(f"variant boot (features on, Atlas down, MGMT routed) ready: {s.timings}")
        yield s


def restore_atlas(session: Any, timeout: float = 240) -> float:
    """Atlas comes back: its name resolves (the harness has no DNS server, so it plays the site's resolver
    with a line in the guest's /etc/hosts) and the NFS stand-in answers. Waits until every share is
    mounted and Docker is active, with nobody touching the host's units; returns the seconds that took.
    Idempotent: a second call only re-checks."""
    import time

    host, nfs = session.host, session.access.nfs
    line = f"{session.services.guest_ip} {session.model.nfs.server}"
    r = host.sudo(f"grep -qxF '{line}' /etc/hosts || echo '{line}' >> /etc/hosts", 60)
    assert r.ok, r
    if not nfs.running:
        nfs.start()
    want = {m.mountpoint for m in session.model.nfs.mounts}
    t0 = time.monotonic()
    mounted: set[str] = set()
    docker = ""
    while time.monotonic() - t0 < timeout:
        mounted = set(host.run("findmnt -rn -t nfs4,nfs -o TARGET", 30).stdout.split())
        docker = host.run("systemctl is-active docker.service", 30).stdout.strip()
        if mounted >= want and docker == "active":
            return round(time.monotonic() - t0, 1)
        time.sleep(5)
    raise AssertionError(f"Atlas answers, yet after {timeout:.0f}s: mounted {sorted(mounted)}, docker {docker!r}")


SHARED_BOOT_FIXTURES = {"verify_guest_session", "firstboot_guest"}
# The order the boot groups are handed out in (xdist, --no-loadscope-reorder), so that the two workers finish
# together. Minutes each keeps a worker busy, measured on 2 cores with two TCG guests at once: build 12.5,
# shared guest 10, variant 7, ISO boots 4, Packer 2, PXE 1, disk-does-not-boot 0.5. xdist gives each worker
# TWO groups up front (#277): the build and the shared guest start first; the build's worker gets a short one
# next, the shared guest's worker the variant boot; the rest fill in, then the fast tests.
BOOT_ORDER = ("tests.test_build_vm", "shared-guest", "tests.test_verify_disk", "variant-guest",
              "tests.test_iso_boot", "tests.test_packer_standin_vm", "tests.test_pxe", "tests.test_firstboot_image")
VARIANT_BOOT_FIXTURES = {"variant_guest"}
EARLY_CLOSE: dict[str, contextlib.ExitStack] = {}  # boot group -> the guest's context, closed after its last test


@contextlib.contextmanager
def early_close(group: str) -> Iterator[contextlib.ExitStack]:
    """The ExitStack a session-scoped guest lives in: closed by `pytest_runtest_teardown` once the
    group's last test is done (tests are sorted by group), else at the end of the session."""
    with contextlib.ExitStack() as stack:
        EARLY_CLOSE[group] = stack
        try:
            yield stack
        finally:
            EARLY_CLOSE.pop(group, None)


def boot_group(item: pytest.Item) -> str | None:
    """The boot a VM test runs on: "shared-guest", "variant-guest", or its module's own; None if not a VM test."""
    if item.get_closest_marker("vm") is None:
        return None
    names = set(getattr(item, "fixturenames", ()))
    if names & SHARED_BOOT_FIXTURES:
        return "shared-guest"
    if names & VARIANT_BOOT_FIXTURES:
        return "variant-guest"
    module = getattr(item, "module", None)
    return module.__name__ if module is not None else "vm"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the marker into the `@group` of the node id
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep the tests of one boot together: on one xdist worker (an xdist_group per boot: the shared
    guests by fixture, the other VM tests by module, whose boots are module-scoped) and, for a serial
    run, next to each other (stable: file order inside a group, groups in order of first appearance),
    so that a session-scoped guest can be powered off as soon as its last test is done (`early_close`)."""
    order: dict[str | None, int] = {}
    for item in items:
        group = boot_group(item)
        order.setdefault(group, len(order))
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    # the boots in BOOT_ORDER first (xdist hands out groups in this order), then the fast tests, which fill
    # whichever worker is free first
    rank = {g: i for i, g in enumerate(BOOT_ORDER)}
    items.sort(key=lambda it: (rank.get(boot_group(it) or "", len(rank)), order[boot_group(it)]))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail loudly when xdist ignored the boot groups (pytest 9 derives node ids in a way xdist 3.8's
    `--dist loadgroup` cannot suffix): every worker would then boot every guest of the run."""
    if getattr(item.config.option, "loadgroup", False) and boot_group(item) is not None and "@" not in item.nodeid:
        pytest.fail(f"xdist --dist loadgroup did not group this VM test ({boot_group(item)}): pytest "
                    f"{pytest.__version__} with this pytest-xdist; see the pins in pyproject.toml", pytrace=False)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """A shared guest idles at full TCG cost until the session ends: power it off after its last test."""
    group = boot_group(item)
    if group in EARLY_CLOSE and (nextitem is None or boot_group(nextitem) != group):
        EARLY_CLOSE.pop(group).close()
