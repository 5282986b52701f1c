"""Dataset task sources: loading records through `datasets`, normalising them into tasks,
dropping problems without usable tests, and the deterministic train / eval / test selection.

A dataset source (a `DatasetSource` subclass, one module per dataset) says how to load a
dataset split (hub id, pinned revision, files), how to read a record's id, difficulty and
statement cheaply, and how to turn a record into a `Task` (raising `Drop(reason)` when the
record has no usable tests). Selection, common to all sources:

1. load the requested dataset split(s) (`dataset_split`), from the hub at the pinned
   `revision` or from local `data_files`;
2. keep the problems that pass the filters (`difficulty`, `max_statement_chars`, source
   extras), counted per filter in `filtered`;
3. order them by sha256(source | split_seed | task id): a fixed shuffle per split seed,
   independent of the dataset's row order;
4. walk that order, normalising each problem; fill the **test** split first, then eval, then
   train, so the test problems depend only on the seed and the test size. A problem that
   cannot be graded is skipped and counted in `dropped` by reason; it is never a pass.

The result is a `Selection`: the three task lists and `record()`, the JSON that names every
selected problem by id (what a run stores next to its results).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from harness.tasks.base import Task
from harness.tasks.options import DatasetOptions

if TYPE_CHECKING:
    from harness.spec.schema import TasksSpec

log = logging.getLogger("harness.tasks")

FILL_ORDER = ("test", "eval", "train")
SPLITS = ("train", "eval", "test")
_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".arrow": "arrow",
            ".gz": "json"}


class Drop(Exception):
    """A problem that cannot be graded; `reason` is the key it is counted under."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --------------------------------------------------------------------------- selection
@dataclass
class Selection:
    """The selected problems of a spec's `tasks` section and how they were chosen."""

    source: str
    splits: dict[str, list[Task]]
    info: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> dict[str, list[str]]:
        """{split: [task ids]} in split order."""
        return {s: [t.task_id for t in self.splits[s]] for s in SPLITS}

    def record(self) -> dict[str, Any]:
        """Plain JSON for the run directory: source, revision, options, split seed, the
        selected ids per split, the pool / examined / dropped / filtered counts, and
        `partial_tests`: selected problems graded on a subset of their tests (byte budget or
        `max_tests`)."""
        return {"source": self.source, **self.info, "splits": self.ids()}


def order_key(source: str, split_seed: int, task_id: str) -> str:
    """The position of a problem in a split seed's fixed shuffle."""
    return hashlib.sha256(f"{source}|{split_seed}|{task_id}".encode()).hexdigest()


@dataclass(frozen=True)
class Candidate:
    """A problem that passed the filters, before it is normalised."""

    task_id: str
    part: int  # index into the loaded parts
    row: int  # row index within that part


def select(source: str, candidates: Sequence[Candidate], sizes: dict[str, int],
           split_seed: int, build: Callable[[Candidate], Task],
           filtered: dict[str, int] | None = None
           ) -> tuple[dict[str, list[Task]], dict[str, Any]]:
    """Fill test, eval, then train from `candidates` in the seed's order.

    `build(candidate) -> Task` may raise `Drop`. Returns (splits, stats) with stats
    {"pool", "examined", "dropped": {reason: n}}. Raises ValueError when the usable problems
    run out before every split is full.
    """
    order = sorted(candidates, key=lambda c: order_key(source, split_seed, c.task_id))
    splits: dict[str, list[Task]] = {s: [] for s in SPLITS}
    dropped: Counter[str] = Counter()
    examined = 0
    walk = iter(order)
    for name in FILL_ORDER:
        while len(splits[name]) < sizes[name]:
            cand = next(walk, None)
            if cand is None:
                got = sum(len(v) for v in splits.values())
                raise ValueError(
                    f"task source {source!r}: only {got} usable problems for train+eval+test "
                    f"= {sum(sizes.values())} (pool {len(order)} after filters "
                    f"{dict(sorted((filtered or {}).items()))}, dropped "
                    f"{dict(sorted(dropped.items()))}); ask for fewer tasks or widen "
                    "dataset_split / difficulty")
            examined += 1
            try:
                splits[name].append(build(cand))
            except Drop as d:
                dropped[d.reason] += 1
    stats = {"pool": len(order), "examined": examined, "dropped": dict(sorted(dropped.items()))}
    return splits, stats


# --------------------------------------------------------------------------- loading
def _format_of(paths: list[str]) -> str:
    exts = {_FORMATS.get(Path(p).suffix.lower()) for p in paths}
    if None in exts or len(exts) != 1:
        raise ValueError(f"data_files {paths}: use .jsonl/.json(.gz), .parquet or .arrow files, "
                         "one format per source")
    return exts.pop()  # type: ignore[return-value]


def _local_paths(files: str | list[str]) -> list[str]:
    paths = [files] if isinstance(files, str) else list(files)
    out = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise ValueError(f"data file {p!r} does not exist; check tasks.options.data_files")
        out.append(str(path.resolve()))
    return out


