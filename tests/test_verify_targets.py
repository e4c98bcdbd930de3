"""Verify targets (standin, disk, ssh) without a VM: parsing, which checks apply to which kind,
not-applicable (QEMU: no GPU) versus failure (live host: GPU missing), the health checks, the
report naming its target, and the live-host errors that must stop before anything connects or is written."""

from __future__ import annotations

import json
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.cli import main
from builder.errors import BuilderError
from builder.model import load_model
from builder.verify.catalog import build_catalog, select
from builder.verify.core import Context, Endpoint, run_checks
from builder.verify.host import FakeHost, Result
from builder.verify.live import _ssh_failure, fingerprint, key_id, parse_endpoint, public_key_of
from builder.verify.report import Report, junit_xml, render_table, report_dict
from builder.verify.ssh import generate_keypair
from builder.verify.targets import KINDS, STANDIN, Target, disk_target, parse_target, ssh_target
from tests.verify_canned import ENDPOINTS, EPHEMERAL, FakeOutside, df_scratch, healthy_responses, nfs_probe

MODEL = load_model(None)
LIVE = ssh_target("10.99.0.20", 22, "ops")
GPU_DEVICE = {"grep -lix 0x10de": Result(0, "/sys/bus/pci/devices/0000:01:00.0/vendor\n")}
GPU_CHECKS = {"nvidia.smi", "health.gpu", "nvidia.gpu-name"}  # n/a inside QEMU


def gpu_ok(model: Any = MODEL) -> dict[str, Result]:
    upstream = model.nvidia.driver.version.split("-")[0]
    return {**GPU_DEVICE,
            "nvidia-smi --query-gpu": Result(0, f"{model.nvidia.gpu}, {upstream}\n"),
            "nvidia-smi --query-gpu=name --format": Result(0, f"{model.nvidia.gpu}\n"),
            "nvidia-smi -L": Result(0, f"GPU 0: {model.nvidia.gpu} (UUID: GPU-1234)\n")}


def run_on(target: Target, changes: dict[str, Any] | None = None, model: Any = MODEL,
           only: list[str] | None = None) -> dict[str, Any]:
    responses = {**healthy_responses(model), **(changes or {})}
    ctx = Context(FakeHost(responses), model, ENDPOINTS, FakeOutside(model), extra_authorized_keys=(EPHEMERAL,),
                  target=target)
    return {r.check.id: r for r in run_checks(select(build_catalog(model), only), ctx)}


def by_status(results: dict[str, Any], status: str) -> set[str]:
    return {k for k, r in results.items() if r.status == status}


# --- parsing -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,kind,fields", [
    ("standin", "standin", {}),
    ("stand-in", "standin", {}),
    ("disk:output/prometheus.qcow2", "disk", {"path": Path("output/prometheus.qcow2"), "sha256": None}),
    ("build/disk.raw", "disk", {"path": Path("build/disk.raw")}),
    ("ssh://ops@10.99.0.20", "ssh", {"user": "ops", "host": "10.99.0.20", "port": 22}),
    ("ssh://ops@prometheus.pantheon.lan:2222", "ssh", {"user": "ops", "host": "prometheus.pantheon.lan",
                                                        "port": 2222}),
    ("ssh://10.99.0.20:40022", "ssh", {"user": None, "host": "10.99.0.20", "port": 40022}),
    ("ssh://ops@[fd00::20]:22", "ssh", {"user": "ops", "host": "fd00::20", "port": 22}),
])
def test_parse_target(text: str, kind: str, fields: dict[str, Any]) -> None:
    t = parse_target(text)
    assert t.kind == kind
    for k, v in fields.items():
        assert getattr(t, k) == v, (k, t)
    assert t.in_qemu == (kind != "ssh")
    assert t.description


def test_existing_image_file_without_prefix_is_a_disk(tmp_path: Path) -> None:
    img = tmp_path / "prometheus-disk"
    img.write_bytes(b"\0" * 512)
    assert parse_target(str(img)) == disk_target(img)


@pytest.mark.parametrize("text,needle", [
    ("ssh://ops@host:99999", "bad SSH target"),
    ("ssh://ops@host:0", "port 0"),
    ("ssh://ops@", "no host"),
    ("ssh://ops@host/var/tmp", "no path"),
    ("ssh:ops@host", "expected ssh://user@host[:port]"),
    ("http://prometheus", "unknown target scheme"),
    ("prometheus", "unknown target"),
    ("disk:", "needs a path"),
])
def test_bad_targets_are_clear_errors(text: str, needle: str) -> None:
    with pytest.raises(BuilderError) as exc:
        parse_target(text)
    assert needle in str(exc.value)


