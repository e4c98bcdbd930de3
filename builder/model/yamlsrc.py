"""Load YAML and remember where every value came from, so problems can name a line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from builder.errors import Problem, ProblemsError

PathKey = tuple[str | int, ...]


@dataclass
class Source:
    """A parsed YAML document: its data, the file name, and the line of every path."""

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line(self, path: PathKey) -> int | None:
        """Line of `path`, or of its nearest ancestor that has one."""
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            path = path[:-1]


def dotted(path: PathKey) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_yaml(text: str, file: str) -> Source:
    """Parse `text`; raise ProblemsError (with line) on syntax errors and duplicate keys."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(exc, "problem", None) or str(exc)
        raise ProblemsError([Problem(file, line, "", f"YAML syntax error: {what}")]) from None
    src = Source(file=file, data=data)
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), src, problems)
    if problems:
        raise ProblemsError(problems)
    return src


def load_yaml_file(path: Path) -> Source:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProblemsError([Problem(str(path), None, "", "file not found")]) from None
    except UnicodeDecodeError as exc:
        raise ProblemsError([Problem(str(path), None, "", f"not UTF-8 text ({exc.reason})")]) from None
    return load_yaml(text, str(path))


def _walk(node: yaml.Node, path: PathKey, src: Source, problems: list[Problem]) -> None:
    src.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = (*path, key)
            if key in seen:
                problems.append(
                    Problem(src.file, key_node.start_mark.line + 1, dotted(child), "duplicate key")
                )
            seen.add(key)
            src.lines[child] = key_node.start_mark.line + 1
            _walk(value_node, child, src, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), src, problems)
