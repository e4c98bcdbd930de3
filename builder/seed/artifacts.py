"""Write rendered seed files under artifacts/<hostname>/ atomically, with a manifest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from builder import __version__, settings
from builder.model import HostModel
from builder.resources import resource_path
from builder.seed.render import SECRET_FILES


def source_date_epoch(model: HostModel) -> int:
    """SOURCE_DATE_EPOCH from the environment, else the model's fixed value."""
    return settings.source_date_epoch(model.host.source_date_epoch)


def _display_path(path: Path) -> str:
    """The embedded model and its keys as `hosts/…` (the same on every machine), others absolute."""
    try:
        return "hosts/" + str(path.resolve().relative_to(resource_path("hosts").resolve()))
    except ValueError:
        return str(path.resolve())


def manifest(model: HostModel, files: dict[str, bytes], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    inputs = [{"path": _display_path(model.source_path), "sha256": _sha(model.source_path.read_bytes())}]
    for repo in (model.apt.docker, model.apt.nvidia):
        key = model.resolve(repo.key_file)
        inputs.append({"path": _display_path(key), "sha256": _sha(key.read_bytes())})
    data: dict[str, Any] = {
        "tool": "builder",
        "tool_version": __version__,
        "host": model.host.hostname,
        "source_date_epoch": source_date_epoch(model),
        "inputs": inputs,
        "outputs": [{"path": name, "sha256": _sha(body)} for name, body in sorted(files.items())],
    }
    if extra:
        data.update(extra)
    return data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _keep_stage_sections(new: dict[str, Any], old_path: Path) -> dict[str, Any]:
    """Keep later stages' sections (iso, pxe, …) while the seed they were built from is unchanged."""
    try:
        old = json.loads(old_path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return new
    if old.get("outputs") != new["outputs"] or old.get("inputs") != new["inputs"]:
        return new  # the seed changed: those sections describe stale media
    return {**{k: v for k, v in old.items() if k not in new}, **new}


def write_seed(model: HostModel, files: dict[str, bytes], out_root: Path) -> Path:
    """Write the seed folders and manifest.json into out_root/<hostname>/; returns that folder.

    Everything is built in a temporary folder first; the finished pieces replace the old ones,
    so an error never leaves a half-written seed. Other artifacts in the host folder (ISO,
    verify reports) are left alone.
    """
    host_dir = out_root / model.host.hostname
    mtime = source_date_epoch(model)
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.host.hostname}.render-", dir=out_root))
    try:
        for name, body in files.items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            os.chmod(path, 0o600 if name in SECRET_FILES else 0o644)
            os.utime(path, (mtime, mtime))
        text = json.dumps(_keep_stage_sections(manifest(model, files), host_dir / "manifest.json"),
                          indent=2, sort_keys=True) + "\n"
        (tmp / "manifest.json").write_text(text)
        host_dir.mkdir(parents=True, exist_ok=True)
        for part in ("autoinstall", "first-boot", "monitoring", "manifest.json"):
            target = host_dir / part
            if target.is_dir():
                shutil.rmtree(target)
            if (tmp / part).exists():  # monitoring/ only when the model lists alerts
                os.replace(tmp / part, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return host_dir
