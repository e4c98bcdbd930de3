"""The optional features' checks (builder.verify.checks_features) on canned outputs: present only when
the model enables the feature, all pass on a healthy host, and each fails on the matching fault."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from builder.model import load_model
from builder.seed import features as feat
from builder.verify.catalog import build_catalog
from builder.verify.checks_features import HEALTH_FILE, _shipped_hook, normalise_gpu, parse_metrics, parse_net_list
from builder.verify.core import Context, run_checks
from builder.verify.host import FakeHost, Result
from builder.verify.targets import STANDIN, Target, ssh_target
from tests.verify_canned import ENDPOINTS, EPHEMERAL, FakeOutside, healthy_responses, nfs_probe

BASE = load_model(None)
MODEL = replace(BASE, features=replace(
    BASE.features,
    monitoring=replace(BASE.features.monitoring, enabled=True, dcgm_exporter=True),
    virtualization=replace(BASE.features.virtualization, enabled=True)))
SRV = MODEL.servers.ip
ADMIN = MODEL.admin.name
NOW = 1_790_000_000
LIVE = ssh_target("10.99.0.20", 22, "ops")
FEATURE_IDS = {"monitoring.node-exporter", "monitoring.host-health", "monitoring.alert-rules",
               "monitoring.alert-rules.promtool", "monitoring.dcgm-exporter.unit", "monitoring.dcgm-exporter.answers",
               "virt.hook", "virt.policy", "virt.default-network", "virt.admin-libvirt-group"}


def health_prom(*, stamp: float = NOW - 20, down: tuple[str, ...] = (), ratio: float | None = 0.415) -> str:
    lines = ["# HELP host_health_gpu_up x", "host_health_gpu_up 0", "host_health_gpu_count 0"]
    lines += [f'host_health_nfs_mount_up{{mountpoint="{m.mountpoint}"}} {0 if m.mountpoint in down else 1}'
              for m in MODEL.nfs.mounts]
    if ratio is not None:
        lines.append(f'host_health_scratch_used_ratio{{mountpoint="{feat.scratch_mountpoint(MODEL)}"}} {ratio:.6f}')
    lines.append(f"host_health_last_run_timestamp_seconds {stamp:.3f}")
    return "\n".join(lines) + "\n"


def listening(port: int, addr: str = SRV, proc: str = "prometheus-node") -> Result:
    return Result(0, f"tcp LISTEN 0 4096 {addr}:{port} 0.0.0.0:* users:((\"{proc}\",pid=900,fd=3))\n")


def net_list(state: str = "inactive", auto: str = "no") -> Result:
    return Result(0, " Name      State      Autostart   Persistent\n"
                     "----------------------------------------------\n"
                     f" default   {state:<10} {auto:<11} yes\n\n")


def dcgm_show(publish: str = f"{SRV}:9400:9400", state: str = "enabled") -> Result:
    argv = (f"/usr/bin/docker run --rm --name dcgm-exporter --runtime nvidia --gpus all --cap-add SYS_ADMIN "
            f"--publish {publish} {MODEL.features.monitoring.dcgm_exporter_image}")
    return Result(0, f"LoadState=loaded\nUnitFileState={state}\nExecStart={{ path=/usr/bin/docker ; argv[]={argv} ; "
                     "ignore_errors=no }\n")


def feature_responses() -> dict[str, Any]:
    sha = hashlib.sha256(_shipped_hook().encode()).hexdigest()
    u = MODEL.users[0]
    return {
        **healthy_responses(MODEL),
        f"http://{SRV}:9100/metrics": Result(0, "HTTP 200 1720\nnode_exporter_build_info{version=\"1.5.0\"} 1\n"
                                                "node_load1 0.1\n"),
        "'sport = :9100'": listening(9100),
        f"http://{SRV}:9400/metrics": Result(0, "HTTP 200 120\nDCGM_FI_DEV_GPU_TEMP{gpu=\"0\"} 41\n"),
        "'sport = :9400'": listening(9400, proc="docker-proxy"),
        f"date +%s; cat {HEALTH_FILE}": Result(0, f"{NOW}\n" + health_prom()),
        f"cat {HEALTH_FILE}": Result(0, health_prom(stamp=NOW)),
        f"systemctl start {feat.HEALTH_UNIT}.service": Result(0, ""),
        f"cat {feat.RULES_PATH}": Result(0, feat.alert_rules_text(MODEL)),
        "command -v promtool": Result(127, ""),
        "dcgm-exporter.service": dcgm_show(),
        f"sha256sum {feat.HOOK_PATH}": Result(0, f"{sha}  {feat.HOOK_PATH}\n"),
        f"cat {feat.POLICY_PATH}": Result(0, json.dumps(feat.libvirt_policy(MODEL), indent=2)),
        "net-list --all": net_list(),
        f"id -nG {u.name}": Result(0, " ".join([u.name, *u.groups, "libvirt"]) + "\n"),
    }


def verify(changes: dict[str, Any] | None = None, model: Any = MODEL, target: Target = STANDIN,
           only: tuple[str, ...] = ()) -> dict[str, Any]:
    host = FakeHost({**feature_responses(), **(changes or {})})
    ctx = Context(host, model, ENDPOINTS, FakeOutside(model), extra_authorized_keys=(EPHEMERAL,), target=target)
    checks = [c for c in build_catalog(model) if not only or c.id.startswith(only)]
    return {r.check.id: r for r in run_checks(checks, ctx)}


def test_feature_checks_exist_only_when_enabled() -> None:
    assert not FEATURE_IDS & {c.id for c in build_catalog(BASE)}
    assert FEATURE_IDS <= {c.id for c in build_catalog(MODEL)}
    no_dcgm = replace(MODEL, features=replace(MODEL.features, monitoring=replace(
        MODEL.features.monitoring, dcgm_exporter=False)))
    ids = {c.id for c in build_catalog(no_dcgm)}
    assert "monitoring.node-exporter" in ids and "monitoring.dcgm-exporter.unit" not in ids


def test_healthy_host_with_features_passes() -> None:
    res = verify()
    bad = {k: r.outcome.message for k, r in res.items() if r.status == "fail"}
    assert not bad, bad
    na = {k for k, r in res.items() if r.status == "n/a"}
    assert na == {"nvidia.smi", "health.gpu", "nvidia.gpu-name", "monitoring.dcgm-exporter.answers",
                  "monitoring.alert-rules.promtool", "docker.storage-on-scratch"}  # stand-in: no scratch disk
    assert "promtool is not installed" in res["monitoring.alert-rules.promtool"].outcome.message
    assert "no GPU inside QEMU" in res["monitoring.dcgm-exporter.answers"].outcome.message


FAULTS: list[tuple[str, dict[str, Any], str, str]] = [
    ("node exporter silent", {f"http://{SRV}:9100/metrics": Result(1, "ERROR URLError: <urlopen error [Errno 111] "
                                                                      "Connection refused>\n"),
                              "'sport = :9100'": Result(0, "")},
     "monitoring.node-exporter", "did not answer"),
    ("node exporter on every address", {"'sport = :9100'": Result(0, listening(9100).stdout + listening(
        9100, "*").stdout)}, "monitoring.node-exporter", "beyond the SERVERS address"),
    ("node exporter only on MGMT", {"'sport = :9100'": listening(9100, "10.99.0.20")},
     "monitoring.node-exporter", "nothing listens on"),
    ("no metrics file", {f"date +%s; cat {HEALTH_FILE}": Result(1, f"{NOW}\n", "cat: No such file or directory")},
     "monitoring.host-health", "no host-health metrics"),
    ("stale metrics", {f"date +%s; cat {HEALTH_FILE}": Result(0, f"{NOW}\n" + health_prom(stamp=NOW - 3600))},
     "monitoring.host-health", "stale: written 3600s ago"),
    ("metrics say down, mount is up", {f"cat {HEALTH_FILE}": Result(0, health_prom(down=("/mnt/atlas/appdata",)))},
     "monitoring.host-health", "/mnt/atlas/appdata: metric says down, the probe finds it up"),
    ("metrics say up, mount hangs", {"for mp in ": nfs_probe(MODEL, {"/mnt/atlas/datasets": (137, "")})},
     "monitoring.host-health", "/mnt/atlas/datasets: metric says up, the probe finds it down"),
    ("scratch ratio wrong", {f"cat {HEALTH_FILE}": Result(0, health_prom(ratio=0.2))},
     "monitoring.host-health", "scratch: metric 0.200, df 0.415"),
    ("scratch ratio missing", {f"cat {HEALTH_FILE}": Result(0, health_prom(ratio=None))},
     "monitoring.host-health", "no host_health_scratch_used_ratio"),
    ("health unit fails", {f"systemctl start {feat.HEALTH_UNIT}.service": Result(1, "", "Job failed")},
     "monitoring.host-health", "prometheus-host-health.service failed"),
    ("rules missing", {f"cat {feat.RULES_PATH}": Result(1, "", "No such file")}, "monitoring.alert-rules",
     "is missing"),
    ("rules edited", {f"cat {feat.RULES_PATH}": Result(0, feat.alert_rules_text(MODEL).replace('"2m"', '"9m"'))},
     "monitoring.alert-rules", "differs from the rules rendered"),
    ("promtool refuses", {"command -v promtool": Result(1, "", "FAILED: yaml: unmarshal errors")},
     "monitoring.alert-rules.promtool", "promtool check rules failed"),
    ("dcgm unit absent", {"dcgm-exporter.service": Result(0, "LoadState=not-found\nUnitFileState=\nExecStart=\n")},
     "monitoring.dcgm-exporter.unit", "not installed"),
    ("dcgm on every address", {"dcgm-exporter.service": dcgm_show(publish="9400:9400")},
     "monitoring.dcgm-exporter.unit", f"ExecStart lacks {SRV}:9400:9400"),
    ("dcgm disabled", {"dcgm-exporter.service": dcgm_show(state="disabled")},
     "monitoring.dcgm-exporter.unit", "not enabled"),
    ("hook not executable", {f"sha256sum {feat.HOOK_PATH}": Result(3, "-rw-r--r-- 1 root root 6000 qemu\n")},
     "virt.hook", "not executable"),
    ("hook replaced", {f"sha256sum {feat.HOOK_PATH}": Result(0, "0" * 64 + f"  {feat.HOOK_PATH}\n")},
     "virt.hook", "not the policy hook"),
    ("policy overcommits", {f"cat {feat.POLICY_PATH}": Result(0, json.dumps(
        {**feat.libvirt_policy(MODEL), "cpu_overcommit": True}))}, "virt.policy",
     "cpu_overcommit: True (model: False)"),
    ("policy missing", {f"cat {feat.POLICY_PATH}": Result(1, "", "No such file")}, "virt.policy",
     "missing or not JSON"),
    ("default network active", {"net-list --all": net_list("active", "no")}, "virt.default-network",
     "default NAT network is active"),
    ("default network autostarted", {"net-list --all": net_list("inactive", "yes")}, "virt.default-network",
     "autostarted"),
    ("no virsh", {"net-list --all": Result(127, "", "sh: virsh: not found")}, "virt.default-network",
     "virsh net-list failed"),
    ("admin not in libvirt", {f"id -nG {ADMIN}": Result(0, f"{ADMIN} sudo docker\n")}, "virt.admin-libvirt-group",
     "not in the libvirt group"),
]


@pytest.mark.parametrize("name,changes,cid,needle", FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_fails_the_matching_feature_check(name: str, changes: dict[str, Any], cid: str, needle: str) -> None:
    res = verify(changes, only=("monitoring.", "virt."))
    failing = {k: r.outcome.message for k, r in res.items() if r.status == "fail"}
    assert set(failing) == {cid}, failing
    assert needle in failing[cid], failing[cid]


GPU = {"grep -lix 0x10de": Result(0, "/sys/bus/pci/devices/0000:01:00.0/vendor\n")}


@pytest.mark.parametrize("reported,ok", [
    (MODEL.nvidia.gpu, True),
    ("  nvidia rtx  A4000   ADA ", True),
    ("NVIDIA RTX 4000 Ada Generation", False),  # what the real "RTX 4000 Ada" reports: the model must say so
    ("NVIDIA RTX A4000", False),
])
def test_gpu_name_on_a_live_host(reported: str, ok: bool) -> None:
    res = verify({**GPU, "nvidia-smi --query-gpu=name --format": Result(0, reported + "\n")}, target=LIVE,
                 only=("nvidia.gpu-name",))["nvidia.gpu-name"]
    assert res.status == ("pass" if ok else "fail"), res.outcome.message
    if not ok:
        assert MODEL.nvidia.gpu in res.outcome.message and "correct nvidia.gpu" in res.outcome.message


def test_gpu_name_fails_without_nvidia_smi_and_is_na_in_qemu() -> None:
    live = verify({"nvidia-smi --query-gpu=name --format": Result(127, "", "nvidia-smi: not found")}, target=LIVE,
                  only=("nvidia.gpu-name",))["nvidia.gpu-name"]
    assert live.status == "fail" and "lists no GPU" in live.outcome.message
    qemu = verify(only=("nvidia.gpu-name",))["nvidia.gpu-name"]
    assert qemu.status == "n/a" and qemu.commands == ()


def test_dcgm_answers_on_a_live_host() -> None:
    res = verify(target=LIVE, only=("monitoring.dcgm-exporter.answers",))["monitoring.dcgm-exporter.answers"]
    assert res.status == "pass", res.outcome.message
    bad = verify({"'sport = :9400'": listening(9400, "0.0.0.0", "docker-proxy")}, target=LIVE,
                 only=("monitoring.dcgm-exporter.answers",))["monitoring.dcgm-exporter.answers"]
    assert bad.status == "fail" and "beyond the SERVERS address" in bad.outcome.message


def test_parsers() -> None:
    m = parse_metrics('# HELP x y\nhost_health_nfs_mount_up{mountpoint="/a \\"b\\""} 1\nbad line\nup 0\n')
    assert m == {("host_health_nfs_mount_up", (("mountpoint", '/a \\"b\\"'),)): 1.0, ("up", ()): 0.0}
    assert parse_net_list(net_list("active", "yes").stdout) == {"default": ("active", "yes")}
    assert parse_net_list(" Name State Autostart Persistent\n---\n\n") == {}
    assert normalise_gpu(" NVIDIA  RTX\tA4000 Ada") == normalise_gpu("nvidia rtx a4000 ada")
