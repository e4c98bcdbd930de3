"""Validate rendered seed files: upstream JSON schemas, plus the real cloud-init and netplan tools.

Every finding is a Problem naming the rendered file, its line and the field path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from builder.errors import BuilderError, Problem
from builder.model.yamlsrc import Source, dotted, load_yaml
from builder.run import run

SCHEMAS = {
    "autoinstall": "autoinstall-schema.json",
    "cloud-config": "schema-cloud-config-v1.json",
}


@dataclass(frozen=True)
class Step:
    name: str
    status: str  # passed | failed | skipped
    detail: str = ""


def find_schema_dir(explicit: Path | None = None) -> Path | None:
    """--schema-dir, else $BUILDER_SCHEMA_DIR, else ../shared/schemas beside a lab checkout (its CI)."""
    for cand in (explicit, os.environ.get("BUILDER_SCHEMA_DIR")):
        if cand:
            path = Path(cand)
            if not (path / SCHEMAS["autoinstall"]).is_file():
                raise BuilderError(
                    f"schema folder {path} has no {SCHEMAS['autoinstall']}",
                    hint="point --schema-dir or BUILDER_SCHEMA_DIR at a folder with the upstream schemas",
                )
            return path
    sibling = Path(__file__).resolve().parents[3] / "shared" / "schemas"
    return sibling if (sibling / SCHEMAS["autoinstall"]).is_file() else None


def schema_files(schema_dir: Path | None) -> dict[str, Path | None]:
    """Each schema's file: from the schema folder, else subiquity's from the cache that
    scripts/install-deps fills (pinned by commit and SHA-256), cloud-init's from the installed cloud-init."""
    from builder.media.fetch import cache_dir

    found: dict[str, Path | None] = {}
    for key, name in SCHEMAS.items():
        candidates = [schema_dir / name] if schema_dir else []
        candidates.append(cache_dir() / "schemas" / name)
        if key != "autoinstall":
            candidates += [Path(p) / "cloudinit" / "config" / "schemas" / name for p in _python_paths()]
        found[key] = next((c for c in candidates if c.is_file()), None)
    return found


def _python_paths() -> list[str]:
    return ["/usr/lib/python3/dist-packages", "/usr/local/lib/python3/dist-packages"]


def _load_schema(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _schema_problems(schema: dict[str, Any], data: Any, src: Source, prefix: tuple = ()) -> list[Problem]:
    cls = jsonschema.validators.validator_for(schema)
    validator = cls(schema)
    out = []
    for err in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        path = (*prefix, *err.absolute_path)
        msg = err.message
        if err.context:  # oneOf/anyOf: show the most specific sub-errors
            best = sorted(err.context, key=lambda e: -len(e.absolute_path))[:2]
            msg += " (" + "; ".join(e.message for e in best) + ")"
        out.append(Problem(src.file, src.line(path), dotted(path), msg[:600]))
    return out


def _unknown_autoinstall_keys(schema: dict[str, Any], data: dict[str, Any], src: Source) -> list[Problem]:
    """Subiquity only warns on unknown top-level keys under version 1: make them errors."""
    known = set(schema.get("properties", {}))
    return [
        Problem(src.file, src.line(("autoinstall", k)), f"autoinstall.{k}", "unknown autoinstall key")
        for k in data if k not in known
    ]


def schema_check(files: dict[str, bytes], schemas: dict[str, Path]) -> list[Problem]:
    """Every schema problem of the rendered seed, for the schemas that were found."""
    problems: list[Problem] = []
    srcs = {name: load_yaml(files[name].decode(), name) for name in files}
    auto = srcs["autoinstall/user-data"]
    body = auto.data.get("autoinstall") if isinstance(auto.data, dict) else None
    if not isinstance(body, dict):
        return [Problem(auto.file, 1, "autoinstall", "missing top-level 'autoinstall' mapping")]
    if "autoinstall" in schemas:
        auto_schema = _load_schema(schemas["autoinstall"])
        problems += _schema_problems(auto_schema, body, auto, ("autoinstall",))
        problems += _unknown_autoinstall_keys(auto_schema, body, auto)
    if "cloud-config" in schemas:
        cc_schema = _load_schema(schemas["cloud-config"])
        problems += _schema_problems(cc_schema, body.get("user-data", {}), auto, ("autoinstall", "user-data"))
        fb = srcs["first-boot/user-data"]
        problems += _schema_problems(cc_schema, fb.data, fb)
    # network-config v2 is netplan's format: cloud-init on a netplan system validates it with
    # netplan's parser and never with its own v2 JSON schema, which lacks netplan keys the seed
    # needs (routes[].table/scope for MGMT policy routing) - cloudinit/config/schema.py,
    # validate_cloudconfig_schema. The `netplan generate` step is the authority here.
    return problems


def cloud_init_check(user_data: bytes) -> Step:
    if not shutil.which("cloud-init"):
        return Step("cloud-init schema", "skipped", "cloud-init is not installed (apt-get install cloud-init)")
    with tempfile.TemporaryDirectory(prefix="builder-ci-") as tmp:
        path = Path(tmp) / "user-data"
        path.write_bytes(user_data)
        proc = run(["cloud-init", "schema", "--config-file", path], check=False)
    text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    if proc.returncode != 0:
        return Step("cloud-init schema", "failed", text.replace(str(path), "first-boot/user-data"))
    return Step("cloud-init schema", "passed", text.splitlines()[-1] if text else "")


def netplan_check(network_config: bytes) -> Step:
    if not shutil.which("netplan"):
        return Step("netplan generate", "skipped", "netplan is not installed (apt-get install netplan.io)")
    with tempfile.TemporaryDirectory(prefix="builder-np-") as tmp:
        conf = Path(tmp) / "etc" / "netplan" / "50-cloud-init.yaml"
        conf.parent.mkdir(parents=True)
        conf.write_bytes(network_config)
        conf.chmod(0o600)
        proc = run(["netplan", "generate", "--root-dir", tmp], check=False)
    text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    if proc.returncode != 0:
        return Step("netplan generate", "failed", text.replace(str(conf), "first-boot/network-config"))
    return Step("netplan generate", "passed", "")


SCHEMA_HINT = {
    "autoinstall": "run scripts/install-deps with network access (it fetches subiquity's pinned schema), "
                   "or give --schema-dir",
    "cloud-config": "install cloud-init (apt-get install cloud-init), or give --schema-dir",
}


def validate_rendered(files: dict[str, bytes], schema_dir: Path | None, tools: bool = True) -> list[Step]:
    """Run every validator; schema problems are collected into one failed step. A schema that is
    not available is a skipped step that names it."""
    steps: list[Step] = []
    found = schema_files(schema_dir)
    for key, path in found.items():
        if path is None:
            steps.append(Step(f"schema {key}", "skipped", f"no {SCHEMAS[key]}: {SCHEMA_HINT[key]}"))
    usable = {k: p for k, p in found.items() if p is not None}
    if usable:
        problems = schema_check(files, usable)
        detail = "\n".join(str(p) for p in problems)
        names = ", ".join(usable)
        steps.append(Step(f"upstream schemas ({names})", "failed" if problems else "passed",
                          detail or ", ".join(str(p) for p in usable.values())))
    if tools:
        steps.append(cloud_init_check(files["first-boot/user-data"]))
        steps.append(netplan_check(files["first-boot/network-config"]))
    return steps
