"""`builder validate --online`: every pin checked against real-shaped repository indices on loopback.

The mirror (builder.testbed.mirror) has Ubuntu's newest-only pockets, the retired 550-server branch,
Docker's and NVIDIA's many versions and the toolkit's exact-version dependencies.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from builder.cli import main
from builder.media.serve import serving
from builder.model import load_model
from builder.seed.debian import compare_versions, parse_relations, parse_stanzas, satisfies
from builder.seed.packages import TOOLKIT_FAMILY, package_plan
from builder.seed.pins import check_pins_online, parse_overrides
from builder.testbed.mirror import write_mirror
from tests.conftest import DEFAULT_MODEL

OLD_DRIVER = "550.127.05-0ubuntu0.24.04.1"
SECURITY_DRIVER = "580.173.02-0ubuntu0.24.04.1"  # only noble-security still has it
APT_MODULES_ERROR = ("linux-modules-nvidia-580-server-generic : Depends: nvidia-kernel-common-580-server "
                     "(>= 580.178.04) but 580.173.02-0ubuntu0.24.04.1 is to be installed")
APT_TOOLKIT_ERROR = ("nvidia-container-toolkit : Depends: nvidia-container-toolkit-base (= 1.17.8-1) "
                     "but 1.18.2-1 is to be installed")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    m = write_mirror(root / "www")
    with serving(root / "www", access_log=root / "access.log") as http:
        base = f"http://127.0.0.1:{http.server_address[1]}"
        yield m, base, m.overrides(base)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _old_model_text() -> str:
    """Today's values in the new shape: the 550-server driver pin and the toolkit at 1.17.8-1."""
    text = DEFAULT_MODEL.read_text()
    return (text.replace("branch: 580-server", "branch: 550-server")
                .replace("580.178.04-0ubuntu0.24.04.1", OLD_DRIVER)
                .replace("version: 1.18.2-1", "version: 1.17.8-1"))


# ---------------------------------------------------------------- Debian version semantics

VERSION_TABLE = [  # (a, b, sign of a - b) as dpkg --compare-versions decides
    ("1.0", "1.0", 0), ("1.0", "1.1", -1), ("1.10", "1.9", 1), ("1.0~rc1", "1.0", -1), ("1.0~~", "1.0~", -1),
    ("1.0", "1.0+b1", -1), ("1:0.1", "2.0", 1), ("0:1.0", "1.0", 0), ("1.0-1", "1.0-1ubuntu1", -1),
    ("1.0a", "1.0", 1), ("1.0-0ubuntu0.24.04.2", "1.0-0ubuntu0.24.04.10", -1), ("1.18.0-1", "1.17.8-1", 1),
    ("5:28.5.2-1~ubuntu.24.04~noble", "5:29.0.0-1~ubuntu.24.04~noble", -1),
    ("550.163.01-0ubuntu0.24.04.2", "550.163.01-0ubuntu0.24.04.1", 1), ("6.8.0-149.149", "6.8.0-31.31", 1),
    ("2.0.0", "1.18.2-1", 1), ("1.2.3-1", "1.2.3-1.", -1), ("a", "+", -1), ("1.001", "1.1", 0),
]


@pytest.mark.parametrize(("a", "b", "sign"), VERSION_TABLE)
def test_version_comparison_table(a: str, b: str, sign: int) -> None:
    got = compare_versions(a, b)
    assert (got > 0) - (got < 0) == sign
    back = compare_versions(b, a)
    assert (back > 0) - (back < 0) == -sign


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="dpkg not installed")
def test_version_comparison_agrees_with_dpkg() -> None:
    for a, b, _ in VERSION_TABLE:
        for op, want in (("lt", lambda c: c < 0), ("eq", lambda c: c == 0), ("gt", lambda c: c > 0)):
            dpkg = subprocess.run(["dpkg", "--compare-versions", a, op, b]).returncode == 0
            assert dpkg == want(compare_versions(a, b)), (a, op, b)


def test_relations_and_stanzas() -> None:
    rel = parse_relations("libc6 (>= 2.34), a | b:any (= 1.0-1) [amd64], c (<< 2.0.0), d (>> 1)")
    assert [[(x.name, x.op, x.version) for x in clause] for clause in rel] == [
        [("libc6", ">=", "2.34")], [("a", None, None), ("b", "=", "1.0-1")], [("c", "<<", "2.0.0")],
        [("d", ">>", "1")]]
    assert satisfies("1.17.8-1", ">=", "1.17.8") and not satisfies("1.17.8-1", "=", "1.18.2-1")
    assert satisfies("1.99", "<<", "2.0.0") and not satisfies("2.0.0", "<<", "2.0.0")
    st = parse_stanzas("Package: a\nVersion: 1\nDescription: one\n more\n\n\nPackage: b\nVersion: 2\n")
    assert [s["Package"] for s in st] == ["a", "b"] and st[0]["Description"] == "one\nmore"


