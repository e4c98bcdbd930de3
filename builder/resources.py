"""Package data: the templates, the default host model with its keys and the Packer template.

They live in the repository's top-level folders (`autoinstall/`, `cloud-init/`, `hosts/`, `packer/`)
and are shipped inside the wheel as the packages `builder._autoinstall`, `builder._cloud_init`,
`builder._hosts` and `builder._packer` (see `[tool.setuptools.package-dir]` in pyproject.toml), so a
regular `pip install .` finds them through importlib.resources from any folder.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

PACKAGES = {
    "autoinstall": "builder._autoinstall",
    "cloud-init": "builder._cloud_init",
    "hosts": "builder._hosts",
    "packer": "builder._packer",
    "testbed": "builder.testbed.data",
}


def resource(folder: str, *parts: str) -> Traversable:
    """A shipped file or folder, e.g. resource("cloud-init", "files", "x.j2")."""
    return resources.files(PACKAGES[folder]).joinpath(*parts)


def resource_path(folder: str, *parts: str) -> Path:
    """A shipped file as a real path (wheels and editable installs unpack to the file system)."""
    return Path(str(resource(folder, *parts)))
