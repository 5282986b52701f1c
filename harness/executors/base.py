"""What every executor shares: the event callback's type, the options, the `Executor` base
class and the `EXECUTORS` registry (`harness.executors` re-exports them). Executor modules
import these from here, not from the package, which imports the executor modules (that
registers them); this module imports none of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from harness.registry import Registry

OnEvent = Callable[[str, dict[str, Any]], None]


class ExecutorSettings(BaseModel):
    """Base of each executor's own options (`Executor.Options`): unknown keys are errors.
    `harness bench` fills them from its executor flags and `--executor-option KEY=VALUE`."""

    model_config = ConfigDict(extra="forbid", frozen=True)


S = TypeVar("S", bound=ExecutorSettings)


@dataclass(frozen=True)
class ExecutorOptions:
    """What an executor may need beyond the cells: the run directory, the spec's resource
    requests, and the executor's own settings (an instance of its `Options` model, or a
    mapping validated by it; None: its defaults)."""

    run_dir: Path
    gpus_per_cell: float = 0.0
    cpus_per_cell: float = 1.0
    settings: ExecutorSettings | dict[str, Any] | None = None

    def settings_as(self, model: type[S]) -> S:
        """`settings` as an instance of `model` (validated, defaults filled)."""
        if isinstance(self.settings, model):
            return self.settings
        if isinstance(self.settings, ExecutorSettings):
            return model.model_validate(self.settings.model_dump())
        return model.model_validate(self.settings or {})


class Executor:
    """Where a cell's process runs. Subclass, set `name`, `description` and (when it takes
    any) `Options`, implement `run`; override `describe` to record more than the name; then
    register an instance: `EXECUTORS.add(MyExecutor.name, MyExecutor())` (docs/components.md).
    Calling an executor is calling its `run`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Options: ClassVar[type[ExecutorSettings]] = ExecutorSettings

    def settings(self, options: ExecutorOptions) -> Any:
        """This executor's settings from `options` (an instance of its `Options`)."""
        return options.settings_as(self.Options)

    def describe(self, options: ExecutorOptions) -> dict[str, Any]:
        """What identifies where a run's cells ran (environment.json, results.json, MLflow
        tags). Raises UserError early when the executor cannot run at all."""
        return {"name": self.name}

    def places_by_cpus(self, options: ExecutorOptions) -> bool:
        """True when the cells run elsewhere, placed by their CPU request (ray on a cluster);
        False (the default) when they share this machine's CPUs, and `harness bench` warns
        when --jobs cells' threads outnumber them."""
        return False

    def run(self, cells: dict[str, Path], jobs: int, on_event: OnEvent,
            options: ExecutorOptions) -> dict[str, int]:
        """Run `cells` ({cell_id: cell_dir}), at most `jobs` at once, reporting progress
        through `on_event`; return {cell_id: exit code}."""
        raise NotImplementedError

    def __call__(self, cells: dict[str, Path], jobs: int, on_event: OnEvent,
                 options: ExecutorOptions) -> dict[str, int]:
        return self.run(cells, jobs, on_event, options)


EXECUTORS: Registry[Executor] = Registry("executor")
