"""The spec schema's building blocks: the strict model base, the small field types, and the
registries a spec's component names and parameters are checked against (`harness.spec.schema`
re-exports them)."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

import harness.spec.limits as limits
from harness.spec.limits import DOC as _LIMITS

LABEL_RE = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"


class _Strict(BaseModel):
    """Unknown keys are errors (a misspelt key must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Label = Annotated[str, Field(pattern=LABEL_RE)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
# A seed: what every random generator the harness seeds accepts.
Seed = Annotated[int, Field(ge=0, le=limits.MAX_SEED, strict=True)]  # true is not seed 1


def _at_most(n: float) -> str:
    """The end of a limited field's description (and the marker of a limit's error)."""
    shown = f"{int(n):,}" if float(n).is_integer() else f"{n:,g}"  # 1,048,576, not 1.04858e+06
    return f" At most {shown} ({_LIMITS})."


# --------------------------------------------------------------------------- registries
# Each kind of component has one registry, the single source of its names: a spec's name for
# one is checked against it (with a did-you-mean), and `harness spec-schema` lists its names
# (an `enum` filled when the schema is generated). Imported lazily: the registries' modules
# import this one.
REGISTRIES: dict[str, tuple[str, str]] = {
    "method": ("harness.methods", "METHODS"),
    "policy_loss": ("harness.methods", "POLICY_LOSSES"),
    "loss_agg": ("harness.methods", "AGGREGATIONS"),
    "kl_estimator": ("harness.methods", "KL_ESTIMATORS"),
    "controller": ("harness.controllers", "CONTROLLERS"),
    "task_source": ("harness.tasks", "TASK_SOURCES"),
    "rollout_backend": ("harness.policy.backends", "ROLLOUT_BACKENDS"),
}


def registry(kind: str) -> Any:
    """The registry of one kind of component (a key of `REGISTRIES`)."""
    module, attr = REGISTRIES[kind]
    return getattr(importlib.import_module(module), attr)


def _registered(kind: str, value: str) -> str:
    reg = registry(kind)
    if value not in reg:
        raise ValueError(reg.unknown_message(value))
    return value


def _names_enum(kind: str) -> Callable[[dict[str, Any]], None]:
    def extra(schema: dict[str, Any]) -> None:
        schema["enum"] = registry(kind).names()

    return extra


def Registered(kind: str) -> Any:
    """`str` holding the name of a registered component of `kind`."""
    return Annotated[str, AfterValidator(partial(_registered, kind)),
                     Field(json_schema_extra=_names_enum(kind))]


def _params_by_name(kind: str) -> Callable[[dict[str, Any]], None]:
    """Schema extra of a `params` field: each registered component's parameters and their
    defaults, appended to the field's description."""

    def extra(schema: dict[str, Any]) -> None:
        reg = registry(kind)
        parts = []
        for name in reg:
            fields = reg.get(name).Params.model_fields
            shown = ", ".join(f"{k}=" + ("required" if f.is_required() else
                                        json.dumps(f.get_default(call_default_factory=True)))
                              for k, f in fields.items()) or "none"
            parts.append(f"{name}: {shown}")
        schema["description"] = f"{schema.get('description', '')} Per {kind}: " + "; ".join(
            parts) + "."

    return extra


def resolve_params(kind: str, name: str, params_cls: type[BaseModel],
                   params: dict[str, Any], field: str = "params") -> dict[str, Any]:
    """`params` checked against a component's own `Params` model and completed with its
    defaults (plain JSON), so the resolved spec and every hash state every value the
    component uses. Raises ValueError naming the parameter (did-you-mean for unknown keys)."""
    try:
        return params_cls.model_validate(params).model_dump(mode="json")
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        msg = first["msg"]
        if first["type"] == "extra_forbidden":
            from harness.registry import did_you_mean

            msg = (f"unknown parameter{did_you_mean(loc, list(params_cls.model_fields))}; "
                   f"{kind} {name} takes: {', '.join(params_cls.model_fields) or 'none'}")
        raise ValueError(f"{field}.{loc}: {msg}") from None


# Names of registered components (str, checked against the registry).
MethodName = Registered("method")
PolicyLossName = Registered("policy_loss")
LossAggName = Registered("loss_agg")
KLEstimatorName = Registered("kl_estimator")
ControllerName = Registered("controller")
TaskSourceName = Registered("task_source")
RolloutBackendName = Registered("rollout_backend")


