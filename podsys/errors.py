"""Errors that reach the user as one line each: file, line, field, message."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Problem:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        # A command-line problem has no file: "--os: unknown OS", never ": --os: ...".
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [part for part in (where, self.field) if part]
        return ": ".join(parts + [self.message])


class InputError(Exception):
    """Bad user input (exit code 2). Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem] | Problem | str):
        if isinstance(problems, str):
            problems = [Problem(file="", line=None, field="", message=problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PodsysError(Exception):
    """A failure that is not the input's fault (exit code 1)."""
