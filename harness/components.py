"""Every registered component, for `harness components` (docs/components.md).

Each kind of component has one `Registry` (`harness.registry`), the single source of its
names; this module only reads them. Importing the registries imports torch (methods) and
transformers (rollout backends), so it is imported when the command runs.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

# (heading, key of harness.spec.schema.REGISTRIES), in the order a step uses them
SPEC_KINDS = (
    ("methods", "method"),
    ("policy losses", "policy_loss"),
    ("loss aggregations", "loss_agg"),
    ("KL estimators", "kl_estimator"),
    ("controllers", "controller"),
    ("task sources", "task_source"),
    ("rollout backends", "rollout_backend"),
)


def defaults(model: type[BaseModel]) -> dict[str, Any]:
    """A params or options model's fields with their defaults as JSON data ("required" for a
    field without one)."""
    out: dict[str, Any] = {}
    for key, field in model.model_fields.items():
        if field.is_required():
            out[key] = "required"
        else:
            value = field.get_default(call_default_factory=True)
            out[key] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return out


def _entry(registry: Any, name: str) -> dict[str, Any]:
    obj = registry.get(name)
    entry: dict[str, Any] = {"description": registry.description(name)}
    params = getattr(obj, "Params", None)
    if isinstance(params, type) and issubclass(params, BaseModel):
        entry["params"] = defaults(params)
    options = getattr(obj, "Options", None)
    if isinstance(options, type) and issubclass(options, BaseModel):
        entry["options"] = defaults(options)
    return entry


def distributed_configurations() -> dict[str, dict[str, Any]]:
    """`resources.distributed` values: `none` and each shipped DeepSpeed configuration."""
    from harness import distributed

    out = {distributed.NONE: {"description": "one process (no data-parallel training)."}}
    for name in distributed.available():
        try:
            cfg = distributed.load(name)
            text = (f"DeepSpeed ZeRO-{cfg.zero_stage}, data-parallel on "
                    f"{cfg.num_processes} GPUs (harness/distributed/{name}.json).")
        except ValueError as e:  # a broken shipped file is listed, with why
            text = f"broken: {e}"
        out[name] = {"description": text}
    return out


def all_components() -> dict[str, dict[str, dict[str, Any]]]:
    """{kind: {name: {"description": one line, "params"/"options": defaults}}} for every
    registry: the spec's components, executors, distributed configurations and the collapse
    guard's signals."""
    from harness.executors import EXECUTORS
    from harness.spec.schema import registry

    found: dict[str, dict[str, dict[str, Any]]] = {}
    for heading, kind in SPEC_KINDS:
        reg = registry(kind)
        found[heading] = {name: _entry(reg, name) for name in reg}
    found["executors"] = {name: _entry(EXECUTORS, name) for name in EXECUTORS}
    found["distributed configurations"] = distributed_configurations()
    from harness.guard import SIGNALS

    found["guard signals"] = {name: _entry(SIGNALS, name) for name in SIGNALS}
    return found


def component_lines(found: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """`all_components()` as text: a heading per kind, one line per component with its
    description and parameters (executors: options; task sources' options are long, see
    docs/task-sources.md)."""
    lines: list[str] = []
    for kind, entries in found.items():
        lines.append(f"{kind}:")
        width = max((len(n) for n in entries), default=0)
        for name, entry in entries.items():
            params = entry.get("params") or (entry.get("options") if kind == "executors"
                                             else None) or {}
            shown = (" [" + ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items()) + "]"
                     if params else "")
            lines.append(f"  {name:<{width}}  {entry['description']}{shown}")
    return lines
