"""Task sources and the deterministic train / eval / test splits.

A task source is a callable `(tasks: TasksSpec) -> {"train": [...], "eval": [...],
"test": [...]}` (or a `Selection`, which also says how the problems were chosen) registered
in `TASK_SOURCES` (`harness.tasks.registry`) under the name a spec's `tasks.source` uses, by
its own module. It validates its own `tasks.options` (unknown keys -> ValueError) and must
return disjoint, deterministic splits of the requested sizes. A source with an `Options`
model (the dataset sources) has its options checked and completed when the spec is validated
(`resolve_options`). This package only imports the source modules, which registers them.

Built in: `synthetic` (see `harness.tasks.synthetic`), and the dataset sources `humaneval`,
`mbpp`, `apps`, `taco`, `code_contests`, `livecodebench` (see `harness.tasks.dataset` for
loading, dropping and selection, and each source's module for its record format and quirks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# the source modules register themselves in TASK_SOURCES when imported
from harness.tasks import (  # noqa: F401
    apps,
    code_contests,
    humaneval,
    livecodebench,
    mbpp,
    synthetic,
)
from harness.tasks.base import STYLES, Style, Task, grader_request, program
from harness.tasks.dataset import Drop, Selection
from harness.tasks.registry import TASK_SOURCES, TaskSource

if TYPE_CHECKING:
    from harness.spec.schema import TasksSpec

SPLITS = ("train", "eval", "test")


def source_version(name: str) -> str | None:
    """The version of a task source's problems (part of every cell's identity)."""
    v = getattr(TASK_SOURCES.get(name), "version", None)
    return None if v is None else str(v)


def resolve_options(source: str, options: dict[str, Any]) -> dict[str, Any]:
    """A source's options checked and completed with their defaults (the pinned dataset
    revision among them), for the resolved spec; unchanged for a source without an
    `Options` model (a source's own `check_options`, where it has one, still checks them, as
    synthetic's does, so a bad option is a spec error). Raises ValueError."""
    src = TASK_SOURCES.get(source)
    options_cls = getattr(src, "Options", None)
    if options_cls is None:
        check = getattr(src, "check_options", None)
        if check is not None:
            check(options)
        return options
    from harness.tasks.options import resolve

    return resolve(options_cls, options)


def load_selection(tasks: TasksSpec) -> Selection:
    """The selected problems of a spec's `tasks` section, with how they were chosen
    (`Selection.record()`: ids per split, revision, pool, dropped and filtered counts).

    Deterministic from `tasks` (split seed included); sizes as requested; no task id in two
    splits. Raises ValueError for an unknown source, bad `tasks.options`, a dataset that
    cannot be loaded, or too few usable problems.
    """
    if tasks.source not in TASK_SOURCES:
        raise ValueError(TASK_SOURCES.unknown_message(tasks.source))
    out = TASK_SOURCES.get(tasks.source)(tasks)
    if isinstance(out, Selection):
        selection = out
    else:
        selection = Selection(tasks.source, out, {
            "version": source_version(tasks.source), "split_seed": tasks.split_seed,
            "options": dict(tasks.options), "dropped": {}})
    sizes = {"train": tasks.train, "eval": tasks.eval, "test": tasks.test}
    for name in SPLITS:
        if len(selection.splits[name]) != sizes[name]:  # a source bug, not a user error
            raise RuntimeError(f"task source {tasks.source!r} returned "
                               f"{len(selection.splits[name])} {name} tasks, expected "
                               f"{sizes[name]}")
    ids = [t.task_id for name in SPLITS for t in selection.splits[name]]
    if len(ids) != len(set(ids)):  # a source bug
        raise RuntimeError(f"task source {tasks.source!r} put a task id in two splits")
    return selection


def load_splits(tasks: TasksSpec) -> dict[str, list[Task]]:
    """The {"train", "eval", "test"} task lists of a spec's `tasks` section (see
    `load_selection`, which also says how they were chosen)."""
    return load_selection(tasks).splits


def split_ids(splits: dict[str, list[Task]]) -> dict[str, list[str]]:
    """{split: [task ids]}: which problems a cell trains, evaluates and tests on."""
    return {name: [t.task_id for t in splits[name]] for name in SPLITS}


__all__ = ["SPLITS", "STYLES", "TASK_SOURCES", "Drop", "Selection", "Style", "Task",
           "TaskSource", "grader_request", "load_selection", "load_splits", "program",
           "resolve_options", "source_version", "split_ids"]
