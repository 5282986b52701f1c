"""Executors: where a cell's process runs. Every executor runs the same entry point
(`harness run-cell CELL_DIR`) and reports progress through the same events, read from each
cell's trace (the source of truth):

- ``{"event": "start", "records": [...]}``: the cell started (or its trace was rewritten by a
  resume); ``records`` are the trace records it already has;
- ``{"event": "record", "record": {...}}``: one new trace record;
- ``{"event": "exit", "returncode": int, "error": str | None}``: the cell ended.

An executor is an `Executor` (`harness.executors.base`): a name, a one-line description, its
own `Options` model (filled by `harness bench`'s executor flags and `--executor-option
KEY=VALUE`), `describe(options)` and `run(cells, jobs, on_event, options) -> {cell_id:
returncode}`. Each module registers its executor in ``EXECUTORS``; this package only imports
them. `harness bench --executor NAME` picks one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from harness.errors import UserError
from harness.executors import docker, local, ray  # noqa: F401  (registration)
from harness.executors.base import (
    EXECUTORS,
    Executor,
    ExecutorOptions,
    ExecutorSettings,
    OnEvent,
)

__all__ = ["EXECUTORS", "Executor", "ExecutorOptions", "ExecutorSettings", "OnEvent",
           "describe", "executor_settings", "get_executor", "settings_from_command_line"]


def get_executor(name: str) -> Executor:
    """The registered executor `name` (calling it runs cells); UserError for an unknown one."""
    if name not in EXECUTORS:
        raise UserError(f"unknown executor {name!r}; choose one of "
                        f"{', '.join(EXECUTORS.names())}")
    return EXECUTORS.get(name)


def describe(name: str, options: ExecutorOptions) -> dict[str, Any]:
    """What identifies where a run's cells ran (recorded in environment.json, results.json
    and MLflow tags), from the executor's own `describe`: for docker, the trainer and grader
    images by digest; for ray, the cluster address and Ray version. Raises UserError early
    when the executor cannot run at all (no engine, a missing image)."""
    return get_executor(name).describe(options)


def executor_settings(name: str, values: dict[str, Any]) -> ExecutorSettings:
    """`values` validated by executor `name`'s `Options` model (strings are converted to the
    fields' types); UserError naming the key, with did-you-mean, for a bad or unknown one."""
    from pydantic import ValidationError

    from harness.registry import did_you_mean

    ex = get_executor(name)
    fields = list(ex.Options.model_fields)
    try:
        return ex.Options.model_validate(values)
    except ValidationError as e:
        first = e.errors()[0]
        key = ".".join(str(x) for x in first["loc"])
        if first["type"] == "extra_forbidden":
            raise UserError(f"executor {name!r} has no option {key!r}"
                            f"{did_you_mean(key, fields)}; it takes: "
                            f"{', '.join(fields) or 'none'}") from None
        raise UserError(f"executor {name!r} option {key}: {first['msg']}") from None


def settings_from_command_line(name: str, pairs: Sequence[str],
                               flags: dict[str, tuple[str, Any]]) -> ExecutorSettings:
    """Executor `name`'s options filled from `harness bench`'s `--executor-option KEY=VALUE`
    pairs and its executor flags ({flag: (option, value or None when not given)}: each names
    an option of one executor, and giving it for another one is an error)."""
    fields = get_executor(name).Options.model_fields
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--executor-option {pair!r}: write KEY=VALUE")
        values[key.strip().replace("-", "_")] = value
    for flag, (key, value) in flags.items():
        if value is None:
            continue
        if key not in fields:
            raise UserError(f"{flag} is not an option of executor {name!r} (it takes: "
                            f"{', '.join(fields) or 'none'})")
        values[key] = value
    return executor_settings(name, values)