def test_ssh_description_and_report_dict() -> None:
    assert LIVE.address == "ops@10.99.0.20:22"
    assert "live host ops@10.99.0.20:22" in LIVE.description
    assert ssh_target("fd00::1", 22, "ops").address == "ops@[fd00::1]:22"
    assert disk_target(Path("d.qcow2"), "ab" * 32).as_dict()["sha256"] == "ab" * 32


def test_parse_endpoint() -> None:
    assert parse_endpoint("10.60.0.50", 22) == Endpoint("10.60.0.50", 22)
    assert parse_endpoint("127.0.0.1:40023", 22) == Endpoint("127.0.0.1", 40023)
    assert parse_endpoint("[fd00::1]:2222", 22) == Endpoint("fd00::1", 2222)
    with pytest.raises(BuilderError):
        parse_endpoint("host:http", 22)


# --- which checks apply where ---------------------------------------------------------------------

def test_only_the_gpu_and_scratch_checks_depend_on_the_target_kind() -> None:
    catalog = build_catalog(MODEL)
    skipped = {kind: {c.id for c in catalog if c.skip_reason(kind)} for kind in KINDS}
    assert skipped == {"standin": GPU_CHECKS | {"docker.storage-on-scratch"}, "disk": GPU_CHECKS, "ssh": set()}
    scratch = next(c for c in catalog if c.id == "docker.storage-on-scratch")
    assert "no installer-made scratch disk" in (scratch.skip_reason("standin") or "")
    for cid in skipped["disk"]:
        check = next(c for c in catalog if c.id == cid)
        assert "no GPU inside QEMU" in (check.skip_reason("disk") or "")


@pytest.mark.parametrize("target", [STANDIN, disk_target(Path("d.qcow2"))], ids=["standin", "disk"])
def test_gpu_is_not_applicable_inside_qemu_even_without_asking(target: Target) -> None:
    res = run_on(target)
    scratch = {"docker.storage-on-scratch"} if target.kind == "standin" else set()
    assert by_status(res, "n/a") == GPU_CHECKS | scratch
    assert by_status(res, "fail") == set()
    for cid in GPU_CHECKS:
        assert "no GPU inside QEMU" in res[cid].outcome.message
        assert res[cid].commands == ()  # not run at all: nothing to judge inside QEMU


def test_live_host_without_a_gpu_fails_both_gpu_checks() -> None:
    res = run_on(LIVE)  # canned: no NVIDIA PCI device, no nvidia-smi
    assert by_status(res, "fail") == GPU_CHECKS
    assert by_status(res, "n/a") == set()
    assert "no NVIDIA GPU" in res["nvidia.smi"].outcome.message
    assert "GPU unavailable" in res["health.gpu"].outcome.message


def test_live_host_with_a_working_gpu_passes_every_check() -> None:
    res = run_on(LIVE, gpu_ok())
    assert by_status(res, "fail") == set(), {k: r.outcome.message for k, r in res.items() if r.status == "fail"}
    assert by_status(res, "n/a") == set()


@pytest.mark.parametrize("name,changes,needles", [
    ("nvidia-smi fails", {**GPU_DEVICE, "nvidia-smi": Result(9, "", "NVIDIA-SMI has failed because it couldn't "
                                                                    "communicate with the NVIDIA driver")},
     {"nvidia.smi": "NVIDIA-SMI has failed", "health.gpu": "GPU unavailable: nvidia-smi -L failed"}),
    ("nvidia-smi hangs", {**gpu_ok(), "nvidia-smi -L": Result(137, "", "")},
     {"health.gpu": "did not answer within 30s"}),
    ("no GPU listed", {**gpu_ok(), "nvidia-smi -L": Result(0, "No devices found.\n")},
     {"health.gpu": "lists no GPU"}),
])
def test_live_host_gpu_failures(name: str, changes: dict[str, Result], needles: dict[str, str]) -> None:
    res = run_on(LIVE, changes, only=["nvidia.smi", "health."])
    assert by_status(res, "fail") == set(needles), name
    for cid, needle in needles.items():
        assert needle in res[cid].outcome.message


# --- health checks --------------------------------------------------------------------------------

def test_only_health_selects_the_three_alert_checks() -> None:
    assert [c.id for c in select(build_catalog(MODEL), ["health"])] == [
        "health.gpu", "health.nfs-mounts", "health.scratch-pressure"]


def test_health_passes_on_a_healthy_live_host() -> None:
    res = run_on(LIVE, gpu_ok(), only=["health"])
    assert by_status(res, "pass") == set(res), {k: r.outcome.message for k, r in res.items()}
    assert "41.5% used" in res["health.scratch-pressure"].outcome.message


