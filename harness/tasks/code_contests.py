"""CodeContests (`deepmind/code_contests`, AlphaCode's data): stdin/stdout problems from
Codeforces, AtCoder, CodeChef, HackerEarth, Aizu, Code Jam.

Record: `name`, `description`, `public_tests` / `private_tests` / `generated_tests` (each
{"input": [str], "output": [str]}), `source` and `difficulty` (class labels, stored as
integers), `solutions` / `incorrect_solutions` ({"language": [int], "solution": [str]};
language 3 = PYTHON3, 1 = Python 2), `cf_contest_id`, `cf_index`, `cf_points`, `cf_rating`,
`cf_tags`, `is_description_translated`, `untranslated_description`, `time_limit`
({"seconds", "nanos"} or null), `memory_limit_bytes`, `input_file`, `output_file`. Splits:
train, valid, test.

Task: `stdio` style; tests are the public then private tests (the generated ones, often many
and large, with `generated_tests: true`), within the byte budget; `time_limit` becomes the
per-test limit; the first Python 3 solution is the reference. Dropped: no tests (`no_tests`),
inputs and outputs of different counts (`malformed_tests`), problems read from / written to
files (`input_file` / `output_file` set: `file_io`), every test over the budget
(`tests_too_large`). Not detectable from the data: problems that accept several answers
(they need a checker the dataset does not ship); they can fail correct programs.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, model_validator

from harness.tasks.apps import STDIO_HINT
from harness.tasks.base import Task
from harness.tasks.dataset import DatasetSource, Drop, budget_tests, code_block, comment_block
from harness.tasks.options import DatasetOptions
from harness.tasks.registry import TASK_SOURCES

HUB_ID = "deepmind/code_contests"
PINNED_REVISION = "802411c3010cb00d1b05bad57ca77365a3c699d6"
# ClassLabel names of `difficulty` (index = stored integer) and `source`.
DIFFICULTY_NAMES = ("UNKNOWN_DIFFICULTY", "EASY", "MEDIUM", "HARD", "HARDER", "HARDEST",
                    "EXTERNAL", *"ABCDEFGHIJKLMNOPQRSTUV")
SOURCE_NAMES = ("UNKNOWN_SOURCE", "CODECHEF", "CODEFORCES", "HACKEREARTH", "CODEJAM",
                "ATCODER", "AIZU")
PYTHON3 = 3


class CodeContestsOptions(DatasetOptions):
    DIFFICULTIES: ClassVar[tuple[str, ...]] = DIFFICULTY_NAMES
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "valid", "test")

    revision: str = Field(PINNED_REVISION, description=DatasetOptions.model_fields[
        "revision"].description)
    dataset_split: str | list[str] = Field(
        "test", description="train (13328 problems), valid (117) and/or test (165).")
    generated_tests: bool = Field(False, description="Also use `generated_tests`.")
    min_rating: int | None = Field(
        None, description="Keep problems with Codeforces rating >= this (unrated ones go).")
    max_rating: int | None = Field(
        None, description="Keep problems with Codeforces rating <= this (unrated ones go).")
    time_limits: bool = Field(
        True, description="Apply each problem's `time_limit` per test (capped by the grader's "
        "timeout_s).")

    @model_validator(mode="after")
    def _rating_range(self) -> CodeContestsOptions:
        if self.min_rating is not None and self.max_rating is not None \
                and self.min_rating > self.max_rating:
            raise ValueError(f"min_rating ({self.min_rating}) > max_rating ({self.max_rating})")
        return self


def time_limit_seconds(value: Any) -> float | None:
    """{"seconds": s, "nanos": n} -> s + n / 1e9; None when absent or zero."""
    if not isinstance(value, dict):
        return None
    total = float(value.get("seconds") or 0) + float(value.get("nanos") or 0) / 1e9
    return total if total > 0 else None


def _pairs(tests: Any) -> list[dict[str, str]]:
    if not tests:
        return []
    inputs, outputs = tests.get("input") or [], tests.get("output") or []
    if len(inputs) != len(outputs):
        raise Drop("malformed_tests", "inputs and outputs differ in count")
    return [{"input": i, "output": o} for i, o in zip(inputs, outputs, strict=True)]


class CodeContestsSource(DatasetSource):
    name = "code_contests"
    description = ("CodeContests (deepmind/code_contests): stdin/stdout contest problems from "
                   "Codeforces, AtCoder, CodeChef and others.")
    Options = CodeContestsOptions
    hub_id = HUB_ID
    id_column = "name"
    difficulty_column = "difficulty"
    statement_column = "description"
    extra_columns = ("cf_rating",)

    def difficulty_of(self, value: Any) -> str | None:
        if isinstance(value, int) and 0 <= value < len(DIFFICULTY_NAMES):
            return DIFFICULTY_NAMES[value]
        return None if value is None else str(value)

    def keep(self, row: dict[str, Any], opts: Any) -> str | None:
        if opts.min_rating is None and opts.max_rating is None:
            return None
        rating = row.get("cf_rating") or 0
        if rating <= 0 or (opts.min_rating is not None and rating < opts.min_rating) \
                or (opts.max_rating is not None and rating > opts.max_rating):
            return "rating"
        return None

    def remote(self, split: str, opts: Any) -> dict[str, Any]:
        return {"path": HUB_ID, "split": split, "revision": opts.revision}

    def build(self, split: str, index: int, row: dict[str, Any], opts: Any) -> Task:
        if (row.get("input_file") or "").strip() or (row.get("output_file") or "").strip():
            raise Drop("file_io")
        tests = _pairs(row.get("public_tests")) + _pairs(row.get("private_tests"))
        if opts.generated_tests:
            tests += _pairs(row.get("generated_tests"))
        tests, counts = budget_tests(tests, opts)
        sols = row.get("solutions") or {}
        reference = next((code_block(s) for lang, s in zip(
            sols.get("language") or [], sols.get("solution") or [], strict=False)
            if lang == PYTHON3), "")
        description = (row.get("description") or "").strip()
        prompt = comment_block(description) + STDIO_HINT
        source = row.get("source")
        return Task(
            task_id=self.task_id(split, row["name"]), prompt=prompt, code_prefix=prompt,
            style="stdio", entry_point=None, tests=tuple(tests), test_code=None,
            reference=reference,
            meta={"source": self.name, "native_id": row["name"], "split": split,
                  "revision": opts.revision, "difficulty": self.difficulty_of(
                      row.get("difficulty")), "cf_rating": row.get("cf_rating"),
                  "origin": SOURCE_NAMES[source] if isinstance(source, int)
                  and 0 <= source < len(SOURCE_NAMES) else source,
                  "memory_limit_bytes": row.get("memory_limit_bytes"),
                  "time_limit": time_limit_seconds(row.get("time_limit")),
                  "reference_is_program": True, "n_tests": len(tests), **counts},
            statement=description,
            time_limit_s=time_limit_seconds(row.get("time_limit")) if opts.time_limits
            else None, float_tol=opts.float_tol)


TASK_SOURCES.add(CodeContestsSource.name, CodeContestsSource())