def files_digest(paths: list[str], max_bytes: int = 256 << 20) -> dict[str, Any]:
    """What a run records about local data files: path, size and (up to `max_bytes` in
    total) sha256 of each."""
    total = sum(os.path.getsize(p) for p in paths)
    out: dict[str, Any] = {}
    for p in paths:
        entry: dict[str, Any] = {"bytes": os.path.getsize(p)}
        if total <= max_bytes:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            entry["sha256"] = h.hexdigest()
        out[p] = entry
    return out


def _load_dataset(**kwargs: Any) -> Any:
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(**kwargs)


# --------------------------------------------------------------------------- sources
class DatasetSource:
    """A task source backed by a dataset. Subclasses set the class attributes and implement
    `remote` (how to load a split from the hub), `build` (record -> Task) and, where the
    dataset needs it, `keep` (extra filters) and `difficulty_of`."""

    name: ClassVar[str]
    version: ClassVar[int] = 1  # bump when normalisation changes what a record becomes
    Options: ClassVar[type[DatasetOptions]]
    hub_id: ClassVar[str]
    id_column: ClassVar[str | None] = None  # None: the row index is the native id
    difficulty_column: ClassVar[str | None] = None
    statement_column: ClassVar[str]
    extra_columns: ClassVar[tuple[str, ...]] = ()

    # ---- per-source hooks
    def remote(self, split: str, opts: Any) -> dict[str, Any]:
        """Keyword arguments of `datasets.load_dataset` for one split from the hub."""
        raise NotImplementedError

    def build(self, split: str, index: int, row: dict[str, Any], opts: Any) -> Task:
        """The task of one record; raises `Drop(reason)` when it cannot be graded."""
        raise NotImplementedError

    def task_id(self, split: str, native_id: Any) -> str:
        return f"{self.name}/{split}/{native_id}"

    def difficulty_of(self, value: Any) -> str | None:
        return None if value is None else str(value)

    def statement_text(self, row: dict[str, Any]) -> str:
        """The problem statement as the dataset gives it (what `max_statement_chars` measures)."""
        return row.get(self.statement_column) or ""

    def keep(self, row: dict[str, Any], opts: Any) -> str | None:
        """None to keep a problem, else the name of the filter that removes it."""
        return None

    def revision_record(self, opts: Any) -> dict[str, Any]:
        if opts.data_files is not None:
            return {"revision": opts.revision, "data_files": files_digest(self._files(opts))}
        return {"revision": opts.revision, "hub_id": self.hub_id}

    # ---- loading
    def _files(self, opts: Any) -> list[str]:
        files = opts.data_files
        if isinstance(files, dict):
            return [p for s in opts.splits if s in files for p in _local_paths(files[s])]
        return _local_paths(files)

    def load_parts(self, opts: Any) -> list[tuple[str, Any]]:
        """[(dataset split, rows)] of the requested splits; rows support len() and [i]."""
        parts = []
        for split in opts.splits:
            if opts.data_files is None:
                kwargs = self.remote(split, opts)
                where = f"{self.hub_id}@{opts.revision}"
            else:
                files = opts.data_files
                if isinstance(files, dict):
                    if split not in files:
                        raise ValueError(f"data_files has no split {split!r} "
                                         f"(has {', '.join(files)}); set dataset_split")
                    files = files[split]
                paths = _local_paths(files)
                kwargs = {"path": _format_of(paths), "data_files": paths, "split": "train"}
                where = ", ".join(paths)
            try:
                rows = _load_dataset(**kwargs)
            except Exception as e:  # any loading failure is one line naming the data
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                hint = ("check the files" if opts.data_files is not None else
                        "run once with network access to fill the HF cache, or set "
                        "tasks.options.data_files to local copies")
                raise ValueError(f"task source {self.name!r}: cannot load split {split!r} "
                                 f"from {where} ({type(e).__name__}: {first[:200]}); {hint}"
                                 ) from None
            parts.append((split, rows))
        return parts

    def _cheap_rows(self, rows: Any) -> Iterator[dict[str, Any]]:
        cols = [c for c in (self.id_column, self.difficulty_column, self.statement_column,
                            *self.extra_columns) if c]
        if hasattr(rows, "select_columns"):
            present = [c for c in cols if c in rows.column_names]
            yield from rows.select_columns(present)
        else:
            yield from ({c: r.get(c) for c in cols} for r in rows)

    # ---- the source
    def __call__(self, tasks: TasksSpec) -> Selection:
        opts = self.Options.model_validate(tasks.options)
        parts = self.load_parts(opts)
        candidates: list[Candidate] = []
        filtered: Counter[str] = Counter()
        seen: set[str] = set()
        wanted = set(opts.difficulty) if opts.difficulty is not None else None
        for p, (split, rows) in enumerate(parts):
            for i, row in enumerate(self._cheap_rows(rows)):
                native = i if self.id_column is None else row.get(self.id_column)
                tid = self.task_id(split, native)
                if tid in seen:
                    filtered["duplicate_id"] += 1
                    continue
                seen.add(tid)
                diff = self.difficulty_of(row.get(self.difficulty_column)) \
                    if self.difficulty_column else None
                if wanted is not None and diff not in wanted:
                    filtered["difficulty"] += 1
                    continue
                text = self.statement_text(row)
                if opts.max_statement_chars is not None and len(text) > opts.max_statement_chars:
                    filtered["max_statement_chars"] += 1
                    continue
                reason = self.keep(row, opts)
                if reason is not None:
                    filtered[reason] += 1
                    continue
                candidates.append(Candidate(tid, p, i))

        def build(c: Candidate) -> Task:
            split, rows = parts[c.part]
            return self.build(split, c.row, dict(rows[c.row]), opts)

        sizes = {"train": tasks.train, "eval": tasks.eval, "test": tasks.test}
        splits, stats = select(self.name, candidates, sizes, tasks.split_seed, build,
                               dict(filtered))
        partial = sorted(t.task_id for v in splits.values() for t in v
                         if t.meta.get("tests_left_out"))
        info = {"version": self.version, **self.revision_record(opts),
                "dataset_split": opts.splits, "split_seed": tasks.split_seed,
                "options": opts.model_dump(mode="json"), **stats,
                "filtered": dict(sorted(filtered.items())), "partial_tests": partial}
        log.info("task source %s: %d problems selected from a pool of %d (examined %d, "
                 "dropped %s, filtered %s)", self.name, sum(sizes.values()), stats["pool"],
                 stats["examined"], stats["dropped"], info["filtered"])
        return Selection(self.name, splits, info)


