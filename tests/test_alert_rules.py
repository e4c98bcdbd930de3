"""The seed's recommended alerts as Prometheus rules, proven with Debian's promtool: `check rules` accepts
the rendered file and `test rules` makes each alert fire (only after its `for:`) and resolve."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from builder.model import HostModel, load_model
from builder.seed.features import ALERT_FOR, RULES_PATH, alert_rules_text, feature_files
from builder.seed.render import context
from builder.seed.templating import environment

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: apt-get install prometheus "
                                                             "(scripts/install-deps)")
INSTANCE = {"instance": "10.60.0.50:9100", "job": "node"}
FOR_MIN = {k: int(v.rstrip("m")) for k, v in ALERT_FOR.items()}


def _model(**mon) -> HostModel:
    m = load_model()
    return dataclasses.replace(m, features=dataclasses.replace(
        m.features, monitoring=dataclasses.replace(m.features.monitoring, **mon)))


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    all_labels = {**INSTANCE, **labels}
    sel = ", ".join(f'{k}="{v}"' for k, v in all_labels.items())
    return {"series": f"{name}{{{sel}}}", "values": values}


def _promtool(tmp_path: Path, rules: str, tests: list[dict] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "rules.yml").write_text(rules)
    if tests is None:
        cmd = [str(PROMTOOL), "check", "rules", str(tmp_path / "rules.yml")]
    else:
        doc = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}
        (tmp_path / "tests.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
        cmd = [str(PROMTOOL), "test", "rules", str(tmp_path / "tests.yml")]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)


def _fires_then_resolves(alert: str, series: dict[str, str], down_at: int, for_min: int, up_at: int,
                         labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    firing = {"exp_labels": {**INSTANCE, **labels}}
    if annotations:
        firing["exp_annotations"] = annotations
    return {
        "interval": "1m",
        "input_series": [series],
        "alert_rule_test": [
            {"eval_time": f"{down_at - 1}m", "alertname": alert, "exp_alerts": []},
            {"eval_time": f"{down_at + for_min - 1}m", "alertname": alert, "exp_alerts": []},  # still pending
            {"eval_time": f"{down_at + for_min}m", "alertname": alert, "exp_alerts": [firing]},
            {"eval_time": f"{up_at - 1}m", "alertname": alert, "exp_alerts": [firing]},
            {"eval_time": f"{up_at}m", "alertname": alert, "exp_alerts": []},  # resolved
        ],
    }


@needs_promtool
def test_rendered_rules_pass_promtool_check(tmp_path: Path) -> None:
    proc = _promtool(tmp_path, alert_rules_text(load_model()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout


@needs_promtool
def test_promtool_check_can_fail(tmp_path: Path) -> None:
    broken = alert_rules_text(load_model()).replace("host_health_gpu_up == 0", "host_health_gpu_up ==")
    assert _promtool(tmp_path, broken).returncode != 0


@needs_promtool
def test_each_alert_fires_and_resolves(tmp_path: Path) -> None:
    gpu_for, nfs_for, scratch_for = FOR_MIN["gpu_for"], FOR_MIN["nfs_for"], FOR_MIN["scratch_for"]
    mp = "/mnt/atlas/managed-media"
    tests = [
        # GPU answers for 2 min, is gone for 20 min, comes back.
        _fires_then_resolves(
            "GpuUnavailable", _series("host_health_gpu_up", "1 1 0x19 1x10"), 2, gpu_for, 22,
            {"severity": "critical", "seed_alert": "gpu-unavailable"},
            {"summary": f"GPU unavailable on {INSTANCE['instance']}",
             "description": f"nvidia-smi failed, timed out or listed no GPU on {INSTANCE['instance']} "
                            '(seed: "GPU unavailable").'}),
        _fires_then_resolves(
            "NfsMountsUnavailable", _series("host_health_nfs_mount_up", "1 1 0x19 1x10", mountpoint=mp), 2, nfs_for,
            22, {"severity": "critical", "seed_alert": "nfs-mounts-unavailable", "mountpoint": mp},
            {"summary": f"NFS mount {mp} unavailable on {INSTANCE['instance']}",
             "description": f'{mp} is not mounted or did not answer in time (seed: "NFS mounts unavailable").'}),
        # Scratch at 50 %, 90 % for 20 min, then back to 50 %.
        _fires_then_resolves(
            "ScratchDiskPressure",
            _series("host_health_scratch_used_ratio", "0.5 0.5 0.9x19 0.5x10", mountpoint="/var/lib/docker"),
            2, scratch_for, 22,
            {"severity": "warning", "seed_alert": "scratch-disk-pressure", "mountpoint": "/var/lib/docker"},
            {"summary": f"Local scratch above 85% used on {INSTANCE['instance']}",
             "description": '/var/lib/docker is 90% full (seed: "Disk pressure on local scratch").'}),
    ]
    proc = _promtool(tmp_path, alert_rules_text(load_model()), tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


@needs_promtool
def test_healthy_host_raises_nothing(tmp_path: Path) -> None:
    quiet = [{"eval_time": "30m", "alertname": a, "exp_alerts": []}
             for a in ("GpuUnavailable", "NfsMountsUnavailable", "ScratchDiskPressure")]
    tests = [{"interval": "1m", "input_series": [
        _series("host_health_gpu_up", "1x40"),
        _series("host_health_nfs_mount_up", "1x40", mountpoint="/mnt/atlas"),
        _series("host_health_scratch_used_ratio", "0.84x40", mountpoint="/var/lib/docker"),
    ], "alert_rule_test": quiet}]
    proc = _promtool(tmp_path, alert_rules_text(load_model()), tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _scratch_firing(percent: int, used: str) -> dict:
    return {"exp_labels": {**INSTANCE, "severity": "warning", "seed_alert": "scratch-disk-pressure",
                           "mountpoint": "/var/lib/docker"},
            "exp_annotations": {"summary": f"Local scratch above {percent}% used on {INSTANCE['instance']}",
                                "description": f"/var/lib/docker is {used} full "
                                               '(seed: "Disk pressure on local scratch").'}}


@needs_promtool
@pytest.mark.parametrize("percent,fires", [(85, False), (70, True)])
def test_scratch_threshold_comes_from_the_model(tmp_path: Path, percent: int, fires: bool) -> None:
    series = _series("host_health_scratch_used_ratio", "0.75x40", mountpoint="/var/lib/docker")
    expected = [_scratch_firing(percent, "75%")] if fires else []
    tests = [{"interval": "1m", "input_series": [series],
              "alert_rule_test": [{"eval_time": "30m", "alertname": "ScratchDiskPressure", "exp_alerts": expected}]}]
    proc = _promtool(tmp_path, alert_rules_text(_model(scratch_usage_alert_percent=percent)), tests)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_test_can_fail(tmp_path: Path) -> None:
    """Scratch at 75 % with the default 85 % threshold must not alert: expecting the alert (with exactly the
    annotations it would have) must fail, and the same expectation passes at 70 %."""
    series = _series("host_health_scratch_used_ratio", "0.75x40", mountpoint="/var/lib/docker")
    tests = [{"interval": "1m", "input_series": [series],
              "alert_rule_test": [{"eval_time": "30m", "alertname": "ScratchDiskPressure",
                                   "exp_alerts": [_scratch_firing(85, "75%")]}]}]
    proc = _promtool(tmp_path, alert_rules_text(load_model()), tests)
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr


def test_only_the_models_alerts_are_rendered() -> None:
    doc = yaml.safe_load(alert_rules_text(_model(alerts=("nfs-mounts-unavailable",))))
    assert [r["alert"] for g in doc["groups"] for r in g["rules"]] == ["NfsMountsUnavailable"]
    empty = yaml.safe_load(alert_rules_text(_model(alerts=())))
    assert [r for g in empty["groups"] for r in g["rules"]] == []


def test_rules_file_is_installed_when_monitoring_is_enabled() -> None:
    m = _model(enabled=True)
    files = {f["path"]: f["content"] for f in feature_files(m, environment(), context(m))}
    assert files[RULES_PATH] == alert_rules_text(m)
    off = load_model()
    assert RULES_PATH not in {f["path"] for f in feature_files(off, environment(), context(off))}
