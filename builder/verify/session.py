"""One verification run against the QEMU stand-in: services, seed, boot, checks, report.

`guest_session()` is shared by `builder verify` and the VM tests: it starts the harness services
(NFS + signed APT repo), applies the test overrides to the model, renders (or adapts a given) seed,
boots the stand-in image and yields a `Session`. `verify_session()` runs the catalog and builds
the `Report`; `verify_boots()` then powers the guest off, boots it a second time on the same disk
and re-runs the checks a later boot must keep passing (`SECOND_BOOT_CHECKS`): a second boot runs
no first-boot commands, so only configuration that persists passes there. Everything is cleaned
up on exit, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from builder.errors import BuilderError
from builder.model import HostModel
from builder.verify.catalog import build_catalog, select
from builder.verify.core import CheckResult, Context, Endpoint, Endpoints, run_checks
from builder.verify.host import SshHost
from builder.verify.report import BootSection, Report
from builder.verify.targets import STANDIN

log = logging.getLogger("builder.verify")
SEED_FILES = ("user-data", "meta-data", "network-config")
# What a later boot must show again (check id prefixes): reachability, listeners, routing, mounts,
# Docker, and that the boot itself is clean.
SECOND_BOOT_CHECKS = ("system.cloud-init", "system.failed-units", "ssh.listeners", "ssh.reachability",
                      "network.", "net.", "nfs.", "docker.", "health.nfs-mounts")
SETTLE_TIMEOUT = 240.0  # seconds a later boot may take to finish its start-up jobs and the Atlas unit


@dataclass
class Session:
    model: HostModel  # the model as the test guest sees it (harness URLs, NFS server, extra key)
    access: Any  # builder.verify.ssh.GuestAccess
    services: Any  # builder.testbed.services.HarnessServices
    extra_key: str
    timings: dict[str, float] = field(default_factory=dict)
    mgmt_net: Any = None  # builder.testbed.mgmtnet.RoutedMgmt when MGMT is a routed network
    mgmt_forward_port: int | None = None  # with mgmt_net: 127.0.0.1:PORT reaches SSH on MGMT for outside probes

    _host: SshHost | None = None

    @property
    def host(self) -> SshHost:
        if self._host is None:
            self._host = SshHost(self.access)
        return self._host

    def close(self) -> None:
        if self._host is not None:
            self._host.close()
            self._host = None

    def reboot(self, settle_timeout: float = SETTLE_TIMEOUT) -> dict[str, float]:
        """Power the guest off and boot it again (same disk, NICs, services); wait until systemd's
        start-up jobs are done and the Atlas unit stopped retrying (bounded). Timings of that boot."""
        if self.access.power is None:
            raise BuilderError("this guest cannot be rebooted (not started by booted_guest)")
        self.close()
        self.access = self.access.power.reboot()
        timings = dict(self.access.timings)
        t0 = time.monotonic()
        settle(self.host, settle_timeout)
        timings["settled"] = round(timings.get("ssh_ready", 0.0) + time.monotonic() - t0, 1)
        return timings

    def endpoints(self) -> Endpoints:
        """How the probes from outside reach the guest's SSH on MGMT and SERVERS (this machine's loopback)."""
        if self.mgmt_forward_port is None:
            return Endpoints.from_access(self.access)
        return Endpoints(Endpoint("127.0.0.1", self.mgmt_forward_port),
                         Endpoint("127.0.0.1", self.access.servers_ssh_port))

    def context(self) -> Context:
        return Context(self.host, self.model, self.endpoints(), extra_authorized_keys=(self.extra_key,))


def image_from_file(path: Path) -> Any:
    """A stand-in image given as FILE, with FILE-stem.vmlinuz / .initrd beside it (`standin image`)."""
    from builder.testbed.image import KERNEL_APPEND, StandinImage

    path = Path(path)
    kernel, initrd = path.with_name(path.stem + ".vmlinuz"), path.with_name(path.stem + ".initrd")
    missing = [p for p in (path, kernel, initrd) if not p.is_file()]
    if missing:
        raise BuilderError(f"stand-in image incomplete: missing {', '.join(map(str, missing))}",
                           hint="create it with `builder standin image --out FILE`")
    return StandinImage(path, kernel, initrd, KERNEL_APPEND, key=f"file:{path.name}")


def _replace_strings(node: Any, swaps: list[tuple[str, str]]) -> Any:
    if isinstance(node, str):
        for old, new in swaps:
            if old:
                node = node.replace(old, new)
        return node
    if isinstance(node, list):
        return [_replace_strings(x, swaps) for x in node]
    if isinstance(node, dict):
        return {k: _replace_strings(v, swaps) for k, v in node.items()}
    return node


def seed_source(seed: Path) -> Path:
    """The folder holding a given seed's user-data: SEED itself or SEED/first-boot."""
    src = seed / "first-boot" if (seed / "first-boot" / "user-data").is_file() else seed
    if not (src / "user-data").is_file():
        raise BuilderError(f"no user-data in {seed} (nor in {seed}/first-boot)",
                           hint="pass the folder `builder render` wrote, e.g. artifacts/prometheus")
    return src


