"""The verdict cache (`grader.cache`): each distinct program is sandboxed once per cell, the
verdicts are the sandbox's own, and verdicts that depend on the machine are never reused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from grader_sandbox import GraderPool
from harness.runner.trace import read_trace, without_timing
from harness.runner.verdict_cache import VerdictCache, request_key

LIMITS = {"timeout_s": 1.0, "memory_mb": 256, "output_bytes": 1 << 16}


def _req(rid: str, body: str) -> dict:
    return {"id": rid, "code": f"def f(x):\n{body}", "style": "call", "entry_point": "f",
            "tests": [{"args": [2], "expected": 5}, {"args": [0], "expected": 3}],
            "test_code": None, "compare": {"float_tol": None}, "limits": LIMITS}


RIGHT = "    return x + 3\n"
WRONG = "    return x + 4\n"
SYNTAX = "    return x +\n"
RAISES = "    return x / 0\n"
SLOW = "    while True:\n        pass\n"


@pytest.fixture(scope="module")
def pool() -> Iterator[GraderPool]:
    with GraderPool(workers=1) as p:
        yield p


def test_the_key_ignores_the_id_and_nothing_else() -> None:
    assert request_key(_req("a", RIGHT)) == request_key(_req("b", RIGHT))
    assert request_key(_req("a", RIGHT)) != request_key(_req("a", WRONG))
    other = _req("a", RIGHT)
    other["limits"] = {**LIMITS, "timeout_s": 2.0}
    assert request_key(other) != request_key(_req("a", RIGHT))


def test_each_distinct_program_is_graded_once(pool: GraderPool) -> None:
    cache = VerdictCache(pool)
    batch = [_req("0", RIGHT), _req("1", RIGHT), _req("2", WRONG), _req("3", SYNTAX),
             _req("4", RAISES), _req("5", WRONG)]
    first = cache.grade(batch)
    assert cache.last == {"requests": 6, "hits": 2, "graded": 4}
    plain = pool.grade(batch)
    assert [(v.id, v.passed, v.status, v.error_type, v.tests_passed) for v in first] == \
        [(v.id, v.passed, v.status, v.error_type, v.tests_passed) for v in plain]
    assert [v.passed for v in first] == [True, True, False, False, False, False]
    again = cache.grade([_req("x", WRONG), _req("y", RIGHT), _req("z", RAISES)])
    assert cache.last == {"requests": 3, "hits": 3, "graded": 0}
    assert [v.id for v in again] == ["x", "y", "z"]
    assert [v.status for v in again] == [first[2].status, first[0].status, first[4].status]


def test_a_timeout_is_graded_every_time(pool: GraderPool) -> None:
    cache = VerdictCache(pool)
    out = cache.grade([_req("0", SLOW), _req("1", SLOW)])
    assert [v.status for v in out] == ["timeout", "timeout"]
    assert cache.last["graded"] == 2  # the copy in the same call is graded too
    cache.grade([_req("2", SLOW)])
    assert cache.last == {"requests": 1, "hits": 0, "graded": 1}


def test_the_cache_holds_at_most_max_entries(pool: GraderPool) -> None:
    cache = VerdictCache(pool, max_entries=2)
    cache.grade([_req("0", RIGHT), _req("1", WRONG), _req("2", RAISES)])
    cache.grade([_req("3", RIGHT)])  # the oldest entry was dropped
    assert cache.last["graded"] == 1
    cache.grade([_req("4", RAISES)])
    assert cache.last["graded"] == 0


@pytest.mark.slow
def test_a_cell_gives_the_same_trace_with_and_without_the_cache(tmp_path: Path,
                                                                pool: GraderPool) -> None:
    from harness.runner.cell import CellConfig, CellRunner
    from harness.spec import expand_cells, load_spec

    recipe = ("{hidden_size: 32, intermediate_size: 64, num_layers: 2, num_heads: 2, "
              "warm_steps: 30, warm_batch: 16, warm_tasks: 256}")
    traces = {}
    for cache in (True, False):
        path = tmp_path / f"c{cache}.yaml"
        path.write_text(
            f"name: cache-{str(cache).lower()}\nversion: 1\n"
            f"models: [{{id: tiny, tiny: {recipe}}}]\nseeds: [0]\n"
            "chain: {campaigns: 1, steps: 3}\n"
            "tasks: {source: synthetic, train: 4, eval: 6, test: 4}\n"
            "eval: {samples_per_task: 4, temperature: 1.0, max_new_tokens: 24}\n"
            "rollout: {group_size: 4, prompts_per_step: 2, temperature: 1.0, "
            "max_new_tokens: 24, backend: lean}\n"
            f"optim: {{lr: 1.0e-3}}\ngrader: {{timeout_s: 2, workers: 1, cache: {cache}}}\n")
        spec, _ = load_spec(str(path))
        (cell,) = expand_cells(spec)
        cell_dir = tmp_path / str(cache)
        cell_dir.mkdir()
        CellRunner(CellConfig.from_dict(cell.cell_id, cell.config), cell_dir, grader=pool).run()
        traces[cache] = read_trace(cell_dir / "trace.jsonl")
    assert [without_timing(r) for r in traces[True]] == \
        [without_timing(r) for r in traces[False]]
    steps = {c: [r for r in t if r["type"] == "step" and r["step"] > 0]
             for c, t in traces.items()}
    assert all(r["grading"]["eval_graded"] == r["grading"]["eval_samples"] == 24
               for r in steps[False])
    graded = sum(r["grading"]["eval_graded"] + r["grading"]["train_graded"] for r in steps[True])
    assert graded < sum(r["grading"]["eval_samples"] + r["grading"]["train_samples"]
                        for r in steps[True])
