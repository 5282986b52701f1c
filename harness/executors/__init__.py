"""Executors: where a cell's process runs. Every executor runs the same entry point
(`harness run-cell CELL_DIR`) and reports progress through the same events, read from each
cell's trace (the source of truth):

- ``{"event": "start", "records": [...]}``: the cell started (or its trace was rewritten by a
  resume); ``records`` are the trace records it already has;
- ``{"event": "record", "record": {...}}``: one new trace record;
- ``{"event": "exit", "returncode": int, "error": str | None}``: the cell ended.

An executor is a function ``run(cells, jobs, on_event, options) -> {cell_id: returncode}``
registered in ``EXECUTORS``; `harness bench --executor NAME` picks one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.executors.base import Executor, ExecutorOptions, OnEvent

__all__ = ["EXECUTORS", "Executor", "ExecutorOptions", "OnEvent", "describe", "get_executor"]


def _local(cells: dict[str, Path], jobs: int, on_event: OnEvent,
           options: ExecutorOptions) -> dict[str, int]:
    from harness.executors.local import run_local

    return run_local(cells, jobs, on_event)


def _docker(cells: dict[str, Path], jobs: int, on_event: OnEvent,
            options: ExecutorOptions) -> dict[str, int]:
    from harness.executors.docker import run_docker

    return run_docker(cells, jobs, on_event, options)


def _ray(cells: dict[str, Path], jobs: int, on_event: OnEvent,
         options: ExecutorOptions) -> dict[str, int]:
    from harness.executors.ray import run_ray

    return run_ray(cells, jobs, on_event, options)


EXECUTORS: dict[str, Executor] = {"local": _local, "docker": _docker, "ray": _ray}


def describe(name: str, options: ExecutorOptions) -> dict[str, Any]:
    """What identifies where a run's cells ran (recorded in environment.json, results.json
    and MLflow tags): for docker, the trainer and grader images by digest. Raises UserError
    early when the executor cannot run at all (no engine, a missing image)."""
    get_executor(name)
    if name == "docker":
        from harness.executors.docker import describe as describe_docker

        return describe_docker(options)
    if name == "ray":
        from harness.executors.ray import _import_ray

        return {"name": "ray", "address": options.address or "local",
                "ray_version": _import_ray().__version__}
    return {"name": name}


def get_executor(name: str) -> Executor:
    try:
        return EXECUTORS[name]
    except KeyError:
        raise UserError(f"unknown executor {name!r}; choose one of "
                        f"{', '.join(sorted(EXECUTORS))}") from None
