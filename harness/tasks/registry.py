"""The task source registry (name -> source), kept apart from the sources: each source module
registers itself here (`TASK_SOURCES.add(...)` at its bottom) and `harness.tasks` imports
them all, so this module imports none of them and no import cycle can form.

A task source is a callable `(tasks: TasksSpec) -> {"train": [...], "eval": [...],
"test": [...]}` (or a `Selection`, which also says how the problems were chosen), with an
optional `version` (of its problems; part of every cell's identity), `Options` (a pydantic
model of its `tasks.options`, checked and completed when the spec is validated) or else
`check_options(options)` (raises ValueError; the options are kept as written), and
`description` (one line for `harness components`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.registry import Registry

if TYPE_CHECKING:
    from harness.spec.schema import TasksSpec
    from harness.tasks.base import Task
    from harness.tasks.dataset import Selection

TaskSource = Callable[["TasksSpec"], "dict[str, list[Task]] | Selection"]
TASK_SOURCES: Registry[TaskSource] = Registry("task source")
