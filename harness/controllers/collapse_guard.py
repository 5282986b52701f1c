"""`collapse_guard` (beyond the study): stop a campaign on an early warning, roll back to its peak.

Inside a running campaign the guard watches three signals after every step t >= min_step
(records in step order; each signal is skipped when its field is missing or not finite):

- **entropy collapse**: entropy_t < entropy_frac * entropy_0, where entropy_0 is the
  campaign-start entropy: the first finite `entropy` of the campaign (step 0 when the runner
  measures it there, else the first step that has it);
- **KL jump**: kl_to_ref_t - kl_to_ref_prev > kl_jump, prev = the latest earlier step with a
  finite `kl_to_ref`;
- **credible eval drop**: P(p_t < p_peak - drop_delta) > drop_confidence, where peak is the
  first maximum of eval pass@1 over steps 0..t-1 and each rate has the posterior
  Beta(prior_a + x, prior_b + n - x), x = round(eval_pass1 * n) passing samples out of
  n = the record's `eval_samples` (else the `eval_samples` param: eval tasks x samples per
  task, 30 x 8 by default). The probability is integrated on a fixed grid (deterministic).

`should_stop` returns the reason at the first step where any enabled signal fires. `plan` then
rolls back: when the guard fires on the previous campaign's records (recomputed from the
history, so the decision is a pure function of it), the next campaign starts from
`c{k-1}:peak`, else from `c{k-1}:last`; budget B and the base LR either way.

Offline: `guard_trigger_step(records, params)` is the first step at which the guard would fire
on a recorded campaign, and `lead_time(records, trigger_step, threshold)` measures how early it
fired relative to the collapse onset; `guard_report(campaign_records, params, threshold)` does
both for every campaign of a recorded chain and counts catches, misses and false alarms
(`harness.results` puts it, as `CollapseGuard.offline_report`, in every cell's `result.json`
as `guard`: on naive traces it measures what the
guard would have done; on a guard's own trace a campaign it stopped cannot show its cliff).

Our reading (nothing here is from the study): the three signals, their thresholds, the Beta
model (it treats the n eval samples as independent draws of one rate; samples of the same task
are correlated, so the posterior is narrower than the truth: `drop_confidence` is a tuning knob,
not a calibrated level) and the roll-back rule. Tune thresholds on recorded naive traces with
`lead_time` and the false alarms on campaigns that did not collapse.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydantic import Field
from scipy import stats

from harness.controllers.base import (
    Controller,
    ControllerParams,
    History,
    Plan,
    full_budget_from,
    summarise,
)
from harness.controllers.registry import CONTROLLERS

Records = Sequence[Mapping[str, Any]]
_GRID = np.linspace(0.0, 1.0, 4001)


class GuardParams(ControllerParams):
    entropy_frac: float | None = Field(0.5, gt=0, lt=1, description=(
        "Fire when entropy falls below this fraction of its campaign-start value; None: off."))
    kl_jump: float | None = Field(0.05, gt=0, description=(
        "Fire when kl_to_ref rises by more than this (nats) between steps; None: off."))
    drop_delta: float = Field(0.05, ge=0, lt=1, description=(
        "Eval-drop signal: the drop below the peak rate it must be credible about."))
    drop_confidence: float | None = Field(0.9, gt=0.5, lt=1, description=(
        "Fire when P(rate_now < rate_peak - drop_delta) exceeds this; None: off."))
    eval_samples: int = Field(240, ge=1, description=(
        "Eval samples behind one pass@1 value (eval tasks x samples per task) when a record "
        "has no `eval_samples` field."))
    prior_a: float = Field(1.0, gt=0, description="Beta prior alpha of each pass rate.")
    prior_b: float = Field(1.0, gt=0, description="Beta prior beta of each pass rate.")
    min_step: int = Field(1, ge=1, description="Never fire before this step.")


def _finite(record: Mapping[str, Any], key: str) -> float | None:
    v = record.get(key)
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _posterior(record: Mapping[str, Any], p: GuardParams) -> tuple[float, float]:
    n = int(record.get("eval_samples") or p.eval_samples)
    x = min(max(round(float(record["eval_pass1"]) * n), 0), n)
    return p.prior_a + x, p.prior_b + n - x


def prob_drop(now: Mapping[str, Any], peak: Mapping[str, Any], p: GuardParams) -> float:
    """P(p_now < p_peak - drop_delta) under independent Beta posteriors of the two rates:
    the expectation over p_peak of F_now(p_peak - delta), on a fixed 4001-point grid."""
    a_now, b_now = _posterior(now, p)
    a_pk, b_pk = _posterior(peak, p)
    w = stats.beta.pdf(_GRID, a_pk, b_pk)
    w = w / w.sum()
    return float(np.sum(w * stats.beta.cdf(_GRID - p.drop_delta, a_now, b_now)))


def guard_signals(records: Records, t: int, params: GuardParams) -> list[str]:
    """The signals that fire at position t of `records` (module doc), as reason strings."""
    p = params
    fired: list[str] = []
    if records[t]["step"] < p.min_step:
        return fired
    if p.drop_confidence is not None and t > 0:
        curve = [float(r["eval_pass1"]) for r in records[:t]]
        pk = curve.index(max(curve))
        prob = prob_drop(records[t], records[pk], p)
        if prob > p.drop_confidence:
            fired.append(f"eval drop: P(pass@1 < peak {curve[pk]:.3f} - {p.drop_delta}) = "
                         f"{prob:.3f} > {p.drop_confidence} (now "
                         f"{float(records[t]['eval_pass1']):.3f})")
    if p.entropy_frac is not None and (now := _finite(records[t], "entropy")) is not None:
        start = next((e for r in records[:t] if (e := _finite(r, "entropy")) is not None), None)
        if start is not None and now < p.entropy_frac * start:
            fired.append(f"entropy collapse: {now:.4g} < {p.entropy_frac} x start {start:.4g}")
    if p.kl_jump is not None and (now := _finite(records[t], "kl_to_ref")) is not None:
        prev = next((v for r in reversed(records[:t])
                     if (v := _finite(r, "kl_to_ref")) is not None), None)
        if prev is not None and now - prev > p.kl_jump:
            fired.append(f"kl jump: kl_to_ref {prev:.4g} -> {now:.4g} (> +{p.kl_jump})")
    return fired


def _params(params: GuardParams | Mapping[str, Any] | None) -> GuardParams:
    if isinstance(params, GuardParams):
        return params
    return GuardParams.model_validate(dict(params or {}))


def guard_trigger(records: Records, params: GuardParams | Mapping[str, Any] | None = None
                  ) -> tuple[int, str] | None:
    """(step, reason) of the first step at which the guard fires, or None."""
    p = _params(params)
    for t in range(len(records)):
        fired = guard_signals(records, t, p)
        if fired:
            return int(records[t]["step"]), "; ".join(fired)
    return None


def guard_trigger_step(records: Records, params: GuardParams | Mapping[str, Any] | None = None
                       ) -> int | None:
    """The first step at which the guard would fire on a recorded campaign, or None."""
    hit = guard_trigger(records, params)
    return None if hit is None else hit[0]


def lead_time(records: Records, trigger_step: int | None, threshold: float) -> int | None:
    """onset_step - trigger_step for a campaign that collapsed, else None.

    The campaign collapsed when its eval pass@1 peak - end > threshold; its onset is the first
    step after the (first) peak where pass@1 < peak - gap/2 (docs/design.md section 2, as computed
    by `summarise`). Positive: the guard fired that many steps before the onset; 0 or negative:
    at or after it. None when the campaign did not collapse or the guard did not fire (count
    those as misses or true negatives; a trigger on a campaign that did not collapse is a false
    alarm)."""
    if trigger_step is None:
        return None
    curve = [float(r["eval_pass1"]) for r in records]
    s = summarise(0, curve, budget=len(curve) - 1, start_from="", lr=1.0,
                  collapse_threshold=threshold)
    if not s.collapsed or s.onset is None:
        return None
    return int(records[s.onset]["step"]) - trigger_step


def guard_report(campaign_records: Sequence[Records],
                 params: GuardParams | Mapping[str, Any] | None = None,
                 threshold: float = 0.20) -> dict[str, Any]:
    """The guard run offline over every campaign of a recorded chain.

    Per campaign: `trigger_step` and `reason` (None when it never fired), `collapsed` (eval
    pass@1 peak - end > threshold), `onset` (the collapse onset step, None unless collapsed)
    and `lead_time` (`lead_time`: onset - trigger; None unless collapsed and fired). Summary:
    `collapsed` campaigns; `caught`: collapsed with the trigger at or before the onset
    (lead_time >= 0); `late`: collapsed, fired after the onset; `missed`: collapsed and not
    caught (late or never fired); `false_alarms`: fired on a campaign that did not collapse;
    `quiet`: neither fired nor collapsed; `mean_lead_time`: mean lead_time over the collapsed
    campaigns it fired on (late ones count, negative), None when there is none."""
    p = _params(params)
    rows: list[dict[str, Any]] = []
    for k, records in enumerate(campaign_records):
        if not records:
            continue
        hit = guard_trigger(records, p)
        curve = [float(r["eval_pass1"]) for r in records]
        s = summarise(k, curve, budget=len(curve) - 1, start_from="", lr=1.0,
                      collapse_threshold=threshold)
        trigger = None if hit is None else hit[0]
        rows.append({
            "campaign": k, "trigger_step": trigger, "reason": None if hit is None else hit[1],
            "collapsed": s.collapsed,
            "onset": int(records[s.onset]["step"]) if s.collapsed and s.onset is not None
            else None,
            "lead_time": lead_time(records, trigger, threshold)})
    collapsed = [r for r in rows if r["collapsed"]]
    leads = [r["lead_time"] for r in collapsed if r["lead_time"] is not None]
    caught = sum(1 for v in leads if v >= 0)
    summary = {
        "campaigns": len(rows), "collapsed": len(collapsed), "caught": caught,
        "late": len(leads) - caught, "missed": len(collapsed) - caught,
        "false_alarms": sum(1 for r in rows if not r["collapsed"]
                            and r["trigger_step"] is not None),
        "quiet": sum(1 for r in rows if not r["collapsed"] and r["trigger_step"] is None),
        "mean_lead_time": sum(leads) / len(leads) if leads else None}
    return {"params": p.model_dump(mode="json"), "threshold": threshold, "campaigns": rows,
            "summary": summary}


@CONTROLLERS.register("collapse_guard")
class CollapseGuard(Controller):
    Params = GuardParams
    params: GuardParams
    # every cell's result.json holds this guard replayed offline (`guard_report`)
    offline_guard = True

    @classmethod
    def offline_report(cls, campaign_records: Sequence[Records],
                       params: Mapping[str, Any] | None, threshold: float) -> dict[str, Any]:
        """`guard_report` of a recorded chain."""
        return guard_report(campaign_records, params, threshold)

    @classmethod
    def offline_guard_params(cls, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """A guard cell's offline replay uses the cell's own params (its stopped campaigns
        cannot show their cliff, but the replay says where it fired)."""
        return dict(params or {})

    def plan(self, history: History) -> Plan:
        k = history.next_index
        if k == 0:
            return full_budget_from("init", history, history.base_lr, "chain start")
        hit = guard_trigger(history.campaigns[-1], self.params)
        if hit is not None and f"c{k - 1}:peak" in history.checkpoints:
            step, why = hit
            prev = history.summaries[-1]
            return Plan(
                start_from=f"c{k - 1}:peak", budget=history.max_steps, lr=history.base_lr,
                reason=(f"collapse_guard: fired at step {step} of campaign {k - 1} ({why}); "
                        f"roll back to its peak (pass@1 {prev.peak:.3f} at step "
                        f"{prev.peak_step})"),
                numbers={"trigger_step": step, "prev_peak": prev.peak,
                         "prev_peak_step": prev.peak_step, "prev_end": prev.end})
        return Plan(start_from=f"c{k - 1}:last", budget=history.max_steps, lr=history.base_lr,
                    reason=f"collapse_guard: no warning in campaign {k - 1}; continue",
                    numbers={"trigger_step": None})

    def should_stop(self, records: list[dict[str, Any]], history: History) -> str | None:
        hit = guard_trigger(records, self.params)
        return None if hit is None else f"collapse_guard at step {hit[0]}: {hit[1]}"
