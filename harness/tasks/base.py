"""The task abstraction: one code problem, and the grader request that grades a completion.

A task is plain data. The program that is graded is

    base model (no chat template):  task.code_prefix + completion + task.code_suffix
    instruct model (chat template): task.chat_prefix + code extracted from the reply
                                    + task.code_suffix

and the grader runs it in one of three styles:

- `call`: import the program, call `entry_point(*args)` for each test, compare with `expected`;
- `stdio`: run the program with `input` on stdin, compare stdout with `output`;
- `assert`: run the program followed by `test_code` (asserts); passing = no exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from grader_sandbox.schema import STYLES  # the grader's styles: the one list of them

# For type checkers only; tests/test_components.py checks it names exactly STYLES.
Style = Literal["call", "stdio", "assert"]


@dataclass(frozen=True)
class Task:
    """One code problem.

    Attributes:
        task_id: stable id: `<family><version>-<hash>` for the synthetic family
            (`syn2-3fa2c01b9d`), `<source>/<dataset split>/<native id>` or the dataset's own
            id for dataset sources (`HumanEval/0`, `apps/test/4021`).
        prompt: the text given to a base model (no chat template): code to continue.
        code_prefix: program text preceding a base model's completion (ends with `prompt`).
        style: how the grader runs the program (`call`, `stdio` or `assert`).
        entry_point: the function called (`call`) or checked (`assert`); None for stdio.
        tests: plain-JSON test dicts in the grader's shape: `call`: {"args": [...],
            "expected": ...}; `stdio`: {"input": str, "output": str}; `assert`: empty.
        test_code: assert statements run after the program (`assert` style), else None.
        reference: a correct completion (warm-start data, self-checks); "" when the source
            has none. Graded as `code_prefix + reference + code_suffix`.
        meta: source-specific facts (difficulty, ops, split...), plain JSON.
        statement: the problem in words, for an instruct model's user message; "" when the
            problem is stated by its code (`starter_code`, else `prompt`).
        starter_code: code the solution must start from (a signature, a class stub); shown
            to instruct models.
        fn_name: the function the model is asked to write, when it differs from the graded
            `entry_point` (a shim that calls `Solution().fn_name`); None for programs.
        chat_prefix: program text preceding code extracted from an instruct model's reply
            (imports the source's own harness provides); "" for none.
        code_suffix: program text after the completion in both modes (a call shim).
        time_limit_s: per-test time limit the source states (seconds), None when it has none.
        float_tol: relative tolerance for float results / output tokens, None = exact.
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
    statement: str = ""
    starter_code: str = ""
    fn_name: str | None = None
    chat_prefix: str = ""
    code_suffix: str = ""
    time_limit_s: float | None = None
    float_tol: float | None = None

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"task {self.task_id}: unknown style {self.style!r}")
        if self.style in ("call", "assert") and not self.entry_point:
            raise ValueError(f"task {self.task_id}: {self.style} style needs an entry_point")
        if self.style == "assert" and not self.test_code:
            raise ValueError(f"task {self.task_id}: assert style needs test_code")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"task {self.task_id}: time_limit_s must be positive")

    @property
    def function_name(self) -> str | None:
        """The function the model must write (None for stdin/stdout programs)."""
        if self.style == "stdio":
            return None
        return self.fn_name or self.entry_point

    @property
    def n_tests(self) -> int:
        """Tests the grader runs (assert style: as the source counted them, at least 1)."""
        if self.style == "assert":
            return max(1, int(self.meta.get("n_tests", 1)))
        return len(self.tests)


def program(task: Task, completion: str, chat: bool = False) -> str:
    """The graded program: prefix + completion + suffix (`from __future__` imports first).

    `chat=False`: `completion` continues `task.code_prefix` exactly (a base model's output).
    `chat=True`: `completion` is code extracted from an instruct model's reply, placed after
    `task.chat_prefix` (on a line of its own).
    """
    prefix = task.chat_prefix if chat else task.code_prefix
    if chat and prefix and not prefix.endswith("\n"):
        prefix += "\n"
    body = prefix + completion
    if task.code_suffix and body and not body.endswith("\n"):
        body += "\n"
    return _hoist_future_imports(body + task.code_suffix)


def _hoist_future_imports(code: str) -> str:
    """`from __future__ import ...` lines of the completion moved to the top: they must come
    first, and a prefix (imports, a header) would otherwise make them a SyntaxError."""
    if "from __future__ import" not in code:
        return code
    lines = code.split("\n")
    future = [ln for ln in lines if ln.startswith("from __future__ import")]
    return "\n".join(future + [ln for ln in lines if not ln.startswith("from __future__ import")])


def grader_request(
    task: Task, completion: str, limits: dict[str, Any], request_id: str, chat: bool = False
) -> dict[str, Any]:
    """The grader request for one completion of `task` (plain JSON, every key present).

    Returns {"id", "code", "style", "entry_point", "tests", "test_code", "compare", "limits"}
    where `code = program(task, completion, chat)`; `tests` is a list (empty in `assert`
    style), `test_code` is None outside `assert` style, `entry_point` is None in `stdio` style
    and `compare` is {"float_tol": task.float_tol}. When the task states a per-test time limit,
    `limits["timeout_s"]` (the whole sample's wall clock) becomes the smaller of the given one
    and time limit x number of tests.
    """
    limits = dict(limits)
    if task.time_limit_s is not None:
        budget = task.time_limit_s * max(1, task.n_tests)
        limits["timeout_s"] = min(float(limits.get("timeout_s", budget)), budget)
    return {
        "id": request_id,
        "code": program(task, completion, chat),
        "style": task.style,
        "entry_point": task.entry_point if task.style != "stdio" else None,
        "tests": [dict(t) for t in task.tests] if task.style != "assert" else [],
        "test_code": task.test_code if task.style == "assert" else None,
        "compare": {"float_tol": task.float_tol},
        "limits": limits,
    }
