"""Dataset task sources, offline: fixture records with each dataset's own field structure are
loaded through `datasets`, normalised, dropped when they cannot be graded, selected
deterministically, and their reference solutions graded by the real sandboxed grader."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib
from pathlib import Path

import pytest

from harness.spec.schema import TasksSpec
from harness.tasks import (
    TASK_SOURCES,
    Task,
    grader_request,
    load_selection,
    load_splits,
    program,
    split_ids,
)
from harness.tasks import dataset as ds_mod
from harness.tasks.apps import call_tests, parse_input_output, parse_time_limit, py_literal
from harness.tasks.code_contests import time_limit_seconds
from harness.tasks.dataset import Drop
from harness.tasks.humaneval import PINNED_REVISION as HUMANEVAL_REVISION
from harness.tasks.livecodebench import decode_private_tests, pickled_str
from harness.tasks.mbpp import entry_point_of

FIX = Path(__file__).resolve().parent / "fixtures" / "tasks"
SOURCES = ("humaneval", "mbpp", "apps", "taco", "code_contests", "livecodebench")
FILES = {"humaneval": "humaneval/humaneval.jsonl", "mbpp": "mbpp/full.jsonl",
         "apps": "apps/test.jsonl", "taco": "taco/test.jsonl",
         "code_contests": "code_contests/test.jsonl",
         "livecodebench": "livecodebench/test.jsonl"}


@pytest.fixture(autouse=True, scope="module")
def _datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Arrow caches of the fixtures go to a temporary directory, not the user's HF cache."""
    import datasets

    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("hf-datasets")
    yield
    datasets.config.HF_DATASETS_CACHE = old


def spec(source: str, train: int = 1, eval: int = 1, test: int = 1, seed: int = 0,
         **options: object) -> TasksSpec:
    opts = {"data_files": str(FIX / FILES[source]), **options}
    return TasksSpec(source=source, train=train, eval=eval, test=test, split_seed=seed,
                     options=opts)


_CACHE: dict[str, object] = {}


def selection(source: str, **kw: object):
    key = json.dumps([source, kw], sort_keys=True)
    if key not in _CACHE:
        _CACHE[key] = load_selection(spec(source, **kw))
    return _CACHE[key]


def all_tasks(sel) -> list[Task]:
    return [t for split in ("train", "eval", "test") for t in sel.splits[split]]


# --------------------------------------------------------------------------- registry, options
def test_every_dataset_source_is_registered_with_a_version():
    for name in SOURCES:
        assert name in TASK_SOURCES
        assert getattr(TASK_SOURCES.get(name), "version", None) is not None


@pytest.mark.parametrize("source", SOURCES)
def test_options_are_completed_with_the_pinned_revision(source):
    t = TasksSpec(source=source)
    assert t.options["revision"] == TASK_SOURCES.get(source).Options.model_fields[
        "revision"].default
    assert t.options["data_files"] is None and "max_test_bytes" in t.options
    assert TasksSpec.model_validate(t.model_dump(mode="json")) == t  # idempotent


@pytest.mark.parametrize(("source", "options", "match"), [
    ("apps", {"difficulty": ["easy"]}, r"options\.difficulty: unknown difficulty 'easy'"),
    ("taco", {"revison": "x"}, r"options\.revison: unknown option \(did you mean 'revision'"),
    ("mbpp", {"dataset_split": "dev"}, r"unknown dataset split"),
    ("humaneval", {"difficulty": ["easy"]}, r"no difficulty labels"),
    ("livecodebench", {"start_date": "yesterday"}, r"not a date"),
    ("code_contests", {"min_rating": 2000, "max_rating": 1000}, r"min_rating"),
])
def test_bad_options_fail_spec_validation_with_a_clear_message(source, options, match):
    with pytest.raises(ValueError, match=match):
        TasksSpec(source=source, options=options)


def test_difficulty_labels_are_canonicalised():
    assert TasksSpec(source="taco", options={"difficulty": ["easy"]}).options[
        "difficulty"] == ["EASY"]


# --------------------------------------------------------------------------- selection
@pytest.mark.parametrize("source", SOURCES)
def test_fixture_loads_and_splits_are_disjoint(source):
    sel = selection(source)
    ids = [t.task_id for t in all_tasks(sel)]
    assert len(ids) == 3 == len(set(ids))
    rec = sel.record()
    assert rec["source"] == source and rec["splits"] == split_ids(sel.splits)
    assert set(rec) >= {"revision", "version", "dataset_split", "split_seed", "pool",
                        "examined", "dropped", "filtered", "options"}
    json.dumps(rec)  # plain JSON
    for t in all_tasks(sel):
        assert t.meta["source"] == source and t.n_tests >= 1