def test_hung_or_missing_nfs_mount_raises_the_alert() -> None:
    down = {"/mnt/atlas/appdata": (137, ""), "/mnt/atlas/datasets": (0, "ext2/ext3"),
            "/mnt/atlas/shared-media": (2, "sh: cd: can't cd to /mnt/atlas/shared-media")}
    res = run_on(STANDIN, {"for mp in ": nfs_probe(MODEL, down)}, only=["health"])
    r = res["health.nfs-mounts"]
    assert r.status == "fail"
    assert "3 of 5" in r.outcome.message
    assert "/mnt/atlas/appdata (no answer within 5s)" in r.outcome.message
    assert "/mnt/atlas/datasets (not mounted: the folder is on ext2/ext3)" in r.outcome.message
    assert "can't cd" in r.outcome.message
    assert r.commands[0].root and "timeout -s KILL 5" in r.commands[0].cmd


def test_nfs_probe_that_prints_nothing_counts_every_mount_down() -> None:
    res = run_on(STANDIN, {"for mp in ": Result(255, "", "remote command was killed")}, only=["health.nfs"])
    assert res["health.nfs-mounts"].status == "fail"
    assert "5 of 5" in res["health.nfs-mounts"].outcome.message


@pytest.mark.parametrize("percent,threshold,status", [(90.0, 85, "fail"), (85.0, 85, "pass"), (90.0, 95, "pass"),
                                                       (96.5, 95, "fail")])
def test_scratch_pressure_uses_the_models_threshold(percent: float, threshold: int, status: str) -> None:
    scratch = replace(MODEL.storage.scratch, pressure_percent=threshold)
    model = replace(MODEL, storage=replace(MODEL.storage, scratch=scratch))
    res = run_on(STANDIN, {"df -P -B1 ": df_scratch(model, percent)}, model=model, only=["health.scratch"])
    r = res["health.scratch-pressure"]
    assert r.status == status, r.outcome.message
    if status == "fail":
        assert f"threshold {threshold}%" in r.outcome.message and "scratch disk pressure" in r.outcome.message


def test_scratch_on_the_root_filesystem_says_where_it_measured() -> None:
    res = run_on(STANDIN, {"df -P -B1 ": df_scratch(MODEL, 30.0, on="/")}, only=["health.scratch"])
    assert "/var/lib/docker (on the filesystem mounted at /)" in res["health.scratch-pressure"].outcome.message


def test_scratch_mountpoint_not_created_yet_measures_where_the_data_would_land() -> None:
    df = df_scratch(MODEL, 97.0, on="/")
    res = run_on(STANDIN, {"df -P -B1 ": Result(0, "/var/lib\n" + df.stdout)}, only=["health.scratch"])
    r = res["health.scratch-pressure"]
    assert r.status == "fail"
    assert "/var/lib/docker (on the filesystem mounted at /; /var/lib/docker does not exist, measured /var/lib)" \
        in r.outcome.message


def test_scratch_probe_walks_up_to_an_existing_folder(tmp_path: Path) -> None:
    from builder.verify.checks_health import parse_df, scratch_df_command
    from builder.verify.host import LocalHost

    res = LocalHost().run(scratch_df_command(str(tmp_path / "not" / "there")))
    assert res.ok and res.stdout.splitlines()[0] == str(tmp_path)
    assert parse_df(res.stdout) is not None
    res = LocalHost().run(scratch_df_command(str(tmp_path)))
    assert res.stdout.startswith("Filesystem")


def test_alert_not_listed_in_the_model_is_not_applicable() -> None:
    mon = replace(MODEL.features.monitoring, alerts=("gpu-unavailable",))
    model = replace(MODEL, features=replace(MODEL.features, monitoring=mon))
    res = run_on(LIVE, gpu_ok(model), model=model, only=["health"])
    assert res["health.gpu"].status == "pass"
    for cid in ("health.nfs-mounts", "health.scratch-pressure"):
        assert res[cid].status == "n/a" and "does not list the alert" in res[cid].outcome.message


def test_pressure_threshold_is_validated(write_model: Callable[..., Path]) -> None:
    data = yaml.safe_load(Path("hosts/prometheus.yaml").read_text())
    data["storage"]["scratch"]["pressure_percent"] = 120
    with pytest.raises(BuilderError) as exc:
        load_model(write_model(data))
    assert "pressure_percent" in str(exc.value) and "1 to 99" in str(exc.value)


# --- the report names its target ------------------------------------------------------------------