# --------------------------------------------------------------------------- helpers
def comment_block(text: str) -> str:
    """`text` as Python comment lines (a base model's prompt that is also valid code)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n").split("\n")
    return "".join(f"# {ln}".rstrip() + "\n" for ln in lines)


def code_block(code: str) -> str:
    """Code with Unix newlines, no trailing blank or whitespace-only lines, ending in \\n."""
    code = code.replace("\r\n", "\n").replace("\r", "\n")
    lines = code.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines) + "\n" if lines else ""


def case_bytes(test: dict[str, Any]) -> int:
    """Size of one test (input + output, or its JSON), for the byte budget."""
    if "input" in test:
        return len(test["input"].encode()) + len(test["output"].encode())
    return len(json.dumps(test, allow_nan=True))


def budget_tests(tests: list[dict[str, Any]], opts: DatasetOptions
                 ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """At most `max_tests` tests, in order, within `max_test_bytes` (a test too large to fit
    is left out, later smaller ones may still fit). Raises Drop when none is left."""
    if not tests:
        raise Drop("no_tests")
    kept: list[dict[str, Any]] = []
    used = 0
    for t in tests:
        if opts.max_tests is not None and len(kept) >= opts.max_tests:
            break
        size = case_bytes(t)
        if used + size > opts.max_test_bytes:
            continue
        kept.append(t)
        used += size
    if not kept:
        raise Drop("tests_too_large")
    return kept, {"tests_total": len(tests), "tests_used": len(kept),
                  "tests_left_out": len(tests) - len(kept), "test_bytes": used}


def is_plain_json(value: Any, depth: int = 0) -> bool:
    """Data the grader can carry: None, bool, int, finite float, str, lists, str-keyed dicts."""
    if depth > 100:
        return False
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(is_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain_json(v, depth + 1) for k, v in value.items())
    return False


def call_shim(fn_name: str) -> str:
    """A top-level entry point for a function the program defines either as a module-level
    function or as a method of `class Solution` (LeetCode / GeeksforGeeks style), as the
    APPS, TACO and LiveCodeBench harnesses call it."""
    return (
        "\n\ndef _harness_call(*args):\n"
        "    _solution = globals().get('Solution')\n"
        f"    if isinstance(_solution, type) and hasattr(_solution, {fn_name!r}):\n"
        f"        return getattr(_solution(), {fn_name!r})(*args)\n"
        f"    _function = globals().get({fn_name!r})\n"
        "    if _function is None:\n"
        f"        raise NameError({f'name {fn_name!r} is not defined'!r})\n"
        "    return _function(*args)\n")


SHIM_ENTRY = "_harness_call"

# Imports the competitive-programming harnesses (APPS, TACO, LiveCodeBench) put in front of a
# solution; LeetCode starter code uses `List`, `Optional`... without importing them.
COMPETITIVE_HEADER = (
    "import sys\nimport math\nimport itertools\nimport collections\nimport heapq\n"
    "import bisect\nimport functools\nimport string\nimport re\nimport random\n"
    "from typing import *\nfrom collections import *\nfrom itertools import *\n"
    "from functools import *\nfrom math import *\nfrom heapq import *\nfrom bisect import *\n"
    "from builtins import *\nsys.setrecursionlimit(50000)\n")
