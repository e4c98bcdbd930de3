"""Jinja2 environment for the seed templates: every model value goes in through a filter
that emits JSON (`j`) or YAML from a real dumper (`yaml`), so quoting and indentation can't break."""

from __future__ import annotations

import json
from typing import Any

import jinja2
import yaml

from builder.errors import BuilderError
from builder.resources import resource_path

TEMPLATE_FOLDERS = ("autoinstall", "cloud-init")  # template names start with their folder: "cloud-init/…"


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks; everything else as safe YAML."""


def _str_repr(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_BlockDumper.add_representer(str, _str_repr)
_BlockDumper.add_representer(tuple, lambda d, v: d.represent_list(list(v)))


def to_json(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False)


def to_yaml(value: Any) -> str:
    text = yaml.dump(
        value, Dumper=_BlockDumper, default_flow_style=False, sort_keys=False, width=4096, allow_unicode=True
    )
    if text.endswith("\n...\n"):
        text = text[: -len("\n...\n")]
    return text.rstrip("\n")


def environment() -> jinja2.Environment:
    loader = jinja2.PrefixLoader(
        {name: jinja2.FileSystemLoader(str(resource_path(name))) for name in TEMPLATE_FOLDERS}, delimiter="/")
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["j"] = to_json
    env.filters["yaml"] = to_yaml
    return env


def render_template(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise BuilderError(
            f"template not found: {exc.name}", hint=f"searched the package data folders {', '.join(TEMPLATE_FOLDERS)}"
        ) from None
    except jinja2.TemplateError as exc:
        raise BuilderError(f"template {name}: {exc}") from None