def _report(target: Target | None) -> Report:
    results = tuple(run_on(target or STANDIN).values())
    return Report("prometheus", "ops@10.99.0.20:22 (live host over SSH, hostname prometheus)", results,
                  {"checks_seconds": 1.0}, None, target_info=target)


def test_report_names_a_live_target_in_text_json_and_junit() -> None:
    rep = _report(LIVE)
    text = render_table(rep)
    assert "target: ssh: live host ops@10.99.0.20:22 over SSH" in text
    data = report_dict(rep)
    assert data["target_kind"] == "ssh"
    assert data["target_info"]["host"] == "10.99.0.20" and data["target_info"]["port"] == 22
    assert data["target_info"]["reached"].startswith("ops@10.99.0.20:22")
    props = {p.get("name"): p.get("value") for p in ET.fromstring(junit_xml(rep)).iter("property")}
    assert props["target.kind"] == "ssh" and "live host" in props["target.description"]


def test_report_of_a_disk_has_a_sha256_field() -> None:
    rep = _report(disk_target(Path("output/prometheus.qcow2")))
    data = report_dict(rep)
    assert data["target_kind"] == "disk" and "sha256" in data["target_info"]
    assert "disk sha256: (not computed)" in render_table(rep)
    rep = _report(disk_target(Path("output/prometheus.qcow2"), "0f" * 32))
    props = {p.get("name"): p.get("value") for p in ET.fromstring(junit_xml(rep)).iter("property")}
    assert props["target.sha256"] == "0f" * 32 and props["target.path"] == "output/prometheus.qcow2"


def test_report_without_target_info_is_the_standin() -> None:
    assert report_dict(_report(None))["target_kind"] == "standin"


# --- live-host errors (no network needed) ---------------------------------------------------------

@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def model_with_key(write_model: Callable[..., Path], key: tuple[Path, str]) -> Path:
    data = yaml.safe_load(Path("hosts/prometheus.yaml").read_text())
    data["users"][0]["ssh_authorized_keys"].append(key[1])
    return write_model(data)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def verify_cli(*args: str) -> int:
    return main(["verify", *args])


def test_public_key_and_fingerprint(key: tuple[Path, str]) -> None:
    path, pub = key
    assert key_id(public_key_of(path)) == key_id(pub)
    assert fingerprint(pub).startswith("SHA256:") and len(fingerprint(pub)) == 50


def test_key_not_in_the_model_stops_before_connecting(tmp_path: Path, key: tuple[Path, str],
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*a: Any, **k: Any) -> Any:
        raise AssertionError("tried to connect")

    monkeypatch.setattr("builder.verify.ssh.ssh_run", no_network)
    out = tmp_path / "out"
    rc = verify_cli("--target", "ssh://ops@127.0.0.1:1", "--identity", str(key[0]), "--out", str(out))
    err = capsys.readouterr().err
    assert rc == 2
    assert f"the key {key[0]} (ssh-ed25519 {fingerprint(key[1])}) is not one of ops's keys" in err
    assert "SHA256:" in err.split("users[].ssh_authorized_keys:")[1]  # lists the modelled keys
    assert "Traceback" not in err and not out.exists()


