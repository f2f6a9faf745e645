"""The error of a user's case files: one line, the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class CaseError(ValueError):
    """A problem with a user's case files; str() is one line: "<path>: <problem>"."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(str(path), problem)
        self.path = Path(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"
