"""Model rule: the scratch mountpoint holds Docker's data root (and containerd's root below it).

Seed: "/var/lib/docker | Container images/layers | Disposable" on "Local Scratch / NVMe". Each refused
model: exit 2, file:line of docker.data_root, the seed row quoted."""

from __future__ import annotations

import pytest

from tests.conftest import default_model_data
from tests.test_feature_rules import _line_of, _validate

SEED_ROW = "/var/lib/docker | Container images/layers | Disposable"

# (id, scratch mountpoint, docker data_root, refused)
CASES = [
    ("elsewhere", "/var/lib/docker", "/srv/docker", True),
    ("sibling-prefix", "/var/lib/docker", "/var/lib/docker-old", True),
    ("parent-of-scratch", "/scratch/docker", "/scratch", True),
    ("os-disk-default", "/scratch", "/var/lib/docker", True),
    ("relative", "/scratch", "scratch/docker", True),
    ("equal", "/var/lib/docker", "/var/lib/docker", False),
    ("below", "/scratch", "/scratch/docker", False),
    ("below-unnormalised", "/scratch", "/scratch/./docker", False),
]


@pytest.mark.parametrize("case_id,mountpoint,data_root,refused", CASES, ids=[c[0] for c in CASES])
def test_docker_data_root_on_scratch(case_id, mountpoint, data_root, refused, write_model, capsys) -> None:
    data = default_model_data()
    data["storage"]["scratch"]["mountpoint"] = mountpoint
    data["docker"]["data_root"] = data_root
    path = write_model(data)
    code, output = _validate(path, capsys)
    lines = [ln for ln in output.splitlines() if " docker.data_root:" in ln]
    if not refused:
        assert not lines, output
        return
    assert code == 2, output
    assert lines and SEED_ROW in lines[0], output
    assert "containerd" in lines[0] and mountpoint in lines[0], output
    assert _line_of(output, path, "docker.data_root").isdigit(), output
    # the line printed is the one that holds data_root in the file
    n = int(_line_of(output, path, "docker.data_root"))
    assert "data_root" in path.read_text().splitlines()[n - 1], output


def test_no_scratch_disk_is_not_this_rule(write_model, capsys) -> None:
    data = default_model_data()
    del data["storage"]["scratch"]
    data["features"]["monitoring"]["alerts"] = []
    data["docker"]["data_root"] = "/srv/docker"
    code, output = _validate(write_model(data), capsys)
    assert " docker.data_root:" not in output, output