# ---------------------------------------------------------------- pins against the mirror

def test_default_model_pins_resolve(mirror) -> None:
    _, _, ov = mirror
    report = check_pins_online(load_model(), 10, ov)
    assert report.status == "passed", "\n".join(map(str, report.problems))
    assert report.problems == ()


def test_todays_toolkit_pin_alone_fails_like_apt(mirror, write_model) -> None:
    _, _, ov = mirror
    text = _old_model_text()
    model = load_model(write_model(text=text))
    plan = package_plan(model)
    # Today's render pinned nvidia-container-toolkit alone, in the one transaction and in the preferences.
    alone = dataclasses.replace(plan, first_boot=tuple(p for p in plan.first_boot if p.name not in TOOLKIT_FAMILY[1:]))
    report = check_pins_online(model, 10, ov, plan=alone)
    assert report.status == "failed"
    msgs = {str(p) for p in report.errors}
    file = str(model.source_path)
    tk_line = _line_of(text, "version: 1.17.8-1")
    want_tk = f"{file}:{tk_line}: nvidia.container_toolkit.version: {APT_TOOLKIT_ERROR}"
    assert any(m.startswith(want_tk) for m in msgs), msgs
    drv_line = _line_of(text, OLD_DRIVER)
    want = (f"{file}:{drv_line}: nvidia.driver.version: E: Version '{OLD_DRIVER}' for "
            "'nvidia-headless-no-dkms-550-server' was not found")
    assert any(m.startswith(want) for m in msgs), msgs
    # Pinning the whole family at the same version resolves the toolkit (the driver pin stays wrong).
    family = check_pins_online(model, 10, ov, plan=plan)
    assert not [p for p in family.errors if "nvidia-container" in p.message]
    assert [p for p in family.errors if OLD_DRIVER in p.message]


def test_missing_toolkit_version_is_reported_for_the_family(mirror, write_model) -> None:
    _, _, ov = mirror
    text = DEFAULT_MODEL.read_text().replace("version: 1.18.2-1", "version: 1.18.9-1")
    model = load_model(write_model(text=text))
    report = check_pins_online(model, 10, ov)
    missing = {p.message.split("'")[3] for p in report.errors if "was not found" in p.message}
    assert missing == set(TOOLKIT_FAMILY)
    assert {p.line for p in report.errors} == {_line_of(text, "version: 1.18.9-1")}


def test_retired_branch_is_only_transitional(mirror, write_model) -> None:
    """noble-updates' 550-server is a transitional build: it resolves, but installs another branch."""
    _, _, ov = mirror
    text = DEFAULT_MODEL.read_text().replace("branch: 580-server", "branch: 550-server") \
        .replace("580.178.04-0ubuntu0.24.04.1", "550.163.01-0ubuntu0.24.04.2")
    report = check_pins_online(load_model(write_model(text=text)), 10, ov)
    assert report.status == "failed"
    msgs = [p.message for p in report.errors]
    assert any("nvidia-headless-no-dkms-550-server 550.163.01-0ubuntu0.24.04.2 is only a transitional package to "
               "nvidia-headless-no-dkms-570-server" in m for m in msgs), msgs
    # noble's 570-server says it only by depending on the 580 package: found all the same.
    text = text.replace("branch: 550-server", "branch: 570-server") \
        .replace("550.163.01-0ubuntu0.24.04.2", "570.211.01-0ubuntu1.24.04.1")
    report = check_pins_online(load_model(write_model(text=text, name="570.yaml")), 10, ov)
    assert any("transitional package to nvidia-utils-580-server" in p.message for p in report.errors), report.problems


class MemoryIndexSource:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def fetch(self, url: str) -> bytes | None:
        return self.files.get(url)


