"""Check the package plan's pins against the real repository indices before a build.

`builder validate --online` downloads the `Packages` indices of every enabled source (Ubuntu's pockets,
Docker's repo, NVIDIA's flat repo), then replays each transaction of the plan the way apt would decide it:
explicit `name=version` requests first, every other package at its candidate (the newest version, unless
the plan's preferences pin it), then each `Depends`/`Pre-Depends` clause of everything chosen, transitively.
Every pin that does not exist, and every dependency the chosen versions cannot satisfy, becomes a Problem
at the model field that decided it, worded like apt's own error. Conflicts/Breaks are not evaluated.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cmp_to_key
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from builder.errors import BuilderError, Problem
from builder.model import HostModel
from builder.model.typedparse import Collector
from builder.model.yamlsrc import PathKey, Source, load_yaml_file
from builder.seed.debian import Alternative, BinaryPackage, compare_versions, parse_stanzas, satisfies
from builder.seed.packages import TOOLKIT_FAMILY, FamilyPin, PackagePlan, Pin, package_plan

UBUNTU_COMPONENTS = ("main", "restricted", "universe", "multiverse")
ARCH = "amd64"
OVERRIDES_ENV = "BUILDER_MIRROR_OVERRIDES"
REPO_NAMES = ("ubuntu", "ubuntu-security", "docker", "nvidia")


@dataclass(frozen=True)
class IndexFile:
    repo: str  # one of REPO_NAMES (what --mirror-override names)
    label: str  # e.g. "ubuntu noble-updates/restricted", as in apt's output
    url: str  # the uncompressed Packages URL; Packages.gz / .xz are tried first where the repo has them
    field: PathKey  # the model field naming this repository
    compressed: bool = True


class IndexUnavailable(Exception):
    """The repository could not be reached at all (offline, DNS, refused, timed out)."""


class IndexSource(Protocol):
    def fetch(self, url: str) -> bytes | None:
        """The file's bytes; None when the server answers 404; IndexUnavailable when unreachable."""
        ...


