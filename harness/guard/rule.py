"""The guard's rule: its parameters, and the first step at which any enabled signal fires.

`GuardParams` holds every signal's thresholds (`harness.guard.signals`; None switches a
signal off), `min_step` and `min_rise` (when the early warnings are armed). Its defaults
are the early warnings `harness guard tune --max-false-alarms 0.4` chose on the calibration
seeds (0-5) of the tiny testbed, once eval pass@1 has risen 5 points above the campaign's
start: the update's log-prob/advantage covariance above 0.005 or kl_to_ref up 0.02 nats in
one step; plus a backstop the offline objective cannot value, a credible eval drop of more
than 10 points below the running peak (confidence 0.95), which also stops a campaign that
starts at its ceiling after a roll-back and can only fall. docs/guard.md has the run, the
trade-off, the scores on held-out seeds and the controller's. The `collapse_guard` controller, `harness guard score`, the TRL
callback and `harness.guard.stream` all apply this one rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from harness.guard.signals import SIGNALS, UNGATED, Records, armed


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
    kl_jump: float | None = Field(0.02, gt=0, description=(
        "kl_jump: fire when kl_to_ref rises by more than this (nats) in one step; None: off."))
    zero_var: float | None = Field(None, gt=0, lt=1, description=(
        "zero_var: fire when more than this share of groups have one reward; None: off."))
    length_drift: float | None = Field(None, gt=0, description=(
        "length_drift: fire when completion length moves more than this fraction from its "
        "start value; None: off."))
    truncated: float | None = Field(None, gt=0, lt=1, description=(
        "truncated: fire when more than this share of train completions hit max_new_tokens; "
        "None: off."))
    reward_gap: float | None = Field(None, gt=0, lt=1, description=(
        "reward_gap: fire when train reward exceeds eval pass@1 by more than this; None: off."))
    cov_max: float | None = Field(0.005, description=(
        "covariance: fire when the update's Cov(token log-prob, advantage) exceeds this; "
        "None: off."))
    min_step: int = Field(1, ge=1, description="Never fire before this step.")
    min_rise: float | None = Field(0.05, ge=0, lt=1, description=(
        "The early warnings (every signal but eval_drop) fire only once eval pass@1 has risen "
        "this much above the campaign's start; None: armed from the start."))


def as_params(params: GuardParams | Mapping[str, Any] | None) -> GuardParams:
    """GuardParams from params, a mapping of some of its fields, or None (the defaults)."""
    if isinstance(params, GuardParams):
        return params
    return GuardParams.model_validate(dict(params or {}))


def guard_signals(records: Records, t: int, params: GuardParams) -> list[str]:
    """The reasons of the signals that fire at position t of `records` (none before
    `min_step`; the early warnings none before the guard is armed: `signals.armed`), in the
    registry's order."""
    if int(records[t]["step"]) < params.min_step:
        return []
    on = armed(records, t, params)
    return [why for name in SIGNALS
            if (on or name in UNGATED) and (why := SIGNALS.get(name)(records, t, params))]


def guard_trigger(records: Records, params: GuardParams | Mapping[str, Any] | None = None
                  ) -> tuple[int, str] | None:
    """(step, reason) of the first step at which the guard fires on a campaign, or None."""
    p = as_params(params)
    for t in range(len(records)):
        fired = guard_signals(records, t, p)
        if fired:
            return int(records[t]["step"]), "; ".join(fired)
    return None
