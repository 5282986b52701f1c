"""APPS (`codeparrot/apps`) and TACO (`BAAI/TACO`): competitive-programming problems whose tests
are one JSON string, `input_output`.

`input_output` = {"inputs": [...], "outputs": [...], "fn_name"?: str}:

- without `fn_name` (standard input): each input / output is a string, or a list of lines
  (joined with newlines). Task: `stdio` style; outputs compare token by token.
- with `fn_name` (call-based: Codewars, LeetCode, GeeksforGeeks): each input is the argument
  list, each output the expected value, *or* that value wrapped in a one-element list (the
  harnesses of both datasets accept either: `out == expected or out == expected[0]`, tuples as
  lists). Dictionaries had their integer keys turned into strings by JSON; the harnesses turn
  them back when the first argument (or the output) is a dict, and so do we. The function may
  be module-level or a method of `class Solution` (the starter code says which): a shim
  (`_harness_call`, in `code_suffix`) calls either. Task: `assert` style, one assert per test,
  with the datasets' lenient comparison in `test_code` (the grader's `call` style has no "or
  the value wrapped in a list").

The statement is `question`; `starter_code` (a signature or class stub) is shown and, for a base
model, ends the prompt. Programs get the imports these harnesses provide
(`COMPETITIVE_HEADER`). `solutions` (a JSON list of programs) gives the reference.

Dropped (never graded as passes): `input_output` empty / missing (`no_tests`), not JSON or
inputs and outputs of different lengths or wrong shapes (`malformed_tests`), every test over
the byte budget (`tests_too_large`). TACO only: problems whose statement needs pictures
(`picture_num` > 0) are filtered out unless `pictures: true`; `time_limit` ("1 second",
"2.5 seconds", "None") becomes the per-test limit.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, ClassVar

from pydantic import Field

from harness.tasks.base import Task
from harness.tasks.dataset import (
    COMPETITIVE_HEADER,
    SHIM_ENTRY,
    DatasetSource,
    Drop,
    budget_tests,
    call_shim,
    code_block,
    comment_block,
)
from harness.tasks.options import DatasetOptions
from harness.tasks.registry import TASK_SOURCES

APPS_HUB_ID = "codeparrot/apps"
APPS_REVISION = "21e74ddf8de1a21436da12e3e653065c5213e9d1"
TACO_HUB_ID = "BAAI/TACO"
TACO_REVISION = "d593ed0a2becbbc952230bb89be09189bf1056dc"

STDIO_HINT = "# Python 3: read standard input, write the answer to standard output.\n"

# Comparison of the APPS / TACO harnesses (`out == expected`, or `out == expected[0]` when the
# expected value is a non-empty list; tuples compare as lists), run by the grader's judge.
APPS_EQ = '''def _harness_eq(out, exp):
    if isinstance(out, tuple):
        out = list(out)
    if out == exp:
        return True
    if isinstance(exp, list) and exp and out == exp[0]:
        return True
    try:
        if isinstance(out[0], tuple) and [list(x) for x in out] == exp[0]:
            return True
    except Exception:
        pass
    return False

'''


# --------------------------------------------------------------------------- input_output
def parse_input_output(raw: Any) -> tuple[list[Any], list[Any], str | None]:
    """(inputs, outputs, fn_name) of an `input_output` field; raises Drop."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise Drop("no_tests")
    try:
        io = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError):
        raise Drop("malformed_tests", "input_output is not JSON") from None
    if not isinstance(io, dict):
        raise Drop("malformed_tests", "input_output is not an object")
    inputs, outputs = io.get("inputs"), io.get("outputs")
    if not inputs:
        raise Drop("no_tests")
    if not isinstance(inputs, list) or not isinstance(outputs, list) \
            or len(inputs) != len(outputs):
        raise Drop("malformed_tests", "inputs and outputs differ in shape")
    fn = io.get("fn_name")
    if fn is not None and (not isinstance(fn, str) or not fn.isidentifier()):
        raise Drop("malformed_tests", f"fn_name {fn!r}")
    return inputs, outputs, fn


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise Drop("malformed_tests", f"stdio test of type {type(value).__name__}")


def stdio_tests(inputs: list[Any], outputs: list[Any]) -> list[dict[str, str]]:
    return [{"input": _text(i), "output": _text(o)} for i, o in zip(inputs, outputs, strict=True)]