@pytest.mark.parametrize("source", SOURCES)
def test_rerunning_selects_the_same_problems(source):
    a = load_selection(spec(source)).record()
    b = load_selection(spec(source)).record()
    assert a == b
    assert load_splits(spec(source)) == selection(source).splits


def test_split_seed_changes_the_selection_and_test_split_ignores_train_size():
    ids = {seed: split_ids(load_splits(spec("apps", 2, 2, 2, seed=seed,
                                            max_test_bytes=4096)))
           for seed in (0, 1)}
    assert ids[0] != ids[1]
    smaller = split_ids(load_splits(spec("apps", 1, 2, 2, max_test_bytes=4096)))
    assert smaller["test"] == ids[0]["test"] and smaller["eval"] == ids[0]["eval"]


def test_too_few_usable_problems_is_a_clear_error():
    with pytest.raises(ValueError, match=r"only 3 usable problems .* = 4 .*dropped"):
        load_selection(spec("humaneval", 2, 1, 1))


def test_drops_are_counted_by_reason_and_never_selected():
    sel = selection("apps", train=2, eval=2, test=2, max_test_bytes=4096)
    rec = sel.record()
    assert rec["dropped"] == {"malformed_tests": 1, "no_tests": 1}
    assert rec["pool"] == 8 and rec["examined"] == 8
    chosen = {t.meta["native_id"] for t in all_tasks(sel)}
    assert chosen.isdisjoint({4007, 4008})


def test_filters_are_counted_apart_from_drops():
    rec = selection("taco", train=1, eval=1, test=1).record()
    assert rec["filtered"] == {"pictures": 1} and rec["dropped"] == {"no_tests": 1}
    with pytest.raises(ValueError, match="only 2 usable"):
        load_selection(spec("apps", 1, 1, 1, difficulty=["interview"]))
    rec = load_selection(spec("apps", 1, 1, 1, max_statement_chars=70,
                              max_test_bytes=4096)).record()
    assert rec["filtered"]["max_statement_chars"] >= 1


def test_huge_tests_are_left_out_within_the_byte_budget():
    sel = selection("apps", train=2, eval=2, test=2, max_test_bytes=4096)
    huge = next(t for t in all_tasks(sel) if t.meta["native_id"] == 4006)
    assert huge.meta["tests_total"] == 3 and huge.meta["tests_used"] == 2
    assert huge.meta["tests_left_out"] == 1 and len(huge.tests) == 2
    assert sel.record()["partial_tests"] == [huge.task_id]
    with pytest.raises(Drop, match="tests_too_large"):
        ds_mod.budget_tests([{"input": "x" * 100, "output": ""}],
                            TASK_SOURCES.get("apps").Options(max_test_bytes=10))


# --------------------------------------------------------------------------- per-source quirks
def test_humaneval_from_the_installed_package_by_default():
    sel = load_selection(TasksSpec(source="humaneval", train=2, eval=2, test=2))
    assert sel.record()["revision"] == HUMANEVAL_REVISION and sel.record()["pool"] == 164
    t = sel.splits["test"][0]
    assert t.style == "assert" and t.task_id.startswith("HumanEval/")
    assert t.code_prefix == t.prompt == t.chat_prefix and "\ndef " in t.meta["stop"]


def test_humaneval_with_another_installed_file_is_refused():
    with pytest.raises(ValueError, match=r"sha256 .* not the pinned"):
        load_selection(TasksSpec(source="humaneval", train=1, eval=1, test=1,
                                 options={"revision": "0" * 64}))


