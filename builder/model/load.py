"""Load a host model: YAML with line numbers -> typed frozen dataclasses -> semantic rules."""

from __future__ import annotations

from pathlib import Path

from builder.errors import ProblemsError
from builder.model.rules import check_model
from builder.model.schema import HostModel
from builder.model.typedparse import Collector, build_dataclass, is_missing
from builder.model.yamlsrc import Source, load_yaml_file
from builder.resources import resource_path


def default_model_path() -> Path:
    """The embedded default model (hosts/prometheus.yaml, shipped in the wheel as package data)."""
    return resource_path("hosts", "prometheus.yaml")


def parse_model(src: Source, source_path: Path) -> tuple[HostModel, list]:
    """Typed parse + semantic rules. Returns the model and warnings; raises with all errors."""
    c = Collector(src)
    if src.data is None:
        c.add((), "the file is empty; expected a host model mapping (see hosts/prometheus.yaml)")
        raise ProblemsError(c.problems)
    model = build_dataclass(HostModel, src.data, (), c)
    if is_missing(model):
        raise ProblemsError(c.problems)
    object.__setattr__(model, "source_path", source_path)
    check_model(model, c)
    if c.errors:
        raise ProblemsError(c.problems)
    return model, [p for p in c.problems if p.severity == "warning"]


def load_model_with_warnings(path: Path | None = None) -> tuple[HostModel, list]:
    path = Path(path) if path else default_model_path()
    src = load_yaml_file(path)
    return parse_model(src, path.resolve())


def load_model(path: Path | None = None) -> HostModel:
    return load_model_with_warnings(path)[0]
