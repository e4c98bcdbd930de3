"""Monitoring, rendered: node exporter on the SERVERS address only, DCGM exporter as NVIDIA documents it,
and the host-health metrics script run for real against fake probes (a GPU that answers, fails or hangs;
NFS mounts that answer, are missing or hang; a scratch filesystem)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.model import HostModel, load_model
from builder.seed.features import (
    HEALTH_CONFIG,
    HEALTH_SCRIPT,
    TEXTFILE_DIR,
    feature_files,
    feature_packages,
    feature_runcmd,
    health_config,
)
from builder.seed.render import context
from builder.seed.templating import environment


def _model(**mon) -> HostModel:
    m = load_model()
    return dataclasses.replace(m, features=dataclasses.replace(
        m.features, monitoring=dataclasses.replace(m.features.monitoring, **mon)))


def _files(m: HostModel) -> dict[str, dict[str, str]]:
    return {f["path"]: f for f in feature_files(m, environment(), context(m))}


def test_monitoring_disabled_renders_nothing() -> None:
    m = load_model()
    assert feature_files(m, environment(), context(m)) == []
    assert feature_packages(m) == [] and feature_runcmd(m) == []


def test_node_exporter_listens_on_servers_only_with_textfile_collector() -> None:
    m = _model(enabled=True)
    default = _files(m)["/etc/default/prometheus-node-exporter"]["content"]
    args = re.search(r'^ARGS="(.*)"$', default, re.M)
    assert args, default
    argv = shlex.split(args.group(1))
    assert argv == ["--web.listen-address=10.60.0.50:9100", f"--collector.textfile.directory={TEXTFILE_DIR}"]
    assert m.servers.ip == "10.60.0.50" and m.mgmt.ip not in default
    assert "prometheus-node-exporter" in feature_packages(m)


def test_host_health_timer_and_service() -> None:
    m = _model(enabled=True, health_interval_seconds=120)
    files = _files(m)
    timer = files["/etc/systemd/system/prometheus-host-health.timer"]["content"]
    service = files["/etc/systemd/system/prometheus-host-health.service"]["content"]
    assert "OnUnitActiveSec=120\n" in timer and "WantedBy=timers.target" in timer
    assert f"ExecStart={HEALTH_SCRIPT}\n" in service and "Type=oneshot" in service
    assert files[HEALTH_SCRIPT]["mode"] == "0755"
    cfg = json.loads(files[HEALTH_CONFIG]["content"])
    assert cfg == health_config(m)
    assert cfg["nfs_mounts"] == [mt.mountpoint for mt in m.nfs.mounts]
    assert cfg["scratch_mountpoint"] == "/var/lib/docker"
    assert ["systemctl", "enable", "--now", "prometheus-host-health.timer"] in feature_runcmd(m)


def test_dcgm_exporter_unit_is_nvidias_container_on_servers() -> None:
    assert "/etc/systemd/system/dcgm-exporter.service" not in _files(_model(enabled=True))
    m = _model(enabled=True, dcgm_exporter=True)
    unit = _files(m)["/etc/systemd/system/dcgm-exporter.service"]["content"]
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[:2] == ["/usr/bin/docker", "run"]
    assert "--gpus" in argv and argv[argv.index("--gpus") + 1] == "all"
    assert argv[argv.index("--runtime") + 1] == "nvidia"
    assert argv[argv.index("--publish") + 1] == "10.60.0.50:9400:9400"
    assert argv[-1] == m.features.monitoring.dcgm_exporter_image
    assert argv[-1].startswith("nvcr.io/nvidia/k8s/dcgm-exporter:")
    assert "Requires=docker.service" in unit
    assert ["systemctl", "enable", "--now", "--no-block", "dcgm-exporter.service"] in feature_runcmd(m)


# --- the host-health script, run for real ---

FAKE_NVIDIA_SMI = """#!/bin/sh
case "$FAKE_GPU" in
  ok) echo "NVIDIA RTX 4000 Ada Generation" ;;
  hang) exec sleep 60 ;;
  *) echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver." >&2; exit 9 ;;