def adapt_seed(seed: Path, model: HostModel, harness_model: HostModel, extra_key: str, dest: Path) -> Path:
    """Copy a given seed folder for the test boot. Only the test overrides change: repository URLs
    and keys, the NFS server, and the harness' login key added to the admin user."""
    src = seed_source(seed)
    text = (src / "user-data").read_text()
    data = yaml.safe_load(text)
    if not text.startswith("#cloud-config") or not isinstance(data, dict):
        raise BuilderError(f"{src / 'user-data'} is not a #cloud-config mapping")
    swaps: list[tuple[str, str]] = []
    for name in ("docker", "nvidia"):
        old, new = getattr(model.apt, name), getattr(harness_model.apt, name)
        swaps.append((old.url, new.url))
        old_key = model.resolve(old.key_file).read_text().strip()
        new_key = Path(new.key_file).read_text().strip()
        swaps.append((old_key, new_key))
    for attr in ("ubuntu_security_mirror", "ubuntu_mirror"):
        swaps.append((getattr(model.apt, attr) or "", getattr(harness_model.apt, attr) or ""))
    swaps.append((f"{model.nfs.server}:", f"{harness_model.nfs.server}:"))
    data = _replace_strings(data, swaps)
    admin = model.users[0].name
    for user in data.get("users") or []:
        if isinstance(user, dict) and user.get("name") == admin:
            user.setdefault("ssh_authorized_keys", []).append(extra_key)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "user-data").write_text("#cloud-config\n" + yaml.safe_dump(data, sort_keys=False, width=1000))
    for name in SEED_FILES[1:]:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    return dest


def render_seed(model: HostModel, dest: Path) -> Path:
    """Render the model's first-boot seed (user-data, meta-data, network-config) into `dest`, 0600."""
    from builder.seed.render import render_host

    files = render_host(model)
    dest.mkdir(parents=True, exist_ok=True)
    for name in SEED_FILES:
        (dest / name).write_bytes(files[f"first-boot/{name}"])
        (dest / name).chmod(0o600)
    return dest


@contextlib.contextmanager
def guest_session(
    model: HostModel, workdir: Path, *, seed: Path | None = None, image: Path | None = None, keep: bool = False,
    boot_timeout: float | None = None, atlas_running: bool = True, atlas_name: str | None = None,
    routed_mgmt: bool = False,
) -> Iterator[Session]:
    """`atlas_running=False`: the NFS stand-in is not started (the test starts it with
    `access.nfs.start()`); `atlas_name`: the guest is told Atlas by this name instead of the
    harness address (a name nothing resolves makes Atlas unresolvable); `routed_mgmt`: MGMT is a
    routed network in namespaces (`session.mgmt_net`, builder.testbed.mgmtnet) instead of a forward."""
    from builder.seed.packages import package_plan
    from builder.testbed.boot import booted_guest
    from builder.testbed.image import build_image
    from builder.testbed.installrepo import installed_image
    from builder.testbed.mgmtnet import mgmt_forward
    from builder.testbed.mgmtnet import routed_mgmt as routed_mgmt_net
    from builder.testbed.services import harness_model, harness_services
    from builder.verify.ssh import generate_keypair

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    stand_in = image_from_file(image) if image else build_image()
    timings["image_ready"] = round(time.monotonic() - t0, 1)
    key, pub = generate_keypair(workdir / "ssh")
    with contextlib.ExitStack() as stack, \
            harness_services(model, workdir / "services", nfs_running=atlas_running) as svc:
        tmodel = harness_model(model, svc, extra_ssh_key=pub, atlas_name=atlas_name)
        seed_dir = workdir / "seed"
        shutil.rmtree(seed_dir, ignore_errors=True)
        if seed:
            adapt_seed(Path(seed), model, tmodel, pub, seed_dir)
        else:
            render_seed(tmodel, seed_dir)
        # The installed system: the minimal image + the autoinstall's `packages:`, installed as the stand-in
        # installer installs them (builder.testbed.installrepo). An image given as a file boots as it is.
        if not image:
            stand_in = installed_image(stand_in, package_plan(tmodel).install_time)
        timings["services_ready"] = round(time.monotonic() - t0, 1)
        kwargs = {"timeout": boot_timeout} if boot_timeout else {}
        mgmt_net = stack.enter_context(routed_mgmt_net(tmodel, workdir / "mgmt")) if routed_mgmt else None
        fwd_port = stack.enter_context(mgmt_forward(mgmt_net, tmodel.mgmt.ip, tmodel.ssh.port)) \
            if mgmt_net is not None and tmodel.mgmt.ip else None
        with booted_guest(tmodel, seed_dir, stand_in, workdir / "boot", identity_file=key,
                          guestfwds=svc.guestfwds(), nfs=svc.nfs, keep=keep, mgmt_net=mgmt_net,
                          **kwargs) as access:
            booted = timings["services_ready"]
            for k, v in access.timings.items():
                timings[k] = round(booted + v, 1)
            session = Session(tmodel, access, svc, pub, timings, mgmt_net=mgmt_net, mgmt_forward_port=fwd_port)
            try:
                yield session
            finally:
                session.close()


