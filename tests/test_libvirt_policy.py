"""The libvirt QEMU hook rendered for a model with virtualization enabled, run as libvirt runs it:
`qemu <guest> prepare begin -` with the domain XML on stdin. Host facts are injected (8 CPUs, 16 GiB,
running guests as libvirt status files); the policy file is the one rendered from the model."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.model import HostModel, load_model
from builder.seed.features import HOOK_PATH, POLICY_PATH, feature_files, feature_packages, feature_runcmd
from builder.seed.render import context
from builder.seed.templating import environment

HOST_CPUS = 8
HOST_MEMORY_KIB = 16 * 1024 * 1024  # 16 GiB; the default model reserves 4096 MiB -> 12 GiB for guests


def _with_virt(**changes) -> HostModel:
    m = load_model()
    virt = dataclasses.replace(m.features.virtualization, enabled=True, **changes)
    return dataclasses.replace(m, features=dataclasses.replace(m.features, virtualization=virt))


def domain(name: str = "guest1", vcpus: int = 2, memory: str = "<memory unit='GiB'>4</memory>",
           cpu: str = "<cpu mode='host-passthrough' check='none' migratable='on'/>", devices: str = "") -> str:
    return f"""<domain type='kvm'>
  <name>{name}</name>
  {memory}
  <vcpu placement='static'>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='pc-q35-8.2'>hvm</type></os>
  {cpu}
  <devices>
    <disk type='file' device='disk'><source file='/var/lib/libvirt/images/{name}.qcow2'/><target dev='vda'/></disk>
    {devices}
  </devices>
