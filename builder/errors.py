"""Errors that reach the user. The CLI turns each into a message and exit code 2."""

from __future__ import annotations

from dataclasses import dataclass


class BuilderError(Exception):
    """A problem the user can fix: bad input, missing tool, failed external command."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


@dataclass(frozen=True)
class Problem:
    """One finding about an input file: where it is and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        tag = "" if self.severity == "error" else "warning: "
        return f"{where}: {tag}{self.path or '(top)'}: {self.message}"


class ProblemsError(BuilderError):
    """Several problems found at once; all are reported together."""

    def __init__(self, problems: list[Problem], what: str = "host model") -> None:
        self.problems = problems
        errors = [p for p in problems if p.severity == "error"]
        lines = "\n".join(str(p) for p in problems)
        super().__init__(f"{len(errors)} problem(s) in the {what}:\n{lines}")
