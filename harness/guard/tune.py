"""Tuning the guard offline on recorded traces: no retraining.

The guard fires at the first step where any enabled signal fires, so a rule's trigger on a
campaign is the earliest first-firing step of its signals. `tune` computes, once per campaign,
the steps at which each signal fires under each candidate setting (`SEARCH`), then scores every
rule of at most `max_signals` enabled signals (each at one of its settings), `min_step` from
`MIN_STEPS` and `min_rise` from `MIN_RISES` (when the guard is armed), by the objective:

1. false alarms at most `max_false_alarm_share` of the campaigns without the signature
   (rules over the budget are out, unless none is within it: then the fewest false alarms);
2. most campaigns caught (signature, fired >= min_lead steps before the onset);
3. fewest false alarms; 4. highest median lead time (over the signature campaigns it fired
on); 5. fewest signals; 6. the first in a fixed order (deterministic).

The parameters of the chosen rule are those fields of `GuardParams`; every other signal off.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import Any

from harness.guard.rule import GuardParams
from harness.guard.score import MIN_LEAD, Campaign, score, shape
from harness.guard.signals import SIGNALS, UNGATED, armed

# candidate settings per signal: the GuardParams fields each one sets
SEARCH: dict[str, list[dict[str, Any]]] = {
    "eval_drop": [{"drop_delta": d, "drop_confidence": c}
                  for d in (0.0, 0.02, 0.05, 0.1) for c in (0.8, 0.9, 0.95, 0.99)],
    "entropy_level": [{"entropy_frac": f} for f in (0.3, 0.5, 0.7, 0.8, 0.9)],
    "entropy_slope": [{"entropy_slope": s, "slope_window": w}
                      for s in (0.02, 0.05, 0.1) for w in (3, 5)],
    "kl_jump": [{"kl_jump": j} for j in (0.02, 0.05, 0.1, 0.2, 0.5)],
    "zero_var": [{"zero_var": z} for z in (0.5, 0.7, 0.9)],
    "length_drift": [{"length_drift": d} for d in (0.2, 0.35, 0.5)],
    "truncated": [{"truncated": s} for s in (0.05, 0.1, 0.3)],
    "reward_gap": [{"reward_gap": g} for g in (0.1, 0.2, 0.3)],
    "covariance": [{"cov_max": c} for c in (0.005, 0.0075, 0.01, 0.0125, 0.015, 0.02)],
}
MIN_STEPS = (1, 2, 3)
MIN_RISES: tuple[float | None, ...] = (None, 0.05, 0.1)
# every signal off: the base the chosen settings are laid over
OFF = {"drop_confidence": None, "entropy_frac": None, "entropy_slope": None, "kl_jump": None,
       "zero_var": None, "length_drift": None, "truncated": None, "reward_gap": None,
       "cov_max": None}


def _fire_steps(c: Campaign, name: str, setting: dict[str, Any]) -> list[int]:
    p = GuardParams(**{**OFF, **setting})
    fn = SIGNALS.get(name)
    return [int(r["step"]) for t, r in enumerate(c.records) if fn(c.records, t, p)]


def _armed_step(c: Campaign, min_rise: float | None) -> float:
    """The first step at which the guard is armed under `min_rise` (inf: never)."""
    p = GuardParams(**{**OFF, "min_rise": min_rise})
    return next((int(r["step"]) for t, r in enumerate(c.records) if armed(c.records, t, p)),
                float("inf"))


def tune(campaigns: Sequence[Campaign], *, max_signals: int = 2,
         max_false_alarm_share: float = 0.10, min_lead: int = MIN_LEAD,
         rise: float = 0.05, fall: float = 0.10,
         search: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """The best rule over `campaigns` by the module's objective: {params, totals, searched,
    objective, runner_up (the best rule with one signal fewer, for comparison)}."""
    search = SEARCH if search is None else search
    shapes = [shape(c, rise, fall) for c in campaigns]
    sig = [s[0] for s in shapes]
    onset = [s[2] for s in shapes]
    fires = {(name, i): [_fire_steps(c, name, setting) for c in campaigns]
             for name, settings in search.items() for i, setting in enumerate(settings)}
    arm_at = {rise_: [_armed_step(c, rise_) for c in campaigns] for rise_ in MIN_RISES}
    n_other = sum(not s for s in sig)
    budget = max_false_alarm_share * n_other

    def evaluate(rule: tuple[tuple[str, int], ...], m: int, rise_: float | None = None
                 ) -> tuple[tuple[Any, ...], int, int]:
        """(objective key: larger is better, false alarms, caught)."""
        caught = false = 0
        leads = []
        for j in range(len(campaigns)):
            lo = max(m, arm_at[rise_][j])
            first = min((next((s for s in fires[o][j]
                               if s >= (m if o[0] in UNGATED else lo)), None) for o in rule),
                        key=lambda v: float("inf") if v is None else v, default=None)
            if first is None:
                continue
            if sig[j]:
                if onset[j] is not None:
                    leads.append(onset[j] - first)
                    caught += onset[j] - first >= min_lead
            else:
                false += 1
        med = statistics.median(leads) if leads else float("-inf")
        within = false <= budget + 1e-9
        simpler = -len(rule) - (rise_ is not None)
        return (within, caught if within else -false, -false, med, simpler), false, caught

    # the rule with no signal (never fires) is a candidate too: it wins when nothing else
    # catches a campaign within the false-alarm budget
    best: tuple[Any, ...] = (evaluate((), MIN_STEPS[0])[0], (), MIN_STEPS[0], None)
    best_by_size: dict[int, tuple[Any, ...]] = {}
    # false alarms -> (caught, rule)
    front: dict[int, tuple[int, tuple[Any, ...]]] = {0: (0, ((), MIN_STEPS[0], None))}
    searched = 1
    for size in range(1, max_signals + 1):
        for combo in itertools.combinations(search, size):
            for picks in itertools.product(*(range(len(search[n])) for n in combo)):
                rule = tuple(zip(combo, picks, strict=True))
                for m, rise_ in itertools.product(MIN_STEPS, MIN_RISES):
                    searched += 1
                    key, false, caught = evaluate(rule, m, rise_)
                    if key > best[0]:
                        best = (key, rule, m, rise_)
                    if size not in best_by_size or key > best_by_size[size][0]:
                        best_by_size[size] = (key, rule, m, rise_)
                    if false not in front or caught > front[false][0]:
                        front[false] = (caught, (rule, m, rise_))

    def params_of(rule: tuple[tuple[str, int], ...], m: int, rise_: float | None
                  ) -> dict[str, Any]:
        fields: dict[str, Any] = {**OFF, "min_step": m, "min_rise": rise_}
        for name, i in rule:
            fields.update(search[name][i])
        return GuardParams(**fields).model_dump(mode="json")

    _, rule, m, rise_ = best
    chosen = params_of(rule, m, rise_)
    out = {"params": chosen, "signals": [n for n, _ in rule],
           "totals": score(campaigns, chosen, rise=rise, fall=fall, min_lead=min_lead)["totals"],
           "searched": searched,
           "objective": {"max_false_alarm_share": max_false_alarm_share, "min_lead": min_lead,
                         "max_signals": max_signals}}
    out["by_size"] = {size: {"signals": [n for n, _ in r], "params": params_of(r, mm, rr),
                             "totals": score(campaigns, params_of(r, mm, rr), rise=rise,
                                             fall=fall, min_lead=min_lead)["totals"]}
                      for size, (_, r, mm, rr) in sorted(best_by_size.items())}
    # the trade-off: for each number of false alarms, the most campaigns any rule catches
    # (only points that catch more than every rule with fewer false alarms)
    out["front"], most = [], -1
    for false in sorted(front):
        caught, (r, mm, rr) = front[false]
        if caught > most:
            most = caught
            out["front"].append({"false_alarms": false, "caught": caught,
                                 "signals": [n for n, _ in r], "params": params_of(r, mm, rr)})
    return out
