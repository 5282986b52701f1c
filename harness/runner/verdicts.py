"""What each graded sample's verdict *was*, beyond pass or fail: the verdict kinds.

A binary reward only says whether the tests passed. To see what the failing samples of a
collapsing run do, and to keep the grader's own failures out of the update, every sample of
a step (train rollouts and eval samples alike) gets exactly one kind:

| kind | when |
| --- | --- |
| `passed` | every test passed |
| `no_code` | nothing to grade: no code could be extracted from the completion |
| `truncated` | the completion hit `max_new_tokens` without ending (and did not pass) |
| `wrong_answer` | the tests ran and some failed |
| `syntax_error` | the program does not compile (`SyntaxError`, `IndentationError`, `TabError`) |
| `runtime_error` | the program raised (counted by builtin type in `exceptions`) or died of a signal |
| `timeout` | the wall-clock or CPU limit |
| `memory` | `MemoryError` |
| `output_limit` | more output than the limit |
| `violation` | a forbidden system call, or forged result frames |
| `infra` | the grader failed, not the program: the sandbox could not be set up, a worker or the judge died, the grader was unreachable |

Precedence: `infra` first (the sample says nothing about the policy), then `passed`, then the
completion-side kinds (`no_code`, `truncated`: the cause of the failure, whatever the grader
then said), then the grader's status. The kinds partition the samples: their counts add up
to the number of samples.

`infra` samples are never a reward of 0: the runner masks them out of the advantages and the
loss and out of pass@1's denominator, counts them, and stops the cell when too many of a
step's samples fail that way (`grader.max_infra_share`).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

KINDS = ("passed", "no_code", "truncated", "wrong_answer", "syntax_error", "runtime_error",
         "timeout", "memory", "output_limit", "violation", "infra")

# error types of a `crashed` verdict that mean the grader, not the program, failed
INFRA_ERRORS = frozenset({"SandboxSetupFailed", "WorkerDied", "JudgeDied", "GraderUnreachable"})
SYNTAX_ERRORS = frozenset({"SyntaxError", "IndentationError", "TabError"})
_BY_STATUS = {"failed": "wrong_answer", "timeout": "timeout", "memory": "memory",
              "output_limit": "output_limit", "violation": "violation"}


def is_infra(verdict: Any) -> bool:
    """True when the grader failed on this sample (its verdict says nothing of the program)."""
    etype = verdict.error_type or ""
    return verdict.status == "crashed" and (etype in INFRA_ERRORS
                                            or etype.startswith("WorkerError"))


def verdict_kind(verdict: Any, code: str, truncated: bool) -> str:
    """The kind of one graded sample (module docstring: table and precedence)."""
    if is_infra(verdict):
        return "infra"
    if verdict.status == "passed":
        return "passed"
    if not code.strip():
        return "no_code"
    if truncated:
        return "truncated"
    if verdict.status == "error" and verdict.error_type in SYNTAX_ERRORS:
        return "syntax_error"
    if verdict.status in ("error", "crashed"):
        return "runtime_error"
    return _BY_STATUS.get(verdict.status, "runtime_error")


def exception_name(verdict: Any) -> str:
    """The builtin type (or signal) behind a `runtime_error` sample."""
    return str(verdict.error_type or verdict.status)[:60]


def count_kinds(kinds: list[str], verdicts: list[Any]) -> dict[str, Any]:
    """{kind: count} over every kind (zeros included, so the counts always add up to the
    samples), plus `exceptions`: {type: count} of the `runtime_error` samples."""
    counts = Counter(kinds)
    out: dict[str, Any] = {k: counts.get(k, 0) for k in KINDS}
    out["exceptions"] = dict(sorted(Counter(
        exception_name(v) for k, v in zip(kinds, verdicts, strict=True)
        if k == "runtime_error").items()))
    return out


def add_counts(total: dict[str, Any] | None, counts: dict[str, Any]) -> dict[str, Any]:
    """Sum of two `count_kinds` results (either may be None or lack kinds)."""
    out: dict[str, Any] = {k: 0 for k in KINDS} | {"exceptions": {}}
    for part in (total or {}, counts):
        for k in KINDS:
            out[k] += int(part.get(k, 0))
        for name, n in (part.get("exceptions") or {}).items():
            out["exceptions"][name] = out["exceptions"].get(name, 0) + int(n)
    out["exceptions"] = dict(sorted(out["exceptions"].items()))
    return out
