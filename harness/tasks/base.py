"""The task abstraction: one code problem, and the grader request that grades a completion.

A task is plain data. The program that is graded is `task.code_prefix + completion`; the
grader runs it in one of three styles:

- `call`: import the program, call `entry_point(*args)` for each test, compare with `expected`;
- `stdio`: run the program with `input` on stdin, compare stdout with `output`;
- `assert`: run the program followed by `test_code` (asserts); passing = no exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Style = Literal["call", "stdio", "assert"]
STYLES: tuple[str, ...] = ("call", "stdio", "assert")


@dataclass(frozen=True)
class Task:
    """One code problem.

    Attributes:
        task_id: stable id, `<family><version>-<hash>` (e.g. `syn1-3fa2c01b9d`).
        prompt: the text given to the policy (before any chat template).
        code_prefix: program text preceding the completion; graded code = prefix + completion.
        style: how the grader runs the program (`call`, `stdio` or `assert`).
        entry_point: the function called (`call`) or checked (`assert`); None for stdio.
        tests: plain-JSON test dicts in the grader's shape: `call`: {"args": [...],
            "expected": ...}; `stdio`: {"input": str, "output": str}; `assert`: empty.
        test_code: assert statements run after the program (`assert` style), else None.
        reference: a correct completion (warm-start data, self-checks).
        meta: source-specific facts (difficulty, ops, split...), plain JSON.
    """

    task_id: str
    prompt: str
    code_prefix: str
    style: Style
    entry_point: str | None
    tests: tuple[dict[str, Any], ...]
    test_code: str | None
    reference: str
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"task {self.task_id}: unknown style {self.style!r}")
        if self.style in ("call", "assert") and not self.entry_point:
            raise ValueError(f"task {self.task_id}: {self.style} style needs an entry_point")
        if self.style == "assert" and not self.test_code:
            raise ValueError(f"task {self.task_id}: assert style needs test_code")


def grader_request(
    task: Task, completion: str, limits: dict[str, Any], request_id: str
) -> dict[str, Any]:
    """The grader request for one completion of `task` (plain JSON, every key present).

    Returns {"id", "code", "style", "entry_point", "tests", "test_code", "limits"} where
    `code = task.code_prefix + completion`; `tests` is a list (empty in `assert` style),
    `test_code` is None outside `assert` style and `entry_point` is None in `stdio` style.
    """
    return {
        "id": request_id,
        "code": task.code_prefix + completion,
        "style": task.style,
        "entry_point": task.entry_point if task.style != "stdio" else None,
        "tests": [dict(t) for t in task.tests] if task.style != "assert" else [],
        "test_code": task.test_code if task.style == "assert" else None,
        "limits": dict(limits),
    }
