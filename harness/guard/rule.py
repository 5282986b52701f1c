"""The guard's rule: its parameters, and the first step at which any enabled signal fires.

`GuardParams` holds every signal's thresholds (`harness.guard.signals`; None switches a
signal off) and `min_step`. Its defaults are the rule `harness guard tune --max-false-alarms
0.4` chose on the calibration seeds (0-5) of the tiny testbed: a credible eval drop of more
than 10 points below the running peak (confidence 0.95) or a train reward 20 points above
eval pass@1. No rule met the issue's 10% false-alarm budget with any catch on those seeds;
docs/guard.md has the run, the trade-off and the scores on held-out seeds. The `collapse_guard` controller, `harness guard score`, the TRL
callback and `harness.guard.stream` all apply this one rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harness.guard.signals import SIGNALS, Records


class GuardParams(BaseModel):
    """Thresholds of every signal (None: that signal is off) and when the guard may fire."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop_delta: float = Field(0.1, ge=0, lt=1, description=(
        "eval_drop: the drop below the peak rate it must be credible about."))
    drop_confidence: float | None = Field(0.95, gt=0.5, lt=1, description=(
        "eval_drop: fire when P(rate_now < rate_peak - drop_delta) exceeds this; None: off."))
    eval_samples: int = Field(240, ge=1, description=(
        "eval_drop: eval samples behind one pass@1 value when a record has no "
        "`eval_samples` field."))
    prior_a: float = Field(1.0, gt=0, description="eval_drop: Beta prior alpha of each rate.")
    prior_b: float = Field(1.0, gt=0, description="eval_drop: Beta prior beta of each rate.")
    entropy_frac: float | None = Field(None, gt=0, lt=1, description=(
        "entropy_level: fire when entropy falls below this fraction of its campaign-start "
        "value; None: off."))
    entropy_slope: float | None = Field(None, gt=0, description=(
        "entropy_slope: fire when entropy falls faster than this fraction of its start value "
        "per step (least squares over slope_window steps); None: off."))
    slope_window: int = Field(4, ge=2, description="entropy_slope: steps in the fit.")
    kl_jump: float | None = Field(None, gt=0, description=(
        "kl_jump: fire when kl_to_ref rises by more than this (nats) in one step; None: off."))
    zero_var: float | None = Field(None, gt=0, lt=1, description=(
        "zero_var: fire when more than this share of groups have one reward; None: off."))
    length_drift: float | None = Field(None, gt=0, description=(
        "length_drift: fire when completion length moves more than this fraction from its "
        "start value; None: off."))
    truncated: float | None = Field(None, gt=0, lt=1, description=(
        "truncated: fire when more than this share of train completions hit max_new_tokens; "
        "None: off."))
    reward_gap: float | None = Field(0.2, gt=0, lt=1, description=(
        "reward_gap: fire when train reward exceeds eval pass@1 by more than this; None: off."))
    min_step: int = Field(1, ge=1, description="Never fire before this step.")


def as_params(params: GuardParams | Mapping[str, Any] | None) -> GuardParams:
    """GuardParams from params, a mapping of some of its fields, or None (the defaults)."""
    if isinstance(params, GuardParams):
        return params
    return GuardParams.model_validate(dict(params or {}))


def guard_signals(records: Records, t: int, params: GuardParams) -> list[str]:
    """The reasons of the signals that fire at position t of `records` (none before
    `min_step`), in the registry's order."""
    if int(records[t]["step"]) < params.min_step:
        return []
    return [why for name in SIGNALS if (why := SIGNALS.get(name)(records, t, params))]


def guard_trigger(records: Records, params: GuardParams | Mapping[str, Any] | None = None
                  ) -> tuple[int, str] | None:
    """(step, reason) of the first step at which the guard fires on a campaign, or None."""
    p = as_params(params)
    for t in range(len(records)):
        fired = guard_signals(records, t, p)
        if fired:
            return int(records[t]["step"]), "; ".join(fired)
    return None