def test_modules_left_behind_by_the_kernel_are_reported(write_model) -> None:
    """A branch whose prebuilt modules stop at an older ABI than the kernel metapackage installs."""
    from builder.seed.pins import check_pins_report, index_files
    from builder.testbed import mirror as mk

    model = load_model()
    ov = {"ubuntu": "mem://u", "docker": "mem://d", "nvidia": "mem://n"}
    old_abi = [p for p in mk.kernel("6.8.0-149", "6.8.0-149.149") if "6.8.0-149" in p.name]
    pins = {"main": [*mk.BASE, *mk.kernel("6.8.0-151", "6.8.0-151.151"), *old_abi],
            "restricted": [*mk.driver_branch("580-server", "580.178.04-0ubuntu0.24.04.1"),
                           *mk.prebuilt_modules("580-server", "6.8.0-149", "6.8.0-149.149",
                                                "580.178.04-0ubuntu0.24.04.1")]}
    files = {}
    for f in index_files(model, ov):
        pkgs = (mk.docker_packages() if f.repo == "docker" else mk.toolkit_packages() if f.repo == "nvidia"
                else pins.get(f.label.rsplit("/", 1)[1], []) if "noble-updates" in f.label else [])
        files[f.url] = "\n".join(p.stanza("pool") for p in pkgs).encode()
    report = check_pins_report(model, MemoryIndexSource(files), ov)
    assert report.status == "failed"
    assert [p.message for p in report.errors] == [
        "linux-modules-nvidia-580-server-generic 6.8.0-149.149 brings NVIDIA modules for 6.8.0-149, but "
        "linux-generic 6.8.0-151.151 installs kernel 6.8.0-151: after the reboot the nvidia module would not load "
        "(is the branch still built for the current kernel?) [NVIDIA driver step]"]
    assert report.errors[0].path == "nvidia.driver.kernel_flavour"


def test_partial_when_a_vendor_repository_is_unreachable(mirror) -> None:
    _, _, ov = mirror
    closed = f"http://127.0.0.1:{_closed_port()}"
    report = check_pins_online(load_model(), 5, {**ov, "docker": closed})
    assert report.status == "partial" and not report.problems
    assert len(report.skipped) == 1 and report.skipped[0].startswith("first-boot `packages:`")
    assert "127.0.0.1" in report.detail


def test_a_version_only_in_security_still_resolves(mirror, write_model) -> None:
    """Ubuntu's pockets each keep one version: the older 580 build survives only in noble-security."""
    _, _, ov = mirror
    text = DEFAULT_MODEL.read_text().replace("580.178.04-0ubuntu0.24.04.1", SECURITY_DRIVER)
    report = check_pins_online(load_model(write_model(text=text)), 10, ov)
    # The pin exists (its (= V) siblings follow it through the family pin), but the newest prebuilt
    # modules want a newer nvidia-kernel-common than the pin brings.
    assert not [p for p in report.errors if "was not found" in p.message]
    assert any(APT_MODULES_ERROR in p.message for p in report.errors), report.problems


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mirror_is_skipped_by_name(capsys) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    ov = {name: url for name in ("ubuntu", "docker", "nvidia")}
    report = check_pins_online(load_model(), 5, ov)
    assert report.status == "skipped" and "unreachable" in report.detail and "127.0.0.1" in report.detail
    args = ["validate", "--online", "--online-timeout", "5"] + [f"--mirror-override={k}={v}" for k, v in ov.items()]
    assert main(args) == 0
    assert "package pins (online)  skipped" in capsys.readouterr().out


def test_cli_validate_online_reports_file_line(mirror, write_model, capsys) -> None:
    _, _, ov = mirror
    path = write_model(text=_old_model_text())
    args = ["validate", "--host", str(path), "--online"] + [f"--mirror-override={k}={v}" for k, v in ov.items()]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{path}:{_line_of(_old_model_text(), OLD_DRIVER)}: nvidia.driver.version: E: Version" in err
    assert main(["validate", "--online"] + [f"--mirror-override={k}={v}" for k, v in ov.items()]) == 0
    assert "package pins (online)  passed" in capsys.readouterr().out


def test_bad_override_is_a_clear_error() -> None:
    from builder.errors import BuilderError

    with pytest.raises(BuilderError, match="NAME=URL"):
        parse_overrides(["debian=http://x"])
    assert parse_overrides(["ubuntu=http://a/, docker=http://b"]) == {"ubuntu": "http://a", "docker": "http://b"}


# ---------------------------------------------------------------- real apt on the same mirror

