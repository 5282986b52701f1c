"""Task sources and the deterministic train / eval / test splits.

A task source is a function `(tasks: TasksSpec) -> {"train": [...], "eval": [...],
"test": [...]}` registered in `TASK_SOURCES` under the name a spec's `tasks.source` uses.
It validates its own `tasks.options` (unknown keys -> ValueError) and must return disjoint,
deterministic splits of the requested sizes. Built in: `synthetic` (see
`harness.tasks.synthetic` for its options and how disjointness is guaranteed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.registry import Registry
from harness.tasks import synthetic
from harness.tasks.base import STYLES, Style, Task, grader_request

if TYPE_CHECKING:
    from harness.spec.schema import TasksSpec

SPLITS = ("train", "eval", "test")
TaskSource = Callable[["TasksSpec"], dict[str, list[Task]]]
TASK_SOURCES: Registry[TaskSource] = Registry("task source")


@TASK_SOURCES.register("synthetic")
def _synthetic(tasks: TasksSpec) -> dict[str, list[Task]]:
    sizes = {"train": tasks.train, "eval": tasks.eval, "test": tasks.test}
    return {s: synthetic.split_tasks(s, n, tasks.split_seed, tasks.options)
            for s, n in sizes.items()}


_synthetic.version = synthetic.FAMILY_VERSION  # type: ignore[attr-defined]


def source_version(name: str) -> str | None:
    """The version of a task source's problems (part of every cell's identity)."""
    v = getattr(TASK_SOURCES.get(name), "version", None)
    return None if v is None else str(v)


def load_splits(tasks: TasksSpec) -> dict[str, list[Task]]:
    """The {"train", "eval", "test"} task lists of a spec's `tasks` section.

    Deterministic from `tasks.split_seed`; sizes as requested; no task id in two splits.
    Raises ValueError for an unknown source or bad `tasks.options`.
    """
    if tasks.source not in TASK_SOURCES:
        raise ValueError(TASK_SOURCES.unknown_message(tasks.source))
    splits = TASK_SOURCES.get(tasks.source)(tasks)
    sizes = {"train": tasks.train, "eval": tasks.eval, "test": tasks.test}
    for name in SPLITS:
        if len(splits[name]) != sizes[name]:  # a source bug, not a user error
            raise RuntimeError(f"task source {tasks.source!r} returned {len(splits[name])} "
                               f"{name} tasks, expected {sizes[name]}")
    return splits


__all__ = ["SPLITS", "STYLES", "TASK_SOURCES", "Style", "Task", "TaskSource",
           "grader_request", "load_splits", "source_version"]