class HttpIndexSource:
    """Reads indices over HTTP(S) with `requests`."""

    def __init__(self, timeout: float = 30.0) -> None:
        import requests

        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "builder-validate (pin check)"

    def fetch(self, url: str) -> bytes | None:
        import requests

        try:
            resp = self.session.get(url, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise IndexUnavailable(f"{urlsplit(url).netloc}: {type(exc).__name__}") from None
        if resp.status_code == 404:
            return None
        if resp.status_code in (403, 407) or resp.status_code >= 500:  # a proxy refusing, a server down
            raise IndexUnavailable(f"{urlsplit(url).netloc}: HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise BuilderError(f"reading {url}: HTTP {resp.status_code}")
        return resp.content


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """`NAME=URL` items (from --mirror-override or $BUILDER_MIRROR_OVERRIDES, comma/space separated)."""
    out: dict[str, str] = {}
    for item in items:
        for part in item.replace(",", " ").split():
            name, sep, url = part.partition("=")
            if not sep or name not in REPO_NAMES or not url:
                raise BuilderError(f"bad mirror override {part!r}",
                                   hint=f"expected NAME=URL, NAME one of {', '.join(REPO_NAMES)}")
            out[name] = url.rstrip("/")
    return out


def overrides_from_env() -> dict[str, str]:
    return parse_overrides([os.environ.get(OVERRIDES_ENV, "")])


def index_files(model: HostModel, overrides: Mapping[str, str] | None = None) -> list[IndexFile]:
    ov = dict(overrides or {})
    apt, code = model.apt, model.os.codename
    ubuntu = ov.get("ubuntu", apt.ubuntu_mirror.rstrip("/"))
    # A mirror override for "ubuntu" carries every pocket unless "ubuntu-security" is overridden too.
    security = ov.get("ubuntu-security") or (ov.get("ubuntu") or apt.ubuntu_security_mirror or apt.ubuntu_mirror)
    security = security.rstrip("/")
    out = []
    for pocket, base, repo, fld in ((code, ubuntu, "ubuntu", "ubuntu_mirror"),
                                    (f"{code}-updates", ubuntu, "ubuntu", "ubuntu_mirror"),
                                    (f"{code}-security", security, "ubuntu-security",
                                     "ubuntu_security_mirror" if apt.ubuntu_security_mirror else "ubuntu_mirror")):
        for comp in UBUNTU_COMPONENTS:
            out.append(IndexFile(repo, f"ubuntu {pocket}/{comp}",
                                 f"{base}/dists/{pocket}/{comp}/binary-{ARCH}/Packages", ("apt", fld)))
    for name in ("docker", "nvidia"):
        r = getattr(apt, name)
        base = ov.get(name, r.url.rstrip("/"))
        if r.suite.endswith("/"):  # flat repository: `deb URL /`
            suite = r.suite.strip("/")
            url = f"{base}/{suite + '/' if suite else ''}Packages"
            out.append(IndexFile(name, f"{name} {r.suite}", url, ("apt", name, "url"), compressed=False))
        else:
            url = f"{base}/dists/{r.suite}/{r.component}/binary-{ARCH}/Packages"
            out.append(IndexFile(name, f"{name} {r.suite}/{r.component}", url, ("apt", name, "url"),
                                 compressed=False))
    return out


def _read(source: IndexSource, f: IndexFile) -> bytes | None:
    if f.compressed:
        gz = source.fetch(f.url + ".gz")
        if gz is not None:
            return gzip.decompress(gz)
        xz = source.fetch(f.url + ".xz")
        if xz is not None:
            return lzma.decompress(xz)
    return source.fetch(f.url)


@dataclass
class Indices:
    """Every version of every package the enabled sources list (amd64 + all)."""

    packages: dict[str, list[BinaryPackage]] = field(default_factory=dict)
    providers: dict[str, list[BinaryPackage]] = field(default_factory=dict)
    read: list[str] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)  # repo name -> why

    def add(self, pkg: BinaryPackage) -> None:
        versions = self.packages.setdefault(pkg.name, [])
        if any(p.version == pkg.version for p in versions):
            return
        versions.append(pkg)
        for prov in pkg.provides:
            self.providers.setdefault(prov.name, []).append(pkg)


def load_indices(model: HostModel, source: IndexSource, overrides: Mapping[str, str] | None,
                 c: Collector) -> Indices:
    """Read every index; a repository that cannot be reached is recorded in `unreachable`, not fatal."""
    idx = Indices()
    for f in index_files(model, overrides):
        if f.repo in idx.unreachable:
            continue
        try:
            data = _read(source, f)
        except IndexUnavailable as exc:
            idx.unreachable[f.repo] = str(exc)
            continue
        if data is None:
            if f.repo in ("docker", "nvidia") or f.label.endswith("/main"):
                c.add(f.field, f"repository index not found (HTTP 404): {f.url}; apt-get update would fail")
            continue
        idx.read.append(f.label)
        for st in parse_stanzas(data.decode("utf-8", errors="replace")):
            pkg = BinaryPackage.from_stanza(st, f.label)
            if pkg is not None and pkg.architecture in (ARCH, "all"):
                idx.add(pkg)
    return idx


# ---------------------------------------------------------------- one transaction, as apt decides it

@dataclass(frozen=True)
class Finding:
    pin: Pin
    message: str
    severity: str = "error"


def _by_version(a: BinaryPackage, b: BinaryPackage) -> int:
    return compare_versions(a.version, b.version)


class Transaction:
    """One `apt-get install` as apt's solver decides it: explicit requests first, then candidates only
    (apt never picks a non-candidate version of a dependency by itself: that is why families are pinned)."""

    def __init__(self, idx: Indices, preferences: Iterable[Pin], families: Iterable[FamilyPin] = ()) -> None:
        self.idx = idx
        self.prefs = {p.name: p.version for p in preferences if p.version}
        self.families = [(re.compile(f.pattern), f.version) for f in families]
        self.chosen: dict[str, tuple[BinaryPackage, Pin]] = {}

    def _newest(self, name: str) -> BinaryPackage | None:
        versions = self.idx.packages.get(name) or []
        if not versions:
            return None
        return max(versions, key=cmp_to_key(_by_version))

    def candidate(self, name: str) -> BinaryPackage | None:
        """apt's candidate: the preference-pinned version when it exists (priority 1001), else the newest."""
        pinned = self.prefs.get(name) or next((v for rx, v in self.families if rx.search(name)), None)
        if pinned:
            for p in self.idx.packages.get(name, []):
                if p.version == pinned:
                    return p
        return self._newest(name)

    def _version_of(self, name: str) -> BinaryPackage | None:
        return self.chosen[name][0] if name in self.chosen else self.candidate(name)

    def _provider(self, alt: Alternative) -> BinaryPackage | None:
        for prov in self.idx.providers.get(alt.name, []):
            if self._version_of(prov.name) is not prov:
                continue  # apt only looks at the versions it would install
            for given in prov.provides:
                if given.name == alt.name and (alt.op is None or (given.op == "=" and given.version is not None
                                                                  and satisfies(given.version, alt.op, alt.version))):
                    return prov
        return None

    def _why_not(self, alt: Alternative) -> str:
        have = self._version_of(alt.name)
        if have is not None:
            return f"{alt} but {have.version} is to be installed"
        if alt.name in self.idx.providers:
            return f"{alt} but it is a virtual package" if alt.op else f"{alt} but it is not going to be installed"
        return f"{alt} but it is not installable"

    def run(self, pins: Iterable[Pin]) -> list[Finding]:
        findings: list[Finding] = []
        queue: list[str] = []
        for pin in pins:
            versions = self.idx.packages.get(pin.name, [])
            if pin.version:
                match = next((p for p in versions if p.version == pin.version), None)
                if match is None:
                    avail = ", ".join(f"{p.version} in {p.origin}" for p in versions) or "no version in any source"
                    findings.append(Finding(pin, f"E: Version '{pin.version}' for '{pin.name}' was not found "
                                                 f"(available: {avail})"))
                    continue
            else:
                match = self.candidate(pin.name)
                if match is None:
                    prov = self._provider(Alternative(pin.name))
                    if prov is None:
                        findings.append(Finding(pin, f"E: Unable to locate package {pin.name}"))
                        continue
                    match = prov
            if match.name in self.chosen and self.chosen[match.name][0] is not match:
                findings.append(Finding(pin, f"{pin.name} is requested at {match.version} and at "
                                             f"{self.chosen[match.name][0].version}"))
                continue
            self.chosen[match.name] = (match, pin)
            queue.append(match.name)
            if match.transitional:
                findings.append(Finding(pin, f"{pin.name} {match.version} is only a transitional package to "
                                             f"{match.transitional}: the branch has moved on; model that one"))
        while queue:
            pkg, root = self.chosen[queue.pop(0)]
            for clause in pkg.depends:
                if self._satisfy(clause, root, queue):
                    continue
                why = " or ".join(self._why_not(a) for a in clause)
                findings.append(Finding(root, f"{pkg.name} : Depends: {why}"))
        return findings

    def _satisfy(self, clause: tuple[Alternative, ...], root: Pin, queue: list[str]) -> bool:
        for alt in clause:
            if alt.name in self.chosen:
                if satisfies(self.chosen[alt.name][0].version, alt.op, alt.version):
                    return True
                continue
            cand = self.candidate(alt.name)
            if cand is not None:
                if satisfies(cand.version, alt.op, alt.version):
                    self.chosen[alt.name] = (cand, root)
                    queue.append(alt.name)
                    return True
                continue
            prov = self._provider(alt)
            if prov is not None:
                if prov.name not in self.chosen:
                    self.chosen[prov.name] = (prov, root)
                    queue.append(prov.name)
                return True
        return False


# ---------------------------------------------------------------- entry points

def _collector(model: HostModel) -> Collector:
    try:
        src = load_yaml_file(Path(model.source_path))
    except BuilderError:
        src = Source(file=str(model.source_path), data=None)
    return Collector(src)


def _needs(plan: PackagePlan) -> dict[str, set[str]]:
    """Which repositories each transaction reads from (a transaction is skipped when one is unreachable)."""
    first = {"ubuntu", "ubuntu-security", "docker"}
    if any(p.name in TOOLKIT_FAMILY for p in plan.first_boot):
        first.add("nvidia")
    return {INSTALLER: {"ubuntu", "ubuntu-security"}, FIRST_BOOT: first, DRIVER: {"ubuntu", "ubuntu-security"}}


INSTALLER, FIRST_BOOT, DRIVER = ("installer `packages:`", "first-boot `packages:` (one apt transaction)",
                                 "NVIDIA driver step")


def check_plan(plan: PackagePlan, idx: Indices, c: Collector) -> tuple[list[str], list[str]]:
    """Replay the plan's transactions against the indices, adding each finding to `c`.

    Returns (checked, skipped): the transactions replayed, and those skipped (with why) because a
    repository they need was unreachable."""
    checked, skipped = [], []
    transactions = (
        (INSTALLER, [Pin(n, None, ("apt", "ubuntu_mirror")) for n in plan.install_time]),
        (FIRST_BOOT, list(plan.first_boot)),
        (DRIVER, list(plan.driver)),
    )
    needs = _needs(plan)
    for what, pins in transactions:
        if not pins:
            continue
        missing = sorted(needs[what] & set(idx.unreachable))
        if missing:
            skipped.append(f"{what} ({'; '.join(idx.unreachable[r] for r in missing)})")
            continue
        checked.append(what)
        tx = Transaction(idx, plan.preferences, plan.family_pins)
        for f in tx.run(pins):
            c.add(f.pin.field, f"{f.message} [{what}]", f.severity)
        if what == DRIVER:
            _check_abi(plan, tx, c, what)
    return checked, skipped


def _check_abi(plan: PackagePlan, tx: Transaction, c: Collector, what: str) -> None:
    """The signed modules apt would install must be built for the kernel the flavour's metapackage installs."""
    if plan.modules_meta not in tx.chosen or plan.kernel_meta not in tx.chosen:
        return
    flavour = plan.kernel_meta.removeprefix("linux-")
    image_meta = tx.chosen.get(f"linux-image-{flavour}")
    image_rx = re.compile(rf"linux-image-(\d[\w.]*-\d+)-{re.escape(flavour)}")
    kernel_abis = {m.group(1) for clause in (image_meta[0].depends if image_meta else ()) for alt in clause
                   if (m := image_rx.fullmatch(alt.name))}
    mod_rx = re.compile(rf"linux-modules-nvidia-.+-(\d[\w.]*-\d+)-{re.escape(flavour)}")
    module_abis = {m.group(1) for name in tx.chosen if (m := mod_rx.fullmatch(name))}
    if kernel_abis and not kernel_abis & module_abis:
        field = tx.chosen[plan.modules_meta][1].field
        built = ", ".join(sorted(module_abis)) or "no kernel"
        c.add(field, f"{plan.modules_meta} {tx.chosen[plan.modules_meta][0].version} brings NVIDIA modules for "
                     f"{built}, but {plan.kernel_meta} {tx.chosen[plan.kernel_meta][0].version} installs kernel "
                     f"{', '.join(sorted(kernel_abis))}: after the reboot the nvidia module would not load (is the "
                     f"branch still built for the current kernel?) [{what}]")


@dataclass(frozen=True)
class PinReport:
    status: str  # passed | failed | partial (some transactions skipped, no error) | skipped (nothing checked)
    problems: tuple[Problem, ...] = ()
    detail: str = ""
    skipped: tuple[str, ...] = ()  # the transactions not checked, each with why

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def check_pins_report(model: HostModel, indices: IndexSource, overrides: Mapping[str, str] | None = None,
                      plan: PackagePlan | None = None) -> PinReport:
    plan = plan or package_plan(model)
    c = _collector(model)
    idx = load_indices(model, indices, overrides, c)
    checked, skipped_list = check_plan(plan, idx, c)
    skipped = tuple(skipped_list)
    problems = tuple(c.problems)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        status = "failed"
    elif not checked:
        status = "skipped"
    else:
        status = "partial" if skipped else "passed"
    read = sorted({f.split()[0] for f in idx.read})
    detail = (f"{'; '.join(checked)} replayed against {', '.join(read) or 'nothing'}"
              if checked else "package pins not checked")
    if skipped:
        detail += "; skipped, repository unreachable: " + ", ".join(skipped)
    return PinReport(status, problems, detail, skipped)


def check_pins(model: HostModel, indices: IndexSource, overrides: Mapping[str, str] | None = None,
               plan: PackagePlan | None = None) -> list[Problem]:
    """Every pin of the model's package plan that is missing or does not resolve, as file:line problems.

    Transactions that need an unreachable repository are skipped (see check_pins_report for which)."""
    return list(check_pins_report(model, indices, overrides, plan).problems)


def check_pins_online(model: HostModel, timeout: float = 30.0, overrides: Mapping[str, str] | None = None,
                      plan: PackagePlan | None = None) -> PinReport:
    """Download the real indices and check the plan; what cannot be reached is reported skipped, by name."""
    ov = overrides_from_env() | dict(overrides or {})
    return check_pins_report(model, HttpIndexSource(timeout), ov, plan)
