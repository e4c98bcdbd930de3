"""The shared stand-in guest checked as a live host: `builder verify --target ssh://ops@127.0.0.1:PORT
--identity KEY`, no QEMU of its own. Same results as the stand-in target except the GPU checks (N/A
inside QEMU, a failure on a live host); clear errors (exit 2) for a wrong port, a refused login and a
key the model does not list; the health alerts driven in (NFS server stopped, scratch filled past the
model's threshold) and back out. Every fault is undone before the test ends (the boot is shared).
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.cli import main
from builder.model import load_model
from builder.verify.ssh import generate_keypair

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parent.parent
TARGET_DEPENDENT = {"nvidia.smi", "health.gpu", "nvidia.gpu-name",  # N/A inside QEMU, FAIL live without a GPU
                    "docker.storage-on-scratch"}  # N/A on the direct-boot stand-in, FAIL live (no scratch disk)
FILL = "builder-verify-fill"


def write_guest_model(model: Any, dest: Path, extra_keys: tuple[str, ...] = ()) -> Path:
    """The model as the guest sees it (Session.model) as a host model file: the default model with the
    harness overrides (repository URLs and keys, NFS server, the harness login key) written in."""
    shutil.copytree(REPO / "hosts", dest, dirs_exist_ok=True)
    data = yaml.safe_load((REPO / "hosts" / "prometheus.yaml").read_text())
    apt = data["apt"]
    apt["ubuntu_mirror"], apt["ubuntu_security_mirror"] = model.apt.ubuntu_mirror, model.apt.ubuntu_security_mirror
    for name in ("docker", "nvidia"):
        repo = getattr(model.apt, name)
        apt[name].update(url=repo.url, key_file=str(repo.key_file), key_fingerprint=repo.key_fingerprint)
    data["nfs"]["server"] = model.nfs.server
    data["users"][0]["ssh_authorized_keys"] = [*model.users[0].ssh_authorized_keys, *extra_keys]
    path = dest / "guest.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def session(verify_guest_session):  # noqa: ANN001
    return verify_guest_session


@pytest.fixture(scope="module")
def guest_model(session, tmp_path_factory) -> Path:  # noqa: ANN001
    path = write_guest_model(session.model, tmp_path_factory.mktemp("guest-model"))
    loaded = load_model(path)
    assert loaded.apt == session.model.apt and loaded.nfs == session.model.nfs
    assert loaded.users == session.model.users
    return path


def live_args(session, model_file: Path, out: Path, *extra: str, port: int | None = None,  # noqa: ANN001
              identity: Path | None = None) -> list[str]:
    a = session.access
    return ["verify", "--host", str(model_file), "--target", f"ssh://{a.user}@127.0.0.1:{port or a.ssh_port}",
            "--identity", str(identity or a.identity_file), "--servers-ssh", f"127.0.0.1:{a.servers_ssh_port}",
            "--out", str(out), *extra]


def report(out: Path) -> dict[str, Any]:
    return json.loads((out / "prometheus" / "verify" / "report.json").read_text())


def statuses(data: dict[str, Any]) -> dict[str, str]:
    return {c["id"]: c["status"] for c in data["checks"]}


def test_live_target_gives_the_same_results_as_the_standin(session, shared_guest_catalog,  # noqa: ANN001
                                                            guest_model: Path, tmp_path: Path) -> None:
    standin = shared_guest_catalog
    want = {r.check.id: r.status for r in standin.results}
    rc = main(live_args(session, guest_model, tmp_path / "live"))
    data = report(tmp_path / "live")
    got = statuses(data)
    messages = {c["id"]: c["message"] for c in data["checks"]}
    assert set(got) == set(want)
    differ = {k for k in want if want[k] != got[k]}
    assert differ == TARGET_DEPENDENT, {k: (want[k], got[k], messages[k]) for k in differ}
    for cid in TARGET_DEPENDENT:
        assert want[cid] == "n/a" and got[cid] == "fail", (cid, messages[cid])
    assert "no NVIDIA GPU" in messages["nvidia.smi"]
    assert "GPU unavailable" in messages["health.gpu"]
    assert rc == 1  # the GPU checks fail on a "live host" without a GPU
    assert data["target_kind"] == "ssh" and data["target_info"]["port"] == session.access.ssh_port
    assert "hostname prometheus" in data["target"]
    assert (tmp_path / "live" / "prometheus" / "verify" / "junit.xml").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wrong_port_refused_login_and_unknown_key_exit_2(session, guest_model: Path, tmp_path: Path,  # noqa: ANN001
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    port = _free_port()
    assert main(live_args(session, guest_model, out, port=port)) == 2
    err = capsys.readouterr().err
    assert f"cannot reach 127.0.0.1:{port}: connection refused" in err and "Traceback" not in err

    # A key the model lists but the host does not have: the host refuses the login.
    other, other_pub = generate_keypair(tmp_path / "other")
    model_more = write_guest_model(session.model, tmp_path / "model-more", extra_keys=(other_pub,))
    assert main(live_args(session, model_more, out, identity=other)) == 2
    err = capsys.readouterr().err
    assert f"refused the key {other} for {session.access.user}" in err and "Permission denied" in err, err
    assert "Traceback" not in err

    # The same key against the model that does not list it: stopped before connecting.
    assert main(live_args(session, guest_model, out, identity=other)) == 2
    err = capsys.readouterr().err
    assert "is not one of ops's keys" in err and "Traceback" not in err
    assert not out.exists()


def health(session, guest_model: Path, out: Path, *only: str) -> tuple[int, dict[str, Any]]:  # noqa: ANN001
    args = [x for o in only for x in ("--only", o)]
    rc = main(live_args(session, guest_model, out, *args))
    data = report(out)
    return rc, {c["id"]: c for c in data["checks"]}


def test_nfs_server_stopped_raises_the_alert_and_it_clears(session, guest_model: Path,  # noqa: ANN001
                                                          tmp_path: Path) -> None:
    nfs = session.access.nfs
    assert nfs is not None
    rc, res = health(session, guest_model, tmp_path / "before", "health.nfs-mounts")
    assert rc == 0, res["health.nfs-mounts"]["message"]
    nfs.stop()
    try:
        start = time.monotonic()
        rc, res = health(session, guest_model, tmp_path / "down", "health.nfs-mounts")
        took = time.monotonic() - start
        msg = res["health.nfs-mounts"]["message"]
        assert rc == 1 and res["health.nfs-mounts"]["status"] == "fail", msg
        assert "NFS mounts unavailable" in msg and "no answer within 5s" in msg, msg
        assert took < 90, f"a hung mount must be bounded; the check took {took:.0f}s"
    finally:
        nfs.start()
    deadline = time.monotonic() + 240
    while True:  # the guest's NFS client reconnects on its own schedule
        rc, res = health(session, guest_model, tmp_path / "after", "health.nfs-mounts")
        if rc == 0 or time.monotonic() > deadline:
            break
        time.sleep(10)
    assert rc == 0, res["health.nfs-mounts"]["message"]


def test_scratch_filled_past_the_threshold_raises_the_alert_and_it_clears(session, guest_model: Path,  # noqa: ANN001
                                                                         tmp_path: Path) -> None:
    limit = session.model.storage.scratch.pressure_percent
    mp = session.model.storage.scratch.mountpoint
    rc, res = health(session, guest_model, tmp_path / "before", "health.scratch-pressure")
    assert rc == 0, res["health.scratch-pressure"]["message"]
    # The stand-in has no scratch disk: the check measures the filesystem that would hold the data
    # (the nearest existing folder); the fill goes there.
    where = session.host.run(f"p={mp}; while [ ! -e $p ]; do p=$(dirname $p); done; echo $p").stdout.strip()
    fill_file = f"{where.rstrip('/')}/{FILL}"
    df = session.host.run(f"df -P -B1 {where}").stdout.strip().splitlines()[-1].split()
    used, avail = int(df[2]), int(df[3])
    fill = int((used + avail) * (limit + 5) / 100) - used
    r = session.host.sudo(f"fallocate -l {fill} {fill_file}", 120)
    assert r.ok, r.stderr
    try:
        rc, res = health(session, guest_model, tmp_path / "full", "health.scratch-pressure")
        msg = res["health.scratch-pressure"]["message"]
        assert rc == 1 and "scratch disk pressure" in msg and f"threshold {limit}%" in msg, msg
    finally:
        assert session.host.sudo(f"rm -f {fill_file}", 60).ok
    rc, res = health(session, guest_model, tmp_path / "after", "health.scratch-pressure")
    assert rc == 0, res["health.scratch-pressure"]["message"]
