"""MBPP (`google-research-datasets/mbpp`), configs `full` (974 problems) and `sanitized` (427).

Records: `full`: `task_id` (int), `text`, `code`, `test_list` (3 asserts), `test_setup_code`,
`challenge_test_list`; `sanitized`: `source_file`, `task_id`, `prompt`, `code`,
`test_imports`, `test_list`. Splits: train, test, validation, prompt.

Task: `assert` style. `test_code` = the test imports / set-up code + `test_list` (plus
`challenge_test_list` with `challenge_tests: true`); each assert is one test. The function
name is not a field: it is the first function the tests call that the reference `code`
defines (else the first non-builtin function they call). The statement shows the three tests,
as the MBPP paper's prompt does. The reference `code` has Windows line endings and tabs in
places: normalised to `\\n`. Dropped: no tests (`no_tests`), no function name
(`no_entry_point`).
"""

from __future__ import annotations

import ast
import builtins
import re
from typing import Any, ClassVar, Literal

from pydantic import Field

from harness.tasks.base import Task
from harness.tasks.dataset import DatasetSource, Drop, code_block, comment_block
from harness.tasks.options import DatasetOptions
from harness.tasks.registry import TASK_SOURCES

HUB_ID = "google-research-datasets/mbpp"
PINNED_REVISION = "4bb6404fdc6cacfda99d4ac4205087b89d32030c"
_BUILTINS = set(dir(builtins))


class MBPPOptions(DatasetOptions):
    SPLITS: ClassVar[tuple[str, ...]] = ("train", "test", "validation", "prompt")

    revision: str = Field(PINNED_REVISION, description=DatasetOptions.model_fields[
        "revision"].description)
    dataset_split: str | list[str] = Field(
        "test", description="train, test, validation and/or prompt (default test: 500 "
        "problems in `full`).")
    config: Literal["full", "sanitized"] = Field("full", description="Dataset config.")
    challenge_tests: bool = Field(
        False, description="Also grade `challenge_test_list` (full config; few problems have "
        "any).")


def _defined_functions(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", code, re.MULTILINE)
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _called_names(tests: list[str]) -> list[str]:
    names: list[str] = []
    for t in tests:
        try:
            tree = ast.parse(t)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id not in names:
                names.append(node.func.id)
    return names


def entry_point_of(code: str, tests: list[str]) -> str | None:
    """The function under test: called by the tests and defined by the reference, else the
    first non-builtin function the tests call."""
    called = _called_names(tests)
    defined = set(_defined_functions(code))
    for name in called:
        if name in defined:
            return name
    return next((n for n in called if n not in _BUILTINS), None)


class MBPPSource(DatasetSource):
    name = "mbpp"
    description = ("MBPP (google-research-datasets/mbpp, full or sanitized): a function from "
                   "a short statement, graded by its asserts.")
    Options = MBPPOptions
    hub_id = HUB_ID
    id_column = "task_id"
    statement_column = "text"
    extra_columns = ("prompt",)

    def task_id(self, split: str, native_id: Any) -> str:
        return f"mbpp/{native_id}"

    def statement_text(self, row: dict[str, Any]) -> str:
        return row.get("text") or row.get("prompt") or ""

    def remote(self, split: str, opts: Any) -> dict[str, Any]:
        return {"path": HUB_ID, "name": opts.config, "split": split, "revision": opts.revision}

    def build(self, split: str, index: int, row: dict[str, Any], opts: Any) -> Task:
        tests = [t for t in (row.get("test_list") or []) if t and t.strip()]
        if opts.challenge_tests:
            tests += [t for t in (row.get("challenge_test_list") or []) if t and t.strip()]
        if not tests:
            raise Drop("no_tests")
        code = code_block(row.get("code") or "")
        entry = entry_point_of(code, tests)
        if entry is None:
            raise Drop("no_entry_point")
        setup = [*(row.get("test_imports") or []), row.get("test_setup_code") or ""]
        test_code = "".join(code_block(s) for s in setup if s.strip()) + "\n".join(
            t.strip() for t in tests) + "\n"
        text = self.statement_text(row).strip()
        shown = "\n".join(t.strip() for t in (row.get("test_list") or []))
        statement = f"{text}\nYour code should pass these tests:\n\n{shown}"
        prompt = comment_block(statement)
        return Task(
            task_id=self.task_id(split, row["task_id"]), prompt=prompt, code_prefix=prompt,
            style="assert", entry_point=entry, tests=(), test_code=test_code, reference=code,
            meta={"source": self.name, "native_id": row["task_id"], "split": split,
                  "config": opts.config, "revision": opts.revision, "difficulty": None,
                  "n_tests": len(tests)},
            statement=statement)


TASK_SOURCES.add(MBPPSource.name, MBPPSource())
