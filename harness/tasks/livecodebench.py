"""LiveCodeBench code generation (`livecodebench/code_generation_lite`): LeetCode, AtCoder and
Codeforces problems with contest dates, released in versions (`release_v1` ... `release_v6`).

Record (every field a string): `question_title`, `question_content`, `platform`,
`question_id`, `contest_id`, `contest_date` (ISO), `starter_code`, `difficulty` (easy /
medium / hard), `public_test_cases` (JSON list of {"input", "output", "testtype"}),
`private_test_cases` (the same JSON, or that JSON pickled, zlib-compressed and base64-encoded),
`metadata` (JSON; `func_name` for LeetCode problems).

Tests: public + private. `testtype` `stdin`: `stdio` style. `functional` (LeetCode): each
input line is one JSON argument, the output is the JSON result; `call` style through a shim
that calls `Solution().<func_name>` (or a module-level function of that name), with the
LiveCodeBench imports in front. No per-problem time limits in the data.

Private tests and pickle: the published format is base64(zlib(pickle.dumps(json_text))). We
never unpickle it: `pickled_str` walks the pickle's opcodes with `pickletools` (a parser, it
executes nothing), accepts only a pickle that holds exactly one string (protocol, frame,
string, memo and stop opcodes), and returns that string; anything else (a global, a call, a
container) is rejected, and the problem dropped as `undecodable_private_tests`. Decompression
is capped (`MAX_PRIVATE_BYTES`).

Dropped: no tests (`no_tests`), tests that do not parse, mix stdin and functional types or
lack `func_name` (`malformed_tests`), undecodable private tests, every test over the budget.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import pickletools
import zlib
from typing import Any, ClassVar

from pydantic import Field, field_validator

from harness.tasks.apps import STDIO_HINT
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
    is_plain_json,
)
from harness.tasks.options import DatasetOptions
from harness.tasks.registry import TASK_SOURCES

HUB_ID = "livecodebench/code_generation_lite"
PINNED_REVISION = "0fe84c3912ea0c4d4a78037083943e8f0c4dd505"
_FILES = ["test.jsonl", *(f"test{i}.jsonl" for i in range(2, 7))]
# Which files make up each version tag (cumulative releases, and single windows vN).
RELEASE_FILES: dict[str, list[str]] = {
    **{f"release_v{i}": _FILES[:i] for i in range(1, 7)},
    "release_latest": _FILES,
    **{f"v{i}": [_FILES[i - 1]] for i in range(1, 7)},
}
MAX_PRIVATE_BYTES = 256 << 20
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_ALLOWED_OPS = _STRING_OPS | {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT",
                              "STOP"}


def pickled_str(payload: bytes) -> str:
    """The string a pickle of one `str` holds, read from its opcodes without unpickling.

    Raises ValueError for anything else (globals, calls, containers, several strings)."""
    strings = []
    for op, arg, _ in pickletools.genops(payload):
        if op.name not in _ALLOWED_OPS:
            raise ValueError(f"pickle opcode {op.name} is not part of a pickled string")
        if op.name in _STRING_OPS:
            strings.append(arg)
    if len(strings) != 1 or not isinstance(strings[0], str):
        raise ValueError("the pickle does not hold exactly one string")
    return strings[0]


def decode_private_tests(text: str, max_bytes: int = MAX_PRIVATE_BYTES) -> list[Any]:
    """The private test list: plain JSON, or base64(zlib(pickle(json text)))."""
    text = (text or "").strip()
    if not text:
        return []
    if text[0] in "[{":
        try:
            out = json.loads(text)
            return out if isinstance(out, list) else [out]
        except ValueError:
            pass
    try:
        raw = base64.b64decode(text, validate=True)
        inflate = zlib.decompressobj()
        payload = inflate.decompress(raw, max_bytes)
        if inflate.unconsumed_tail:
            raise ValueError(f"private tests decompress to more than {max_bytes} bytes")
        out = json.loads(pickled_str(payload))
    except (ValueError, binascii.Error, zlib.error) as e:
        raise Drop("undecodable_private_tests", str(e)) from None
    return out if isinstance(out, list) else [out]


def _date(v: str | None) -> str | None:
    if v is None:
        return None
    try:
        return dt.date.fromisoformat(str(v)[:10]).isoformat()
    except ValueError:
        raise ValueError(f"{v!r} is not a date (YYYY-MM-DD)") from None


class LiveCodeBenchOptions(DatasetOptions):
    DIFFICULTIES: ClassVar[tuple[str, ...]] = ("easy", "medium", "hard")
    SPLITS: ClassVar[tuple[str, ...]] = tuple(RELEASE_FILES)

    revision: str = Field(PINNED_REVISION, description=DatasetOptions.model_fields[
        "revision"].description)
    dataset_split: str | list[str] = Field(
        "release_v5", description="Version tag(s): release_v1 ... release_v6 (cumulative), "
        "release_latest, or v1 ... v6 (one release window each).")
    start_date: str | None = Field(
        None, description="Keep problems from contests on or after this date (YYYY-MM-DD).")
    end_date: str | None = Field(
        None, description="Keep problems from contests on or before this date (YYYY-MM-DD).")
    platforms: list[str] | None = Field(
        None, description="Keep problems of these platforms (leetcode, atcoder, codeforces).")

    @field_validator("start_date", "end_date")
    @classmethod
    def _iso(cls, v: str | None) -> str | None:
        return _date(v)

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, v: list[str] | None) -> list[str] | None:
        known = ("leetcode", "atcoder", "codeforces")
        if v is not None:
            bad = [p for p in v if p not in known]
            if bad:
                raise ValueError(f"unknown platform(s) {bad}; known: {', '.join(known)}")
        return v


class LiveCodeBenchSource(DatasetSource):
    name = "livecodebench"
    description = ("LiveCodeBench code generation (livecodebench/code_generation_lite): "
                   "LeetCode, AtCoder and Codeforces problems with contest dates.")
    Options = LiveCodeBenchOptions
    hub_id = HUB_ID
    id_column = "question_id"
    difficulty_column = "difficulty"
    statement_column = "question_content"
    extra_columns = ("contest_date", "platform")

    def task_id(self, split: str, native_id: Any) -> str:
        # Version tags overlap (release_v2 holds release_v1's problems): the id is the
        # problem's own, so a problem in two requested tags is counted once.
        return f"livecodebench/{native_id}"

    def keep(self, row: dict[str, Any], opts: Any) -> str | None:
        day = str(row.get("contest_date") or "")[:10]
        if opts.start_date is not None and day < opts.start_date:
            return "date"
        if opts.end_date is not None and day > opts.end_date:
            return "date"
        if opts.platforms is not None and row.get("platform") not in opts.platforms:
            return "platform"
        return None

    def remote(self, split: str, opts: Any) -> dict[str, Any]:
        # The repo's loading script maps version tags to these files; datasets >= 4 does not
        # run it.
        return {"path": "json", "split": "train",
                "data_files": [f"hf://datasets/{HUB_ID}@{opts.revision}/{f}"
                               for f in RELEASE_FILES[split]]}

    def build(self, split: str, index: int, row: dict[str, Any], opts: Any) -> Task:
        try:
            public = json.loads(row.get("public_test_cases") or "[]")
        except ValueError:
            raise Drop("malformed_tests", "public_test_cases is not JSON") from None
        cases = list(public if isinstance(public, list) else [public])
        cases += decode_private_tests(row.get("private_test_cases") or "")
        if not cases:
            raise Drop("no_tests")
        if not all(isinstance(c, dict) and isinstance(c.get("input"), str)
                   and isinstance(c.get("output"), str) for c in cases):
            raise Drop("malformed_tests", "a test is not {input, output}")
        kinds = {c.get("testtype") for c in cases}
        if len(kinds) != 1 or kinds - {"stdin", "functional"}:
            raise Drop("malformed_tests", f"test types {sorted(map(str, kinds))}")
        question = (row.get("question_content") or "").strip()
        starter = code_block(row.get("starter_code") or "")
        meta = {"source": self.name, "native_id": row.get("question_id"), "split": split,
                "revision": opts.revision, "difficulty": row.get("difficulty"),
                "platform": row.get("platform"), "contest_id": row.get("contest_id"),
                "contest_date": row.get("contest_date"), "title": row.get("question_title"),
                "public_tests": len(public) if isinstance(public, list) else 1}
        task_id = self.task_id(split, row.get("question_id"))
        if kinds == {"stdin"}:
            tests, counts = budget_tests(
                [{"input": c["input"], "output": c["output"]} for c in cases], opts)
            prompt = comment_block(question) + (f"\n{starter}" if starter else STDIO_HINT)
            return Task(
                task_id=task_id, prompt=prompt, code_prefix=COMPETITIVE_HEADER + prompt,
                style="stdio", entry_point=None, tests=tuple(tests), test_code=None,
                reference="", meta={**meta, **counts, "n_tests": len(tests)},
                statement=question, starter_code=starter, chat_prefix=COMPETITIVE_HEADER,
                float_tol=opts.float_tol)
        try:
            fn = json.loads(row.get("metadata") or "{}").get("func_name")
        except (ValueError, AttributeError):
            fn = None
        if not isinstance(fn, str) or not fn.isidentifier():
            raise Drop("malformed_tests", "functional tests without metadata.func_name")
        calls = []
        for c in cases:
            try:
                args = [json.loads(line) for line in c["input"].split("\n") if line.strip()]
                expected = json.loads(c["output"])
            except ValueError:
                raise Drop("malformed_tests", "functional test is not JSON") from None
            if not is_plain_json(args) or not is_plain_json(expected):
                raise Drop("malformed_tests", "functional test is not plain JSON")
            calls.append({"args": args, "expected": expected})
        tests, counts = budget_tests(calls, opts)
        prompt = comment_block(question) + ("\n" + starter if starter else "")
        return Task(
            task_id=task_id, prompt=prompt, code_prefix=COMPETITIVE_HEADER + prompt,
            style="call", entry_point=SHIM_ENTRY, tests=tuple(tests), test_code=None,
            reference="", meta={**meta, **counts, "n_tests": len(tests), "fn_name": fn},
            statement=question, starter_code=starter, fn_name=fn,
            chat_prefix=COMPETITIVE_HEADER, code_suffix=call_shim(fn), float_tol=opts.float_tol)


TASK_SOURCES.add(LiveCodeBenchSource.name, LiveCodeBenchSource())
