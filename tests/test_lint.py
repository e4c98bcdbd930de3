"""Style is part of the build: ruff must be clean on the package and the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_clean() -> None:
    paths = [p for p in ("builder", "tests", "benchmarks") if (REPO / p).is_dir()]
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", *paths],
                          cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_clean() -> None:
    """Type hints are checked, not decoration (configuration in pyproject.toml)."""
    proc = subprocess.run([sys.executable, "-m", "mypy", "builder"], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
