"""`collapse_guard` (beyond the study): stop a campaign on an early warning, roll back to its peak.

Inside a running campaign the guard applies its rule after every step (`harness.guard`: the
registered signals, each with its thresholds in `GuardParams`, and the first step >= min_step
where any enabled signal fires). Its defaults are the rule `harness guard tune` chose on the
calibration seeds of the tiny testbed (docs/guard.md has the tuning run and the scores on
held-out seeds).

`should_stop` returns the reason at the first step where the rule fires. `plan` then rolls
back: when the guard fires on the previous campaign's records (recomputed from the history, so
the decision is a pure function of it), the next campaign starts from `c{k-1}:peak`, else
from `c{k-1}:last`; budget B and the base LR either way.

Offline: `guard_trigger_step(records, params)` is the first step at which the guard would fire
on a recorded campaign, and `lead_time(records, trigger_step, threshold)` measures how early it
fired relative to the collapse onset; `guard_report(campaign_records, params, threshold)` does
both for every campaign of a recorded chain and counts catches, misses and false alarms
(`harness.results` puts it, as `CollapseGuard.offline_report`, in every cell's `result.json`
as `guard`: on naive traces it measures what the guard would have done; on a guard's own
trace a campaign it stopped cannot show its cliff). `harness guard score` scores the rule by
the study's signature instead (harness.guard.score).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from harness.controllers.base import (
    Controller,
    History,
    Plan,
    full_budget_from,
    summarise,
)
from harness.controllers.registry import CONTROLLERS
from harness.guard.rule import GuardParams, as_params, guard_signals, guard_trigger
from harness.guard.signals import Records, prob_drop

__all__ = ["CollapseGuard", "GuardParams", "guard_report", "guard_signals", "guard_trigger",
           "guard_trigger_step", "lead_time", "prob_drop"]


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
                 threshold: float = 0.20, *, stopped: Collection[int] = (),
                 signature_rise: float = 0.05, signature_fall: float = 0.10) -> dict[str, Any]:
    """The guard run offline over every campaign of a recorded chain.

    Per campaign: `trigger_step` and `reason` (None when it never fired), `collapsed` (eval
    pass@1 peak - end > threshold), `onset` (the collapse onset step, None unless collapsed)
    and `lead_time` (`lead_time`: onset - trigger; None unless collapsed and fired). Summary:
    `collapsed` campaigns; `caught`: collapsed with the trigger at or before the onset
    (lead_time >= 0); `late`: collapsed, fired after the onset; `missed`: collapsed and not
    caught (late or never fired); `false_alarms`: fired on a campaign that did not collapse;
    `quiet`: neither fired nor collapsed; `mean_lead_time`: mean lead_time over the collapsed
    campaigns it fired on (late ones count, negative), None when there is none.

    Beside them, each campaign's `by_signature` {`signature`, `peak_step`, `onset`,
    `trigger_step`, `lead_time`, `outcome`} and `summary.by_signature` (the totals of
    `harness.guard.score.totals`) score the same firings as `harness guard score` does: the
    study's signature with `signature_rise`/`signature_fall`, caught = fired at least
    `MIN_LEAD` steps before its onset. A campaign in `stopped` (cut short by a controller, so
    its cliff never happened) has the outcome "stopped" and is left out of those totals."""
    from harness.guard.score import MIN_LEAD, Campaign, score_campaign, totals

    p = as_params(params)
    scored = []
    rows: list[dict[str, Any]] = []
    for k, records in enumerate(campaign_records):
        if not records:
            continue
        # the guard's trigger once, scored both ways
        sc = score_campaign(Campaign("", k, None, tuple(records)), p, rise=signature_rise,
                            fall=signature_fall, min_lead=MIN_LEAD)
        curve = [float(r["eval_pass1"]) for r in records]
        s = summarise(k, curve, budget=len(curve) - 1, start_from="", lr=1.0,
                      collapse_threshold=threshold)
        trigger = sc.trigger_step
        rows.append({
            "campaign": k, "trigger_step": trigger, "reason": sc.reason,
            "collapsed": s.collapsed,
            "onset": int(records[s.onset]["step"]) if s.collapsed and s.onset is not None
            else None,
            "lead_time": lead_time(records, trigger, threshold)})
        rows[-1]["by_signature"] = {
            "signature": sc.signature, "peak_step": sc.peak_step, "onset": sc.onset,
            "trigger_step": sc.trigger_step, "lead_time": sc.lead_time,
            "outcome": "stopped" if k in stopped else sc.outcome}
        if k not in stopped:
            scored.append(sc)
    collapsed = [r for r in rows if r["collapsed"]]
    leads = [r["lead_time"] for r in collapsed if r["lead_time"] is not None]
    caught = sum(1 for v in leads if v >= 0)
    summary = {
        "campaigns": len(rows), "collapsed": len(collapsed), "caught": caught,
        "late": len(leads) - caught, "missed": len(collapsed) - caught,
        "false_alarms": sum(1 for r in rows if not r["collapsed"]
                            and r["trigger_step"] is not None),
        "quiet": sum(1 for r in rows if not r["collapsed"] and r["trigger_step"] is None),
        "mean_lead_time": sum(leads) / len(leads) if leads else None,
        "by_signature": {**totals(scored), "stopped": len(rows) - len(scored),
                         "min_lead": MIN_LEAD}}
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
                       params: Mapping[str, Any] | None, threshold: float, *,
                       stopped: Collection[int] = (), signature_rise: float = 0.05,
                       signature_fall: float = 0.10) -> dict[str, Any]:
        """`guard_report` of a recorded chain."""
        return guard_report(campaign_records, params, threshold, stopped=stopped,
                            signature_rise=signature_rise, signature_fall=signature_fall)

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