def _int_keys(value: Any) -> Any:
    """A dict with its keys back to ints when every key is an integer literal."""
    if isinstance(value, dict):
        try:
            return {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            return value
    return value


def call_tests(inputs: list[Any], outputs: list[Any]) -> list[dict[str, Any]]:
    """[{"args", "expected"}] with the harnesses' dict-key repair."""
    tests = []
    for args, out in zip(inputs, outputs, strict=True):
        if not isinstance(args, list):
            raise Drop("malformed_tests", "call test inputs must be argument lists")
        if args and isinstance(args[0], dict):
            args = [_int_keys(args[0]), *args[1:]]
        if isinstance(out, dict):
            out = [_int_keys(out)]
        elif isinstance(out, list) and out and isinstance(out[0], dict):
            out = [_int_keys(out[0]), *out[1:]]
        tests.append({"args": args, "expected": out})
    return tests


def py_literal(value: Any) -> str:
    """Python source for plain data (non-finite floats as float('inf') and the like)."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}" for k, v in value.items()) \
            + "}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise Drop("malformed_tests", f"test value of type {type(value).__name__}")


def assert_test_code(tests: list[dict[str, Any]]) -> str:
    lines = [f"assert _harness_eq({SHIM_ENTRY}({', '.join(py_literal(a) for a in t['args'])}), "
             f"{py_literal(t['expected'])})" for t in tests]
    return APPS_EQ + "\n".join(lines) + "\n"


def first_solution(raw: Any) -> str:
    try:
        sols = json.loads(raw) if isinstance(raw, str) and raw.strip() else raw
    except ValueError:
        return ""
    if isinstance(sols, list) and sols and isinstance(sols[0], str):
        return code_block(sols[0])
    return ""


def competitive_task(source: str, task_id: str, question: str, starter: str, raw_io: Any,
                     solutions: Any, opts: Any, meta: dict[str, Any],
                     time_limit_s: float | None = None) -> Task:
    """The task of an APPS / TACO record (see the module docstring)."""
    inputs, outputs, fn = parse_input_output(raw_io)
    starter = code_block(starter or "")
    question = (question or "").strip()
    base = comment_block(question)
    meta = {**meta, "source": source, "reference_is_program": True}
    reference = first_solution(solutions)
    if fn is None:
        tests, counts = budget_tests(stdio_tests(inputs, outputs), opts)
        prompt = base + (f"\n{starter}" if starter else STDIO_HINT)
        return Task(
            task_id=task_id, prompt=prompt, code_prefix=COMPETITIVE_HEADER + prompt,
            style="stdio", entry_point=None, tests=tuple(tests), test_code=None,
            reference=reference, meta={**meta, **counts, "n_tests": len(tests)},
            statement=question, starter_code=starter, chat_prefix=COMPETITIVE_HEADER,
            time_limit_s=time_limit_s, float_tol=opts.float_tol)
    tests, counts = budget_tests(call_tests(inputs, outputs), opts)
    prompt = base + ("\n" + starter if starter else "")
    return Task(
        task_id=task_id, prompt=prompt, code_prefix=COMPETITIVE_HEADER + prompt,
        style="assert", entry_point=SHIM_ENTRY, tests=(), test_code=assert_test_code(tests),
        reference=reference, meta={**meta, **counts, "n_tests": len(tests), "fn_name": fn},
        statement=question, starter_code=starter, fn_name=fn, chat_prefix=COMPETITIVE_HEADER,
        code_suffix=call_shim(fn), time_limit_s=time_limit_s, float_tol=opts.float_tol)


# --------------------------------------------------------------------------- APPS
class APPSOptions(DatasetOptions):
    DIFFICULTIES: ClassVar[tuple[str, ...]] = ("introductory", "interview", "competition")
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "test")

    revision: str = Field(APPS_REVISION, description=DatasetOptions.model_fields[
        "revision"].description)
    dataset_split: str | list[str] = Field(
        "test", description="train and/or test (5000 problems each; ids overlap, so task ids "
        "carry the split).")


class APPSSource(DatasetSource):
    """APPS: `problem_id`, `question`, `solutions`, `input_output`, `difficulty`
    (introductory / interview / competition), `url`, `starter_code`. No time limits."""

    name = "apps"
    description = ("APPS (codeparrot/apps): competitive-programming problems, stdin/stdout or "
                   "call-based, difficulty introductory / interview / competition.")
    Options = APPSOptions
    hub_id = APPS_HUB_ID
    id_column = "problem_id"
    difficulty_column = "difficulty"
    statement_column = "question"

    def remote(self, split: str, opts: Any) -> dict[str, Any]:
        # The hub repo holds a loading script (not run by datasets >= 4) next to its data:
        # load the JSON lines directly at the pinned commit.
        return {"path": "json", "split": "train",
                "data_files": [f"hf://datasets/{APPS_HUB_ID}@{opts.revision}/{split}.jsonl"]}

    def build(self, split: str, index: int, row: dict[str, Any], opts: Any) -> Task:
        return competitive_task(
            self.name, self.task_id(split, row["problem_id"]), row.get("question") or "",
            row.get("starter_code") or "", row.get("input_output"), row.get("solutions"), opts,
            {"native_id": row["problem_id"], "split": split, "revision": opts.revision,
             "difficulty": row.get("difficulty"), "url": row.get("url")})


# --------------------------------------------------------------------------- TACO
TACO_DIFFICULTIES = ("EASY", "MEDIUM", "MEDIUM_HARD", "HARD", "VERY_HARD", "UNKNOWN_DIFFICULTY")
_TIME = re.compile(r"([0-9]*\.?[0-9]+)\s*(ms|milli|msec|s|sec|second)?", re.IGNORECASE)


def parse_time_limit(text: Any) -> float | None:
    """Seconds from TACO's `time_limit` ("1 second", "2.0 seconds", "500 ms"); None when it
    states none ("None", "", unparsable, zero)."""
    if text is None:
        return None
    m = _TIME.search(str(text))
    if not m:
        return None
    value = float(m.group(1))
    if (m.group(2) or "").lower().startswith("m"):
        value /= 1000
    return value if value > 0 else None


class TACOOptions(DatasetOptions):
    DIFFICULTIES: ClassVar[tuple[str, ...]] = TACO_DIFFICULTIES
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "test")

    revision: str = Field(TACO_REVISION, description=DatasetOptions.model_fields[
        "revision"].description)
    dataset_split: str | list[str] = Field(
        "test", description="train (25443 problems) and/or test (1000).")
    pictures: bool = Field(
        False, description="Keep problems whose statement refers to pictures (picture_num > "
        "0), which the text alone cannot show.")
    time_limits: bool = Field(
        True, description="Apply each problem's `time_limit` per test (capped by the grader's "
        "timeout_s).")


class TACOSource(DatasetSource):
    """TACO: every field is a string: `question`, `solutions`, `starter_code`,
    `input_output`, `difficulty`, `raw_tags`, `name`, `source`, `tags`, `skill_types`, `url`,
    `Expected Auxiliary Space`, `time_limit`, `date`, `picture_num`, `memory_limit`,
    `Expected Time Complexity`. No id field: the row index within the split is the id."""

    name = "taco"
    description = ("TACO (BAAI/TACO): competitive-programming problems in APPS's format, "
                   "with their time limits.")
    Options = TACOOptions
    hub_id = TACO_HUB_ID
    difficulty_column = "difficulty"
    statement_column = "question"
    extra_columns = ("picture_num",)

    def remote(self, split: str, opts: Any) -> dict[str, Any]:
        # The repo's loading script reads these arrow files; datasets >= 4 does not run it.
        return {"path": "arrow", "split": "train",
                "data_files": [f"hf://datasets/{TACO_HUB_ID}@{opts.revision}/{split}/*.arrow"]}

    def keep(self, row: dict[str, Any], opts: Any) -> str | None:
        try:
            pictures = int(float(row.get("picture_num") or 0))
        except ValueError:
            pictures = 0
        return "pictures" if pictures > 0 and not opts.pictures else None

    def build(self, split: str, index: int, row: dict[str, Any], opts: Any) -> Task:
        limit = parse_time_limit(row.get("time_limit")) if opts.time_limits else None
        return competitive_task(
            self.name, self.task_id(split, index), row.get("question") or "",
            row.get("starter_code") or "", row.get("input_output"), row.get("solutions"), opts,
            {"native_id": index, "split": split, "revision": opts.revision,
             "difficulty": row.get("difficulty"), "url": row.get("url"),
             "name": row.get("name"), "origin": row.get("source"),
             "time_limit": row.get("time_limit"), "memory_limit": row.get("memory_limit")},
            time_limit_s=limit)


TASK_SOURCES.add(APPSSource.name, APPSSource())
TASK_SOURCES.add(TACOSource.name, TACOSource())