def test_mbpp_full_and_sanitized():
    sel = selection("mbpp", challenge_tests=True)
    by_id = {t.task_id: t for t in all_tasks(sel)}
    assert set(by_id) == {"mbpp/601", "mbpp/602", "mbpp/603"}
    assert "\r" not in by_id["mbpp/601"].reference  # CRLF normalised
    assert by_id["mbpp/602"].entry_point == "shared_elements"  # called inside set(...)
    t603 = by_id["mbpp/603"]
    assert t603.test_code.startswith("import math\n") and t603.meta["n_tests"] == 4
    assert "Your code should pass these tests" in t603.statement
    san = load_selection(TasksSpec(source="mbpp", train=1, eval=1, test=1, options={
        "data_files": {"test": str(FIX / "mbpp/sanitized.jsonl")}, "config": "sanitized"}))
    rec = san.record()
    assert sum(rec["dropped"].values()) == rec["examined"] - 3  # examined = selected + dropped
    assert "mbpp/613" not in {t.task_id for t in all_tasks(san)}
    circle = next(t for t in all_tasks(san) if t.entry_point == "circle_area")
    assert circle.test_code.startswith("import math\n")


def test_mbpp_entry_point_rules():
    assert entry_point_of("def f(x):\n  return x", ["assert f(1) == 1"]) == "f"
    assert entry_point_of("def g(x): pass", ["assert len(h(1)) == 1"]) == "h"
    assert entry_point_of("", ["assert True"]) is None


def test_apps_call_based_outputs_wrapped_or_bare_and_class_solution():
    sel = selection("apps", train=2, eval=2, test=2, max_test_bytes=4096)
    by = {t.meta["native_id"]: t for t in all_tasks(sel)}
    codewars, leetcode = by[4003], by[4004]
    assert codewars.style == leetcode.style == "assert"
    assert codewars.entry_point == "_harness_call" and codewars.fn_name == "sum_of_intervals"
    assert "_harness_eq(_harness_call([[1, 5]]), [4])" in codewars.test_code
    assert "_harness_eq(_harness_call([1, 2, 3, 4]), [1, 3, 6, 10])" in leetcode.test_code
    assert "class Solution" in leetcode.starter_code and leetcode.code_suffix
    assert by[4002].tests[0] == {"input": "3\n1 5 2", "output": "5\n1"}  # lists of lines
    assert "{1: 2, 3: 4}" in by[4005].test_code  # integer dict keys restored


def test_input_output_quirks():
    with pytest.raises(Drop, match="no_tests"):
        parse_input_output("")
    with pytest.raises(Drop, match="no_tests"):
        parse_input_output(json.dumps({"inputs": [], "outputs": []}))
    with pytest.raises(Drop, match="malformed_tests"):
        parse_input_output("{not json")
    with pytest.raises(Drop, match="malformed_tests"):
        parse_input_output(json.dumps({"inputs": ["1"], "outputs": ["1", "2"]}))
    assert call_tests([[{"2": 3}]], [{"1": "a"}]) == [
        {"args": [{2: 3}], "expected": [{1: "a"}]}]
    assert py_literal([float("inf"), None, {"a": True}]) == "[float('inf'), None, {'a': True}]"


def test_taco_time_limits_and_class_solution():
    assert parse_time_limit("1 second") == 1.0
    assert parse_time_limit("2.5 seconds") == 2.5
    assert parse_time_limit("500 ms") == 0.5
    assert parse_time_limit("None") is None and parse_time_limit("") is None
    by = {t.meta["name"]: t for t in all_tasks(selection("taco"))}
    assert by["square"].time_limit_s == 1.0 and by["sum"].time_limit_s == 2.5
    assert by["palindrome"].time_limit_s is None and by["palindrome"].fn_name == "isPalindrome"
    req = grader_request(by["square"], "print(1)\n", {"timeout_s": 10}, "r", chat=True)
    assert req["limits"]["timeout_s"] == 2.0  # 1 s per test x 2 tests, under the cap
    off = load_selection(spec("taco", time_limits=False))
    assert all(t.time_limit_s is None for t in all_tasks(off))


def test_code_contests_time_limits_file_io_and_difficulty_names():
    assert time_limit_seconds({"seconds": 2, "nanos": 500_000_000}) == 2.5
    assert time_limit_seconds(None) is None and time_limit_seconds({"seconds": 0}) is None
    sel = load_selection(spec("code_contests", 1, 1, 1))
    rec = sel.record()
    assert rec["pool"] == 5 and sum(rec["dropped"].values()) == rec["examined"] - 3
    assert set(rec["dropped"]) <= {"file_io", "no_tests"}
    by = {t.meta["native_id"]: t for t in all_tasks(sel)}
    assert set(by) == {"1500_A. Double it", "1500_B. Parity", "p00001 Sum"}
    double = by["1500_A. Double it"]
    assert double.time_limit_s == 1.0 and double.meta["difficulty"] == "A"
    assert len(double.tests) == 2 and double.reference.startswith("t = int")  # Python 3
    assert by["1500_B. Parity"].time_limit_s == 0.5
    assert by["p00001 Sum"].time_limit_s is None
    gen = load_selection(spec("code_contests", 1, 1, 1, generated_tests=True))
    assert {t.meta["native_id"]: len(t.tests) for t in all_tasks(gen)}[
        "1500_A. Double it"] == 3
    with pytest.raises(ValueError, match=r"only 2 usable .*pool 3 after filters "
                       r"\{'difficulty': 1, 'rating': 1\}, dropped \{'file_io': 1\}"):
        load_selection(spec("code_contests", 1, 1, 1, min_rating=800, max_rating=1500,
                            difficulty=["A", "B", "C", "D"]))


