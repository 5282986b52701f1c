"""Errors a user can cause. The CLI prints them as one line each and exits non-zero;
anything else is a bug and keeps its traceback."""

from __future__ import annotations

from dataclasses import dataclass


class UserError(Exception):
    """A problem the user can fix (bad input, missing model, no disk...). One line: what
    failed and how to fix it."""

    exit_code = 1


@dataclass(frozen=True)
class SpecProblem:
    """One problem in a spec file: where it is and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class SpecError(UserError):
    """A spec that does not validate; carries one `SpecProblem` per problem found."""

    exit_code = 2

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class CannotEvaluate(UserError):
    """`harness gate`, `compare`, `report` and `baseline register` could not evaluate a run
    (a missing or unreadable run directory, a corrupt trace, results that do not match their
    traces, a malformed baseline): exit 2, never the gate's 1 (a gated comparison fails)."""

    exit_code = 2


class PreflightError(UserError):
    """A model or task source a spec names cannot be loaded on this machine (found before any
    cell starts): like a spec error, exit 2."""

    exit_code = 2
