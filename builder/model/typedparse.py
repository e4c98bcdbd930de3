"""Build frozen dataclasses from parsed YAML, collecting every type problem at once.

Each dataclass field's annotation says what is accepted: str, int, bool, float, `X | None`,
`tuple[X, ...]`, `dict[str, X]`, `Literal[...]` or another dataclass. Unknown keys, missing
required keys and wrong types become `Problem`s naming the field path and its line.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, get_args, get_origin, get_type_hints

from builder.errors import Problem
from builder.model.yamlsrc import PathKey, Source, dotted

_MISSING = object()


class Collector:
    def __init__(self, src: Source) -> None:
        self.src = src
        self.problems: list[Problem] = []

    def add(self, path: PathKey, message: str, severity: str = "error") -> None:
        self.problems.append(Problem(self.src.file, self.src.line(path), dotted(path), message, severity))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"a mapping of {_type_name(get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", bool: "true/false", float: "a number"}.get(tp, str(tp))


def _found(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def build(tp: Any, value: Any, path: PathKey, c: Collector) -> Any:
    """Convert `value` to type `tp`; on a problem record it and return _MISSING."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) == 1:
            return build(non_none[0], value, path, c)
        for a in non_none:  # e.g. str | int: first that accepts without problems
            sub = Collector(c.src)
            out = build(a, value, path, sub)
            if not sub.errors:
                return out
        c.add(path, f"expected {_type_name(tp)}, found {_found(value)}")
        return _MISSING
    if origin is Literal:
        if value in get_args(tp):
            return value
        c.add(path, f"expected {_type_name(tp)}, found {_found(value)}")
        return _MISSING
    if origin is tuple:
        if not isinstance(value, list):
            c.add(path, f"expected {_type_name(tp)}, found {_found(value)}")
            return _MISSING
        items = [build(get_args(tp)[0], v, (*path, i), c) for i, v in enumerate(value)]
        return tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            c.add(path, f"expected {_type_name(tp)}, found {_found(value)}")
            return _MISSING
        return {str(k): build(get_args(tp)[1], v, (*path, str(k)), c) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path, c)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - programming error in the model definition
        raise TypeError(f"unsupported field type {tp!r}")
    if not ok:
        c.add(path, f"expected {_type_name(tp)}, found {_found(value)}")
        return _MISSING
    return value


def build_dataclass(cls: Any, value: Any, path: PathKey, c: Collector) -> Any:
    if not isinstance(value, dict):
        c.add(path, f"expected a mapping, found {_found(value)}")
        return _MISSING
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")}
    for key in value:
        if key not in fields:
            allowed = ", ".join(sorted(fields))
            c.add((*path, str(key)), f"unknown field (allowed here: {allowed})")
    kwargs: dict[str, Any] = {}
    broken = False
    for name, f in fields.items():
        if name in value:
            out = build(hints[name], value[name], (*path, name), c)
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue
        else:
            c.add(path, f"missing required field '{name}' ({_type_name(hints[name])})")
            out = _MISSING
        if out is _MISSING or _contains_missing(out):
            broken = True
        kwargs[name] = out
    if broken:
        return _MISSING
    return cls(**kwargs)


def _contains_missing(value: Any) -> bool:
    if value is _MISSING:
        return True
    if isinstance(value, tuple):
        return any(_contains_missing(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_missing(v) for v in value.values())
    return False


def is_missing(value: Any) -> bool:
    return value is _MISSING