def test_livecodebench_public_and_private_tests():
    sel = selection("livecodebench", train=2)
    by = {t.task_id: t for t in all_tasks(sel)}
    lc = by["livecodebench/3000"]
    assert lc.style == "call" and lc.fn_name == "countPairs" and len(lc.tests) == 3
    assert lc.tests[1] == {"args": [[1, 1, 1], 2], "expected": 3}  # decompressed private
    assert by["livecodebench/abc999_a"].style == "stdio"
    assert len(by["livecodebench/1999_B"].tests) == 2  # private tests as plain JSON
    assert sel.record()["dropped"] == {"malformed_tests": 1, "undecodable_private_tests": 1}
    dated = load_selection(spec("livecodebench", 1, 1, 1, start_date="2024-08-01",
                                end_date="2025-12-31"))
    assert dated.record()["filtered"] == {"date": 1}
    assert "livecodebench/abc998_b" not in {t.task_id for t in all_tasks(dated)}
    lc = load_selection(spec("livecodebench", 1, 1, 1, platforms=["atcoder", "codeforces"]))
    assert lc.record()["filtered"] == {"platform": 3}


def test_private_tests_are_read_without_unpickling():
    tests = [{"input": "1", "output": "2", "testtype": "stdin"}]
    blob = base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()
    assert decode_private_tests(blob) == tests
    assert decode_private_tests(json.dumps(tests)) == tests
    for proto in range(0, pickle.HIGHEST_PROTOCOL + 1):
        assert pickled_str(pickle.dumps("x" * 70_000, protocol=proto)) == "x" * 70_000
    marker = Path(os.environ.get("TMPDIR", "/tmp")) / "harness-lcb-pwned"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with pytest.raises(Drop, match=r"undecodable.*opcode GLOBAL"):
        decode_private_tests(base64.b64encode(zlib.compress(evil)).decode())
    assert not marker.exists()
    with pytest.raises(ValueError):
        pickled_str(pickle.dumps(["a", "b"]))
    bomb = base64.b64encode(zlib.compress(b"\0" * (1 << 20))).decode()
    with pytest.raises(Drop, match="more than"):
        decode_private_tests(bomb, max_bytes=1 << 10)


# --------------------------------------------------------------------------- hub loading
@pytest.mark.parametrize(("source", "options", "expected"), [
    ("mbpp", {}, {"path": "google-research-datasets/mbpp", "name": "full", "split": "test",
                  "revision": "4bb6404fdc6cacfda99d4ac4205087b89d32030c"}),
    ("apps", {}, {"path": "json", "split": "train", "data_files": [
        "hf://datasets/codeparrot/apps@21e74ddf8de1a21436da12e3e653065c5213e9d1/test.jsonl"]}),
    ("taco", {"dataset_split": "train"}, {"path": "arrow", "split": "train", "data_files": [
        "hf://datasets/BAAI/TACO@d593ed0a2becbbc952230bb89be09189bf1056dc/train/*.arrow"]}),
    ("code_contests", {}, {"path": "deepmind/code_contests", "split": "test",
                           "revision": "802411c3010cb00d1b05bad57ca77365a3c699d6"}),
    ("livecodebench", {"dataset_split": "release_v2"}, {"path": "json", "split": "train",
     "data_files": [f"hf://datasets/livecodebench/code_generation_lite@"
                    f"0fe84c3912ea0c4d4a78037083943e8f0c4dd505/{f}"
                    for f in ("test.jsonl", "test2.jsonl")]}),
])
def test_hub_loading_uses_the_pinned_revision(monkeypatch, source, options, expected):
    calls = []

    def fake(**kwargs):
        calls.append(kwargs)
        raise ConnectionError("no network here")

    monkeypatch.setattr(ds_mod, "_load_dataset", fake)
    with pytest.raises(ValueError, match=r"cannot load split .* HF cache"):
        load_selection(TasksSpec(source=source, options=options))
    assert calls == [expected]


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_selection(TasksSpec(source="apps", options={
            "data_files": str(tmp_path / "nope.jsonl")}))