</domain>
"""


GPU_HOSTDEV = """<hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/></source>
    </hostdev>"""


@pytest.fixture
def hook(tmp_path: Path):
    """Render the hook + policy for a model, return run(xml, running=[xml...], name=...) -> CompletedProcess."""

    def make(model: HostModel | None = None):
        model = model or _with_virt()
        files = {f["path"]: f for f in feature_files(model, environment(), context(model))}
        script = tmp_path / "qemu"
        script.write_text(files[HOOK_PATH]["content"])
        policy = tmp_path / "policy.json"
        policy.write_text(files[POLICY_PATH]["content"])
        run_dir = tmp_path / "run"
        run_dir.mkdir(exist_ok=True)

        def run(xml: str, running: tuple[str, ...] = (), name: str = "guest1",
                op: tuple[str, str] = ("prepare", "begin")):
            for old in run_dir.glob("*.xml"):
                old.unlink()
            for i, r in enumerate(running):  # libvirt's status files wrap the live definition
                (run_dir / f"running{i}.xml").write_text(f"<domstatus state='running' pid='1'>{r}</domstatus>")
            env = {"PROMETHEUS_POLICY_FILE": str(policy), "PROMETHEUS_POLICY_HOST_CPUS": str(HOST_CPUS),
                   "PROMETHEUS_POLICY_HOST_MEMORY_KIB": str(HOST_MEMORY_KIB), "PROMETHEUS_POLICY_RUN_DIR": str(run_dir),
                   "PATH": "/usr/bin:/bin"}
            return subprocess.run([sys.executable, str(script), name, *op, "-"], input=xml, env=env,
                                  capture_output=True, text=True, timeout=30, check=False)

        return run

    return make


def test_conforming_guest_is_accepted(hook) -> None:
    run = hook()
    proc = run(domain(vcpus=4, memory="<memory unit='GiB'>6</memory>"),
               running=(domain("other", vcpus=4, memory="<memory unit='KiB'>6291456</memory>"),))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize("kwargs,running,expected", [
    pytest.param({"vcpus": 6}, (domain("other", vcpus=4),), ["CPU overcommit is disabled", "6 vCPUs + 4",
                                                              "= 10 > 8 host CPUs"], id="vcpu-overcommit"),
    pytest.param({"vcpus": 9}, (), ["CPU overcommit is disabled", "9 > 8 host CPUs"], id="vcpu-over-host"),
    pytest.param({"memory": "<memory unit='GiB'>8</memory>"},
                 (domain("other", memory="<memory unit='MiB'>5120</memory>"),),
                 ["memory overcommit is disabled", "8192 MiB + 5120 MiB", "13312 MiB > 12288 MiB",
                  "4096 MiB reserve"], id="memory-overcommit"),
    pytest.param({"memory": "<memory unit='G'>13</memory>"}, (), ["memory overcommit is disabled"],
                 id="memory-over-host"),
    pytest.param({"cpu": "<cpu mode='host-model'/>"}, (), ["CPU mode must be host-passthrough",
                                                            "mode 'host-model'", "<cpu mode='host-passthrough'"],
                 id="cpu-host-model"),
    pytest.param({"cpu": "<cpu><model>qemu64</model></cpu>"}, (), ["mode 'custom'"], id="cpu-custom"),
    pytest.param({"cpu": ""}, (), ["no <cpu> element"], id="cpu-missing"),
    pytest.param({"devices": GPU_HOSTDEV}, (), ["GPU passthrough) is disabled", "0x0000:0x01:0x00.0",
                                                "GPU passthrough: not default"], id="gpu-hostdev"),
])
def test_policy_violation_is_refused_with_a_clear_message(hook, kwargs, running, expected) -> None:
    proc = hook()(domain(**kwargs), running=running)
    assert proc.returncode != 0
    assert "prometheus virtualization policy refuses guest 'guest1'" in proc.stderr
    for text in expected:
        assert text in proc.stderr, proc.stderr


def test_every_violation_is_listed(hook) -> None:
    proc = hook()(domain(vcpus=16, cpu="<cpu mode='host-model'/>", devices=GPU_HOSTDEV))
    assert proc.returncode != 0
    assert proc.stderr.count("\n  - ") == 3, proc.stderr


def test_a_restarting_guest_is_not_counted_twice(hook) -> None:
    proc = hook()(domain("guest1", vcpus=6), running=(domain("guest1", vcpus=6),))
    assert proc.returncode == 0, proc.stderr


def test_gpu_passthrough_allowed_when_the_model_says_so(hook) -> None:
    proc = hook(_with_virt(gpu_passthrough=True))(domain(devices=GPU_HOSTDEV))
    assert proc.returncode == 0, proc.stderr


def test_other_operations_pass_through(hook) -> None:
    proc = hook()(domain(vcpus=64), op=("stopped", "end"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("xml", ["<domain><name>x</name", "<notadomain/>"], ids=["broken-xml", "no-domain"])
def test_unreadable_guest_is_refused(hook, xml) -> None:
    proc = hook()(xml)
    assert proc.returncode != 0
    assert "cannot check guest 'guest1', refusing it" in proc.stderr


def test_policy_file_follows_the_model() -> None:
    files = {f["path"]: f for f in feature_files(_with_virt(memory_reserve_mib=1024), environment(),
                                                 context(_with_virt()))}
    assert json.loads(files[POLICY_PATH]["content"]) == {
        "cpu_mode": "host-passthrough", "cpu_overcommit": False, "memory_overcommit": False,
        "gpu_passthrough": False, "memory_reserve_mib": 1024}
    assert files[HOOK_PATH]["mode"] == "0755"
    assert files[HOOK_PATH]["content"].startswith("#!/usr/bin/python3\n")


def test_virtualization_disabled_renders_nothing() -> None:
    m = load_model()
    assert not m.features.virtualization.enabled
    assert feature_files(m, environment(), context(m)) == []
    assert feature_packages(m) == [] and feature_runcmd(m) == []


def test_virtualization_packages_and_runcmd() -> None:
    m = _with_virt()
    assert {"qemu-system-x86", "libvirt-daemon-system", "libvirt-clients"} <= set(feature_packages(m))
    cmds = [" ".join(c) for c in feature_runcmd(m)]
    assert any("net-destroy default" in c and "|| true" in c for c in cmds), cmds
    assert any("net-autostart --disable default" in c and "|| true" in c for c in cmds), cmds
    assert f"usermod --append --groups libvirt {m.admin.name}" in cmds