def settle(host: SshHost, timeout: float) -> bool:
    """Wait until boot's start-up jobs are done and prometheus-atlas.service no longer retries
    (SubState leaves "running"); False when the deadline came first (the checks then say why)."""
    from builder.seed.hostconfig import ATLAS_UNIT

    deadline = time.monotonic() + timeout
    host.run(f"timeout {int(timeout)} systemctl is-system-running --wait", timeout + 15)
    while time.monotonic() < deadline:
        state = host.run(f"systemctl show -p SubState --value {ATLAS_UNIT}", 30).stdout.strip()
        if state != "running":
            return True
        time.sleep(5)
    return False


def second_boot_checks(model: Any, only: list[str] | None = None) -> list[Any]:
    """The checks a second boot re-runs: SECOND_BOOT_CHECKS, narrowed by --only prefixes."""
    chosen = select(build_catalog(model), list(SECOND_BOOT_CHECKS))
    return select(chosen, only) if only else chosen


def verify_second_boot(
    s: Session, *, only: list[str] | None = None, on_result: Callable[[CheckResult], None] | None = None,
    name: str = "boot 2",
) -> BootSection | None:
    """Boot the guest again and run the second-boot checks; None when `only` selects none of them."""
    checks = second_boot_checks(s.model, only)
    if not checks:
        return None
    log.info("powering off for %s", name)
    timings = s.reboot()
    t = time.monotonic()
    results = run_checks(checks, s.context(), on_result)
    timings["checks_seconds"] = round(time.monotonic() - t, 1)
    return BootSection(name, tuple(results), timings, str(s.access.serial_log))


def verify_boots(
    s: Session, *, only: list[str] | None = None, on_result: Callable[[CheckResult], None] | None = None,
    started: float | None = None, second_boot: bool = True,
    before_reboot: Callable[[Session], None] | None = None,
) -> Report:
    """The first boot's checks (`verify_session`), then (unless `second_boot` is False) a second boot
    and its section. `before_reboot(session)` runs between the two (fault tests)."""
    report = verify_session(s, only=only, on_result=on_result, started=started)
    if not second_boot:
        return report
    if before_reboot is not None:
        before_reboot(s)
    section = verify_second_boot(s, only=only, on_result=on_result)
    if section is None:
        return report
    return replace(report, boots=(section,))


def verify_session(
    s: Session, *, only: list[str] | None = None, on_result: Callable[[CheckResult], None] | None = None,
    started: float | None = None,
) -> Report:
    t = time.monotonic()
    checks = select(build_catalog(s.model), only)
    results = run_checks(checks, s.context(), on_result)
    # Milestones are seconds since the run started; checks_seconds is the checks' own duration.
    timings = dict(s.timings)
    if started is not None:
        timings["checks_done"] = round(time.monotonic() - started, 1)
    timings["checks_seconds"] = round(time.monotonic() - t, 1)
    target = f"{s.access.user}@{s.access.ssh_host}:{s.access.ssh_port} (QEMU stand-in, MGMT forward)"
    return Report(s.model.host.hostname, target, tuple(results), timings, str(s.access.serial_log),
                  target_info=STANDIN)