# --------------------------------------------------------------------------- the real grader
REFERENCE_FIX = {  # LiveCodeBench publishes no solutions: ours, for the fixture problems
    "livecodebench/3000": "class Solution:\n    def countPairs(self, nums: List[int], target: "
                          "int) -> int:\n        return sum(nums[i] + nums[j] == target for i "
                          "in range(len(nums)) for j in range(i + 1, len(nums)))\n",
    "livecodebench/abc999_a": "a, b = map(int, input().split())\nprint(a + b)\n",
    "livecodebench/1999_B": "print(input()[::-1])\n",
    "livecodebench/abc998_b": "print(max(map(int, input().split())))\n",
}


def _reference(task: Task) -> tuple[str, bool]:
    if task.task_id in REFERENCE_FIX:
        return REFERENCE_FIX[task.task_id], True
    return task.reference, bool(task.meta.get("reference_is_program"))


def _wrong(task: Task) -> str:
    if task.style == "stdio":
        return "print('wrong')\n"
    return f"def {task.function_name}(*args):\n    return 'wrong'\n"


@pytest.fixture(scope="module")
def pool():
    # a grader that cannot start fails the tests that need it, never skips them
    from grader_sandbox.pool import GraderPool

    with GraderPool(workers=2) as p:
        yield p


@pytest.mark.slow
def test_references_pass_and_wrong_programs_fail_in_the_sandbox(pool):
    tasks = [t for source in SOURCES for t in all_tasks(
        selection(source, train=2, eval=2, test=2, max_test_bytes=4096) if source == "apps"
        else selection(source))]
    reqs = []
    for t in tasks:
        ref, chat = _reference(t)
        reqs.append(grader_request(t, ref, {"timeout_s": 10}, f"{t.task_id}|ref", chat=chat))
        reqs.append(grader_request(t, _wrong(t), {"timeout_s": 10}, f"{t.task_id}|bad",
                                   chat=True))
    verdicts = {v.id: v for v in pool.grade(reqs)}
    failed = {k: (v.status, v.error_type) for k, v in verdicts.items()
              if k.endswith("|ref") and not v.passed}
    assert not failed
    passed_wrong = [k for k, v in verdicts.items() if k.endswith("|bad") and v.passed]
    assert not passed_wrong
    assert {t.meta["source"] for t in tasks} == set(SOURCES)


@pytest.mark.slow
def test_base_model_completions_continue_the_starter_code(pool):
    by = {t.meta["native_id"]: t for t in all_tasks(
        selection("apps", train=2, eval=2, test=2, max_test_bytes=4096))}
    codewars, leetcode = by[4003], by[4004]
    assert codewars.code_prefix.endswith("def sum_of_intervals(intervals):\n")
    body = "    s = set()\n    for a, b in intervals:\n        s.update(range(a, b))\n" \
           "    return len(s)\n"
    lc_body = "        out, t = [], 0\n        for x in nums:\n            t += x\n" \
              "            out.append(t)\n        return out\n"
    he = next(t for t in all_tasks(selection("humaneval")) if t.task_id == "HumanEval/53")
    reqs = [grader_request(codewars, body, {}, "cw"), grader_request(leetcode, lc_body, {}, "lc"),
            grader_request(he, "    return x + y\n", {}, "he"),
            grader_request(he, "    return x - y\n", {}, "he-bad")]
    assert [v.passed for v in pool.grade(reqs)] == [True, True, True, False]
    assert program(he, "    return x + y\n") == he.prompt + "    return x + y\n"


def test_tiny_humaneval_spec_selects_short_problems_offline():
    from harness.spec import load_spec

    spec_, _ = load_spec("tiny-humaneval")
    sel = load_selection(spec_.tasks)
    assert spec_.tasks.source == "humaneval" and sel.record()["revision"] == HUMANEVAL_REVISION
    tasks = all_tasks(sel)
    assert len(tasks) == 9 and all(len(t.prompt) <= 300 for t in tasks)
