"""What every executor shares: the event callback's type, the options and the executor's
signature (`harness.executors` re-exports them). Executor modules import these from here,
not from the package, which imports the executor modules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

OnEvent = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class ExecutorOptions:
    """What an executor may need beyond the cells: the run directory, the spec's resource
    requests, and executor-specific settings from the command line."""

    run_dir: Path
    gpus_per_cell: float = 0.0
    cpus_per_cell: float = 1.0
    address: str | None = None          # ray: cluster address (None: start a local one)
    trainer_image: str | None = None    # docker: trainer image (tag or digest)
    grader_image: str | None = None     # docker: grader image (tag or digest)


class Executor(Protocol):
    def __call__(self, cells: dict[str, Path], jobs: int, on_event: OnEvent,
                 options: ExecutorOptions) -> dict[str, int]: ...