def _apt(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    opts = [
        f"-oDir={root}", f"-oDir::State::status={root}/status", "-oDir::Etc::sourceparts=-",
        f"-oDir::Etc::sourcelist={root}/sources.list", f"-oDir::Etc::TrustedParts={root}/trusted.gpg.d",
        f"-oDir::Etc::preferencesparts={root}/preferences.d", f"-oDir::Etc::preferences={root}/preferences",
        "-oAPT::Architecture=amd64", "-oAPT::Architectures::=amd64", "-oDebug::NoLocking=1",
        "-oAPT::Sandbox::User=root", "-oAcquire::Languages=none", "-oAPT::Get::List-Cleanup=0",
    ]
    return subprocess.run(["apt-get", *opts, *args], capture_output=True, text=True, timeout=120)


def _apt_root(tmp_path: Path, sources: str, preferences: str) -> Path:
    root = tmp_path / "aptroot"
    for sub in ("trusted.gpg.d", "preferences.d", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
        (root / sub).mkdir(parents=True)
    (root / "status").write_text("")
    (root / "sources.list").write_text(sources)
    (root / "preferences.d" / "90-prometheus-pins").write_text(preferences)
    upd = _apt(root, "update")
    assert upd.returncode == 0, upd.stdout + upd.stderr
    return root


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="apt-get not installed")
def test_real_apt_resolves_the_rendered_transactions(mirror, tmp_path, write_model) -> None:
    m, base, _ = mirror
    plan = package_plan(load_model())
    root = _apt_root(tmp_path / "new", m.sources_list(base), plan.apt_preferences)
    for what, pins in (("installer", plan.install_time), ("first boot", [p.apt_arg for p in plan.first_boot]),
                       ("driver", [p.apt_arg for p in plan.driver])):
        sim = _apt(root, "install", "-s", "--no-install-recommends", *pins)
        assert sim.returncode == 0, f"{what}: {sim.stdout}{sim.stderr}"
    sim = _apt(root, "install", "-s", *[p.apt_arg for p in plan.first_boot])
    assert "Inst nvidia-container-toolkit-base (1.18.2-1" in sim.stdout
    assert "Inst docker-ce (5:29.0.0-1~ubuntu.24.04~noble" in sim.stdout  # unpinned: newest
    drv = _apt(root, "install", "-s", *[p.apt_arg for p in plan.driver])
    assert "Inst linux-modules-nvidia-580-server-6.8.0-151-generic (6.8.0-151.151" in drv.stdout
    assert "Inst linux-image-6.8.0-151-generic (6.8.0-151.151" in drv.stdout

    # Today's one transaction (toolkit pinned alone) fails in apt with the message validate quotes.
    old = package_plan(load_model(write_model(text=_old_model_text())))
    alone = [p for p in old.first_boot if p.name not in TOOLKIT_FAMILY[1:]]
    prefs = "Package: nvidia-container-toolkit\nPin: version 1.17.8-1\nPin-Priority: 1001\n"
    root = _apt_root(tmp_path / "old", m.sources_list(base), prefs)
    sim = _apt(root, "install", "-s", *[p.apt_arg for p in alone])
    assert sim.returncode != 0
    assert APT_TOOLKIT_ERROR in sim.stdout + sim.stderr

    # The driver family pin (a preferences regex) makes apt take the siblings at the pinned version too:
    # with the noble-security build, apt then stops exactly where validate does, at the prebuilt modules.
    sec = package_plan(load_model(write_model(
        text=DEFAULT_MODEL.read_text().replace("580.178.04-0ubuntu0.24.04.1", SECURITY_DRIVER), name="sec.yaml")))
    root = _apt_root(tmp_path / "sec", m.sources_list(base), sec.apt_preferences)
    sim = _apt(root, "install", "-s", *[p.apt_arg for p in sec.driver])
    assert sim.returncode != 0
    module_meta, _, dep = APT_MODULES_ERROR.partition(" : ")
    assert f" {module_meta} : " in sim.stdout and dep in sim.stdout, sim.stdout  # apt: one line per Depends
    without_modules = [p.apt_arg for p in sec.driver if p.name != sec.modules_meta]
    sim = _apt(root, "install", "-s", *without_modules)
    assert sim.returncode == 0, sim.stdout + sim.stderr
    assert "Inst nvidia-kernel-common-580-server (580.173.02-0ubuntu0.24.04.1" in sim.stdout


def test_docker_pin_checked_in_the_one_transaction(mirror, write_model) -> None:
    _, _, ov = mirror
    good = DEFAULT_MODEL.read_text().replace("  version: null ", '  version: "5:28.5.2-1~ubuntu.24.04~noble" ')
    assert check_pins_online(load_model(write_model(text=good)), 10, ov).status == "passed"
    bad = good.replace("5:28.5.2-1", "5:28.1.1-1")
    report = check_pins_online(load_model(write_model(text=bad, name="bad.yaml")), 10, ov)
    assert {(p.path, p.line) for p in report.errors} == {("docker.version", _line_of(bad, "5:28.1.1-1"))}
    assert any("E: Version '5:28.1.1-1~ubuntu.24.04~noble' for 'docker-ce' was not found" in p.message
               for p in report.errors)


def test_overrides_from_the_environment(mirror, monkeypatch) -> None:
    _, _, ov = mirror
    monkeypatch.setenv("BUILDER_MIRROR_OVERRIDES", ",".join(f"{k}={v}" for k, v in ov.items()))
    report = check_pins_online(load_model(), 10)
    assert report.status == "passed" and "127.0.0.1" not in report.detail
    monkeypatch.setenv("BUILDER_MIRROR_OVERRIDES", f"docker=http://127.0.0.1:{_closed_port()}")
    assert check_pins_online(load_model(), 5, ov).status == "passed"  # explicit overrides win over the env