def test_unreachable_host_is_a_clear_error(tmp_path: Path, key: tuple[Path, str], model_with_key: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    port = closed_port()
    rc = verify_cli("--host", str(model_with_key), "--target", f"ssh://ops@127.0.0.1:{port}",
                    "--identity", str(key[0]), "--out", str(out))
    err = capsys.readouterr().err
    assert rc == 2
    assert f"cannot reach 127.0.0.1:{port}: connection refused" in err and "wrong port" in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--target", "ssh://ops@127.0.0.1:1"], "needs --identity KEY"),
    (["--target", "ssh://ops@127.0.0.1:1", "--identity", "KEY", "--keep"], "--keep belong to the stand-in"),
    (["--target", "ssh://ops@127.0.0.1:1", "--identity", "KEY", "--no-second-boot"],
     "--no-second-boot belong to the stand-in"),
    (["--target", "ssh://ops@127.0.0.1:1", "--identity", "/nonexistent/key"], "identity file not found"),
    (["--target", "ssh://root@127.0.0.1:1", "--identity", "KEY"], "user 'root' is not in the host model"),
    (["--target", "ssh://ops@127.0.0.1:1", "--identity", "KEY", "--only", "helth"], "--only helth selects no"),
    (["--target", "ftp://x"], "unknown target scheme"),
    (["--identity", "KEY"], "--identity and --servers-ssh belong to an ssh:// target"),
])
def test_bad_live_arguments_exit_2(args: list[str], needle: str, tmp_path: Path, key: tuple[Path, str],
                                   model_with_key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = [str(key[0]) if a == "KEY" else a for a in args]
    rc = verify_cli("--host", str(model_with_key), "--out", str(out), *args)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    assert not out.exists()


def test_world_readable_key_is_refused_with_the_fix(tmp_path: Path, key: tuple[Path, str],
                                                     model_with_key: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key[0].chmod(0o644)
    rc = verify_cli("--host", str(model_with_key), "--target", "ssh://ops@127.0.0.1:1", "--identity", str(key[0]),
                    "--out", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 2 and "readable by others" in err and f"chmod 600 {key[0]}" in err


@pytest.mark.parametrize("stderr,needle", [
    ("ops@127.0.0.1: Permission denied (publickey).", "refused the key"),
    ("ssh: connect to host 10.99.0.20 port 22: Connection timed out", "host unreachable"),
    ("ssh: connect to host 10.99.0.20 port 22: No route to host", "host unreachable"),
    ("ssh: Could not resolve hostname prometheus: Name or service not known", "cannot resolve"),
    ("kex_exchange_identification: Connection closed by remote host", "closed the connection before"),
    ("ssh: connect to host 127.0.0.1 port 2: Connection refused", "connection refused"),
])
def test_ssh_failures_are_named(stderr: str, needle: str) -> None:
    from builder.verify.live import LiveAccess

    err = _ssh_failure(LiveAccess("10.99.0.20", 22, "ops", Path("k")), stderr, MODEL)
    assert needle in err.message


# --- the live flow, with a fake transport ---------------------------------------------------------

@pytest.fixture
def fake_live(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], None]:
    """Replace the SSH transport of builder.verify.live with canned answers (no network)."""

    def install(changes: dict[str, Any]) -> None:
        class FakeSsh(FakeHost):
            def close(self) -> None:
                pass

        responses = {**healthy_responses(MODEL), **changes}
        monkeypatch.setattr("builder.verify.live.SshHost", lambda access: FakeSsh(responses))
        monkeypatch.setattr("builder.verify.live.preflight", lambda access, model: "prometheus")
        monkeypatch.setattr("builder.verify.core.Outside", lambda: FakeOutside(MODEL, banners={22: "SSH-2.0-x",
                                                                                             2222: "SSH-2.0-x"}))

    return install


def test_live_health_exit_code_says_whether_an_alert_holds(tmp_path: Path, key: tuple[Path, str],
                                                           model_with_key: Path, fake_live: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    base = ["--host", str(model_with_key), "--target", "ssh://ops@127.0.0.1:2222", "--identity", str(key[0]),
            "--only", "health", "--out", str(out)]
    fake_live(gpu_ok())
    assert verify_cli(*base) == 0
    data = json.loads((out / "prometheus" / "verify" / "report.json").read_text())
    assert [c["id"] for c in data["checks"]] == ["health.gpu", "health.nfs-mounts", "health.scratch-pressure"]
    assert data["target_kind"] == "ssh" and data["target_info"]["user"] == "ops"
    assert "hostname prometheus" in data["target"]
    fake_live({**gpu_ok(), "df -P -B1 ": df_scratch(MODEL, 97.0)})
    assert verify_cli(*base) == 1
    data = json.loads((out / "prometheus" / "verify" / "report.json").read_text())
    assert {c["id"] for c in data["checks"] if c["status"] == "fail"} == {"health.scratch-pressure"}
    text = (out / "prometheus" / "verify" / "report.txt").read_text()
    assert "target: ssh: live host ops@127.0.0.1:2222" in text
    capsys.readouterr()


def test_live_full_catalog_judges_the_gpu(tmp_path: Path, key: tuple[Path, str], model_with_key: Path,
                                          fake_live: Any) -> None:
    out = tmp_path / "out"
    fake_live({})  # no GPU on the "live host"
    rc = verify_cli("--host", str(model_with_key), "--target", "ssh://ops@127.0.0.1:2222", "--identity",
                    str(key[0]), "--servers-ssh", "127.0.0.1:2223", "--out", str(out))
    assert rc == 1
    data = json.loads((out / "prometheus" / "verify" / "report.json").read_text())
    failing = {c["id"] for c in data["checks"] if c["status"] == "fail"}
    # users.ops.ssh-key: the model file lists the test key, the canned host has the harness key instead
    assert failing == {"nvidia.smi", "health.gpu", "nvidia.gpu-name", "users.ops.ssh-key"}, failing
    assert "SERVERS probed at 127.0.0.1:2223" in data["target"]
