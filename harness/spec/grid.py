"""Identity and the grid: canonical JSON, `spec_hash`, cells with stable `cell_id`s.

The resolved spec (inheritance applied, defaults filled) serialises to canonical JSON (sorted
keys, no whitespace, UTF-8); `spec_hash` is its sha256. A cell's config is everything that
determines its results (its model, method, controller and seed, and the shared sections);
`cell_id` is readable labels plus a hash of that config, so it is stable across processes and
machines and changes with any value that can change the cell's results.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from itertools import product
from typing import Any

from harness.spec.schema import (
    ChainSpec,
    ControllerSpec,
    EvalSpec,
    GraderSpec,
    MethodSpec,
    ModelSpec,
    OptimSpec,
    ResourcesSpec,
    RolloutSpec,
    Spec,
    TasksSpec,
)

# Sections of the spec shared by every cell and part of each cell's config (`resources`
# included: the CPU threads a cell uses change floating-point reduction order).
CELL_SECTIONS = ("chain", "tasks", "eval", "rollout", "optim", "grader", "resources")


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def resolved_dict(spec: Spec) -> dict[str, Any]:
    """The resolved spec as plain JSON data (what is stored as resolved_spec.json)."""
    return spec.model_dump(mode="json")


def spec_hash(spec: Spec) -> str:
    return sha256_json(resolved_dict(spec))


@dataclass(frozen=True)
class Cell:
    """One model x method x controller x seed of a spec's grid, with every section of its
    resolved config parsed: what `harness bench` plans and what the cell runner runs.
    `config` is the same config as plain JSON data (stored as the cell's config.json; its
    hash is in `cell_id`)."""

    cell_id: str
    model: ModelSpec
    method: MethodSpec
    controller: ControllerSpec
    seed: int
    chain: ChainSpec
    tasks: TasksSpec
    eval: EvalSpec
    rollout: RolloutSpec
    optim: OptimSpec
    grader: GraderSpec
    resources: ResourcesSpec
    config: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, cell_id: str, cfg: dict[str, Any]) -> Cell:
        """A cell from its config data (config.json's `config`); pydantic errors on a config
        that is not valid."""
        return cls(
            cell_id=cell_id, model=ModelSpec(**cfg["model"]), method=MethodSpec(**cfg["method"]),
            controller=ControllerSpec(**cfg["controller"]), seed=int(cfg["seed"]),
            chain=ChainSpec(**cfg["chain"]), tasks=TasksSpec(**cfg["tasks"]),
            eval=EvalSpec(**cfg["eval"]), rollout=RolloutSpec(**cfg["rollout"]),
            optim=OptimSpec(**cfg["optim"]), grader=GraderSpec(**cfg["grader"]),
            resources=ResourcesSpec(**cfg["resources"]), config=cfg)

    @property
    def arm(self) -> str:
        """The arm a cell belongs to (everything but the seed)."""
        return f"{self.model.name}/{self.method.arm}/{self.controller.arm}"

    def keys(self) -> dict[str, Any]:
        return {"cell_id": self.cell_id, "model": self.model.name, "method": self.method.arm,
                "controller": self.controller.arm, "seed": self.seed}


def cell_config(spec: Spec, model: ModelSpec, method: MethodSpec, controller: ControllerSpec,
                seed: int) -> dict[str, Any]:
    data = resolved_dict(spec)
    cfg: dict[str, Any] = {
        "model": model.model_dump(mode="json"),
        "method": method.model_dump(mode="json"),
        "controller": controller.model_dump(mode="json"),
        "seed": seed,
    }
    for section in CELL_SECTIONS:
        cfg[section] = data[section]
    cfg["versions"] = code_versions(spec.tasks.source, model.id)
    return cfg


def code_versions(task_source: str, model_id: str) -> dict[str, Any]:
    """Versions of code whose change alters a cell's results without changing its spec: the
    task source's, the grader's (`grader_sandbox.GRADER_VERSION`) and the tiny policy's."""
    from grader_sandbox import GRADER_VERSION
    from harness.tasks import source_version

    versions: dict[str, Any] = {"task_source": source_version(task_source),
                                "grader": GRADER_VERSION}
    if model_id == "tiny":
        from harness.policy.tiny import TINY_CODE_VERSION

        versions["tiny_policy"] = TINY_CODE_VERSION
    return versions


def grid_hash(cells: list[Cell]) -> str:
    """Identity of a grid: the sorted cell ids (a description edit keeps it)."""
    return sha256_json(sorted(c.cell_id for c in cells))


def _excluded(spec: Spec, model: ModelSpec, method: MethodSpec, controller: ControllerSpec,
              seed: int) -> bool:
    for rule in spec.exclude:
        if ((rule.model is None or rule.model == model.name)
                and (rule.method is None or rule.method == method.arm)
                and (rule.controller is None or rule.controller == controller.arm)
                and (rule.seed is None or rule.seed == seed)):
            return True
    return False


def expand_cells(spec: Spec) -> list[Cell]:
    """The grid in a fixed order: model, method, controller, seed (as written in the spec)."""
    cells = []
    for model, method, controller, seed in product(spec.models, spec.methods,
                                                   spec.controllers, spec.seeds):
        if _excluded(spec, model, method, controller, seed):
            continue
        cfg = cell_config(spec, model, method, controller, seed)
        digest = sha256_json(cfg)[:10]
        cid = f"{model.name}_{method.arm}_{controller.arm}_s{seed}_{digest}"
        cells.append(Cell.from_dict(cid, cfg))
    return cells
