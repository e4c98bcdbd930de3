"""Shared fixtures. Expensive things (images, boots) are session-scoped; add fixtures additively."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA_DIR = REPO.parent / "shared" / "schemas"
DEFAULT_MODEL = REPO / "hosts" / "prometheus.yaml"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    if not (SCHEMA_DIR / "autoinstall-schema.json").is_file():
        pytest.fail(f"upstream schemas missing at {SCHEMA_DIR} (CI lays shared/ beside the checkout)")
    return SCHEMA_DIR


def default_model_data() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_MODEL.read_text())


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder with a copy of the default model and its key files, safe to edit."""
    d = tmp_path / "hosts"
    shutil.copytree(REPO / "hosts", d)
    return d


@pytest.fixture
def write_model(model_dir: Path) -> Callable[..., Path]:
    """write_model(data=None, text=None, name=...) -> path of a model file beside the keys."""

    def _write(data: Any = None, text: str | None = None, name: str = "host.yaml") -> Path:
        path = model_dir / name
        if text is None:
            text = yaml.safe_dump(data, sort_keys=False)
        path.write_text(text)
        return path

    return _write