esac
"""
FAKE_STAT = """#!/bin/sh
for last; do :; done
case " $FAKE_HUNG " in *" $last "*) exec sleep 60 ;; esac
exit 0
"""


@pytest.fixture
def health(tmp_path: Path):
    m = _model(enabled=True, probe_timeout_seconds=1)
    script = tmp_path / "host-health"
    script.write_text(_files(m)[HEALTH_SCRIPT]["content"])
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("nvidia-smi", FAKE_NVIDIA_SMI), ("stat", FAKE_STAT)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    out = tmp_path / "textfile"
    cfg = {**health_config(m), "textfile_dir": str(out), "scratch_mountpoint": str(scratch)}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    mounts = tmp_path / "mounts"

    def run(gpu: str = "ok", mounted: tuple[str, ...] | None = None, hung: tuple[str, ...] = ()) -> dict[str, float]:
        points = cfg["nfs_mounts"] if mounted is None else mounted
        mounts.write_text("".join(f"atlas:/x {p} nfs4 rw,relatime 0 0\n" for p in points)
                          + "/dev/sda3 / ext4 rw 0 0\n")
        env = {"PATH": f"{bindir}:/usr/bin:/bin", "FAKE_GPU": gpu, "FAKE_HUNG": " ".join(hung),
               "HOST_HEALTH_CONFIG": str(tmp_path / "config.json"), "HOST_HEALTH_MOUNTS": str(mounts)}
        subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=60)
        files = sorted(p.name for p in out.iterdir())
        assert files == ["prometheus-host-health.prom"], files  # written atomically: no temporary left
        metrics = {}
        for line in (out / "prometheus-host-health.prom").read_text().splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                metrics[key] = float(value)
        return metrics

    run.scratch = scratch  # type: ignore[attr-defined]
    return run


def _nfs(mp: str) -> str:
    return f'host_health_nfs_mount_up{{mountpoint="{mp}"}}'


def test_healthy_host(health) -> None:
    metrics = health()
    assert metrics["host_health_gpu_up"] == 1 and metrics["host_health_gpu_count"] == 1
    for mt in load_model().nfs.mounts:
        assert metrics[_nfs(mt.mountpoint)] == 1
    assert abs(metrics["host_health_last_run_timestamp_seconds"] - time.time()) < 60


@pytest.mark.parametrize("gpu", ["fail", "hang"])
def test_gpu_failing_or_hanging_is_down(health, gpu) -> None:
    started = time.monotonic()
    metrics = health(gpu=gpu)
    assert metrics["host_health_gpu_up"] == 0 and metrics["host_health_gpu_count"] == 0
    assert time.monotonic() - started < 15  # bounded by probe_timeout_seconds, not by the hang


def test_hung_nfs_mount_is_down_within_the_bound(health) -> None:
    started = time.monotonic()
    metrics = health(hung=("/mnt/atlas/datasets",))
    assert time.monotonic() - started < 15
    assert metrics[_nfs("/mnt/atlas/datasets")] == 0
    assert metrics[_nfs("/mnt/atlas/appdata")] == 1


def test_unmounted_nfs_share_is_down(health) -> None:
    metrics = health(mounted=("/mnt/atlas", "/mnt/atlas/appdata"))
    assert metrics[_nfs("/mnt/atlas/appdata")] == 1
    assert metrics[_nfs("/mnt/atlas/shared-media")] == 0


def test_scratch_usage_ratio_matches_df(health) -> None:
    metrics = health()
    st = os.statvfs(health.scratch)
    used = st.f_blocks - st.f_bfree
    expected = used / (used + st.f_bavail)
    value = metrics[f'host_health_scratch_used_ratio{{mountpoint="{health.scratch}"}}']
    assert abs(value - expected) < 0.01
    assert 0 < value < 1
