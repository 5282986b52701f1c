"""The task abstraction and the synthetic family: determinism, disjoint splits, styles."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.spec.schema import TasksSpec
from harness.tasks import TASK_SOURCES, Task, grader_request, load_splits, program
from harness.tasks import synthetic as syn
from harness.tasks.local_check import passes


def _splits(**kw):
    return load_splits(TasksSpec(**{"train": 40, "eval": 40, "test": 40, **kw}))


def _keys(tasks: list[Task]) -> set[str]:
    return {t.meta["ops"] for t in tasks}


def test_synthetic_is_a_registered_source():
    assert "synthetic" in TASK_SOURCES


def test_splits_have_requested_sizes_and_unique_ids():
    s = load_splits(TasksSpec(train=7, eval=5, test=3))
    assert {k: len(v) for k, v in s.items()} == {"train": 7, "eval": 5, "test": 3}
    ids = [t.task_id for v in s.values() for t in v]
    assert len(ids) == len(set(ids))


def test_splits_are_deterministic_from_split_seed():
    a, b, c = _splits(), _splits(), _splits(split_seed=1)
    assert a == b
    assert [t.task_id for t in a["eval"]] != [t.task_id for t in c["eval"]]


def test_splits_are_disjoint_by_problem_for_every_seed():
    s0, s1 = _splits(), _splits(split_seed=1)
    for a in ("train", "eval", "test"):
        for b in ("train", "eval", "test"):
            if a != b:
                assert not _keys(s0[a]) & _keys(s1[b]), (a, b)


def test_warm_start_data_holds_no_benchmark_problem():
    warm = _keys(syn.warm_start_tasks(3000, seed=0))
    for seed in (0, 1):
        s = _splits(split_seed=seed)
        assert not warm & (_keys(s["train"]) | _keys(s["eval"]) | _keys(s["test"]))


# (ops, partition) pinned for this family version (`synthetic.FAMILY_VERSION`): one per partition
PINNED_PARTITIONS = [
    ((("add", 3), ("square", None)), "warm"),
    ((("sub", 4), ("abs", None)), "train"),
    ((("add", 2), ("square", None)), "eval"),
    ((("neg", None), ("add", 1), ("mod", 5)), "test"),
]


def test_partition_of_a_problem_is_fixed():
    assert [syn.partition_of(ops) for ops, _ in PINNED_PARTITIONS] == \
        [part for _, part in PINNED_PARTITIONS]
    assert all(t.meta["partition"] == "eval" for t in _splits()["eval"])


def test_partition_of_a_problem_is_the_same_in_another_process():
    # partitioned again by fresh interpreters with other str hashes: nothing process-local
    # (hash(), set order) may decide a partition
    atoms = [("add", 1), ("add", 3), ("sub", 2), ("mul", 3), ("div", 2), ("mod", 5),
             ("square", None), ("neg", None), ("abs", None)]
    seqs = [(a,) for a in atoms] + [(a, b) for a in atoms for b in atoms]
    here = [syn.partition_of(s) for s in seqs]
    assert set(here) == {"warm", "train", "eval", "test"}
    code = ("import json, sys\nfrom harness.tasks import synthetic as syn\n"
            "seqs = [tuple(tuple(a) for a in s) for s in json.load(sys.stdin)]\n"
            "print(json.dumps([syn.partition_of(s) for s in seqs]))\n")
    for hash_seed in ("1", "4242"):
        r = subprocess.run([sys.executable, "-c", code], input=json.dumps(seqs),
                           capture_output=True, text=True, check=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": hash_seed})
        assert json.loads(r.stdout) == here, f"PYTHONHASHSEED={hash_seed}"


def test_statement_items_map_to_solution_lines_in_order():
    ops = (("add", 3), ("square", None), ("mod", 5))
    call, stdio = syn.make_task(ops, "call"), syn.make_task(ops, "stdio")
    assert call.prompt == "# x+3, x*x, x%5\ndef f(x):\n"
    assert call.reference == "    x += 3\n    x *= x\n    x %= 5\n    return x\n"
    assert stdio.prompt == "# read x; x+3, x*x, x%5\nx = int(input())\n"
    assert stdio.reference == "x += 3\nx *= x\nx %= 5\nprint(x)\n"


def test_reference_solutions_pass_their_tests():
    tasks = [t for v in _splits().values() for t in v] + syn.warm_start_tasks(50, seed=1)
    assert all(passes(t, t.reference) for t in tasks)


def test_wrong_solutions_fail():
    task = _splits()["eval"][0]
    assert not passes(task, "    return 12345\n" if task.style == "call" else "print(12345)\n")
    assert not passes(task, "this is not python(\n")


def test_both_styles_appear_in_every_split_with_the_default_share():
    for tasks in _splits().values():
        assert sum(t.style == "stdio" for t in tasks) == round(0.25 * len(tasks))
        assert any(t.style == "call" for t in tasks)


def test_stdio_share_and_op_count_options():
    s = _splits(options={"stdio_share": 0.0, "min_ops": 2, "max_ops": 2})
    tasks = [t for v in s.values() for t in v]
    assert all(t.style == "call" and t.meta["difficulty"] == 2 for t in tasks)


@pytest.mark.parametrize(("options", "match"), [
    ({"stdio_shar": 0.5}, "unknown option.*stdio_shar.*known: stdio_share"),
    ({"stdio_share": 2}, "stdio_share must be in"),
    ({"max_ops": 4}, "max_ops must be an integer"),
    ({"min_ops": 3, "max_ops": 2}, "min_ops"),
])
def test_bad_options_are_rejected_with_a_clear_message(options, match):
    with pytest.raises(ValueError, match=match):
        _splits(options=options)


def test_prompts_and_solutions_fit_the_tiny_model():
    tasks = [t for v in _splits().values() for t in v] + syn.warm_start_tasks(500, seed=0)
    assert max(len(t.prompt) for t in tasks) <= 90
    assert max(len(t.reference) for t in tasks) <= 59  # + eos <= 60 new tokens


def test_call_style_task_shape_and_grader_request():
    task = next(t for t in _splits()["eval"] if t.style == "call")
    assert task.entry_point == "f" and len(task.tests) == 5 and task.test_code is None
    req = grader_request(task, "    return x\n", {"timeout_s": 5}, "r1")
    assert set(req) == {"id", "code", "style", "entry_point", "tests", "test_code", "compare",
                        "limits"}
    assert req["compare"] == {"float_tol": None}
    assert req["code"] == task.code_prefix + "    return x\n"
    assert req["tests"][0].keys() == {"args", "expected"}
    assert (req["id"], req["style"], req["entry_point"], req["limits"]) == (
        "r1", "call", "f", {"timeout_s": 5})


def test_stdio_style_task_shape_and_grader_request():
    task = next(t for t in _splits()["eval"] if t.style == "stdio")
    req = grader_request(task, "print(x)\n", {}, "r2")
    assert req["entry_point"] is None and req["test_code"] is None
    assert all(set(t) == {"input", "output"} and isinstance(t["input"], str)
               for t in req["tests"])


def test_assert_style_request_carries_test_code():
    task = Task(task_id="t-1", prompt="", code_prefix="", style="assert", entry_point="g",
                tests=(), test_code="assert g() == 1", reference="def g():\n    return 1\n")
    req = grader_request(task, task.reference, {}, "r3")
    assert req["tests"] == [] and req["test_code"] == "assert g() == 1"
    assert req["entry_point"] == "g"
    assert passes(task, task.reference) and not passes(task, "def g():\n    return 2\n")


def test_grader_sandbox_accepts_the_requests_and_passes_the_references():
    # a grader that cannot start fails this test (it is part of the harness), never skips it
    from grader_sandbox.pool import GraderPool

    tasks = _splits()["eval"][:8]
    tasks = [next(t for t in tasks if t.style == s) for s in ("call", "stdio")]
    with GraderPool(workers=1) as pool:
        reqs = [grader_request(t, c, {"timeout_s": 5}, f"{t.task_id}-{i}")
                for t in tasks for i, c in enumerate((t.reference, "oops("))]
        verdicts = pool.grade(reqs)
    assert [v.passed for v in verdicts] == [True, False, True, False]


def test_program_joins_prefix_completion_and_suffix_per_mode():
    task = Task(task_id="t-2", prompt="# p\ndef f(x):\n", code_prefix="import os\n# p\ndef f(x):\n",
                style="call", entry_point="_harness_call", tests=({"args": [1], "expected": 1},),
                test_code=None, reference="    return x\n", fn_name="f",
                chat_prefix="import os", code_suffix="\ndef _harness_call(*a):\n    return f(*a)\n")
    assert program(task, "    return x") == (
        "import os\n# p\ndef f(x):\n    return x\n\ndef _harness_call(*a):\n    return f(*a)\n")
    assert program(task, "def f(x):\n    return x", chat=True).startswith(
        "import os\ndef f(x):\n    return x\n\ndef _harness_call")
    assert task.function_name == "f" and task.n_tests == 1
    hoisted = program(task, "from __future__ import annotations\ndef f(x):\n    return x",
                      chat=True)
    assert hoisted.startswith("from __future__ import annotations\nimport os\ndef f(x):")
    compile(hoisted, "<t>", "exec")


def test_per_test_time_limit_shrinks_the_sample_timeout_never_raises_it():
    base = dict(task_id="t-3", prompt="", code_prefix="", style="stdio", entry_point=None,
                test_code=None, reference="", tests=({"input": "", "output": ""},) * 3)
    fast = Task(**base, time_limit_s=0.5)
    assert grader_request(fast, "", {"timeout_s": 5}, "r")["limits"]["timeout_s"] == 1.5
    slow = Task(**base, time_limit_s=10.0)
    assert grader_request(slow, "", {"timeout_s": 5}, "r")["limits"]["timeout_s"] == 5
    assert grader_request(Task(**base), "", {"timeout_s": 5}, "r")["limits"] == {"timeout_s": 5}
    with pytest.raises(ValueError, match="time_limit_s"):
        Task(**base, time_limit_s=0)
