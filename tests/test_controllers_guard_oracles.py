"""The online collapse guard (signals, trigger, lead time, roll-back plan) and the trace /
hindsight oracles, on constructed per-step records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.controllers import History, make_controller, summarise
from harness.controllers.collapse_guard import (
    GuardParams,
    guard_report,
    guard_trigger,
    guard_trigger_step,
    lead_time,
    prob_drop,
)
from harness.controllers.oracles import hindsight_oracle, trace_oracle
from harness.guard.tune import OFF as ALL_OFF

LR = 1e-6
# every signal off, with the eval-drop margin these hand-made curves were drawn for
OFF = {**ALL_OFF, "drop_delta": 0.05, "min_rise": None}  # armed from the start
# the three-signal rule these hand-made curves were drawn for (not the tuned defaults)
RULE = {**OFF, "entropy_frac": 0.5, "kl_jump": 0.05, "drop_confidence": 0.9}

# A rise, a slow slide, then the cliff: peak 0.53 at step 7, onset (first pass@1 below
# peak - gap/2 = 0.285) at step 13. Entropy and KL give the warning first.
CLIFF_EVAL = [0.30, 0.34, 0.38, 0.42, 0.46, 0.50, 0.52, 0.53, 0.53, 0.52, 0.50, 0.47, 0.40,
              0.25, 0.12, 0.06, 0.05, 0.04, 0.04, 0.04, 0.04]
CLIFF_ENTROPY = [1.0, 0.98, 0.95, 0.92, 0.88, 0.84, 0.80, 0.75, 0.68, 0.58, 0.47, 0.35, 0.25,
                 0.15, 0.10, 0.08, 0.07, 0.06, 0.06, 0.06, 0.06]
CLIFF_KL = [0.0, 0.005, 0.01, 0.016, 0.022, 0.03, 0.038, 0.047, 0.057, 0.07, 0.085, 0.11, 0.20,
            0.35, 0.50, 0.60, 0.65, 0.70, 0.72, 0.73, 0.74]
CLIFF_ONSET = 13

RISE_EVAL = [0.20 + 0.01 * s for s in range(21)]
RISE_ENTROPY = [1.0 - 0.012 * s for s in range(21)]        # ends at 0.76 of its start
RISE_KL = [0.01 * s for s in range(21)]


def records(eval_pass1: Sequence[float], entropy: Sequence[float] | None = None,
            kl: Sequence[float] | None = None, **extra: float) -> list[dict]:
    out = []
    for s, v in enumerate(eval_pass1):
        r = {"step": s, "eval_pass1": v, **extra}
        if entropy is not None:
            r["entropy"] = entropy[s]
        if kl is not None:
            r["kl_to_ref"] = kl[s]
        out.append(r)
    return out


CLIFF = records(CLIFF_EVAL, CLIFF_ENTROPY, CLIFF_KL)
RISE = records(RISE_EVAL, RISE_ENTROPY, RISE_KL)


def history(campaigns: Sequence[list[dict]], max_steps: int = 20) -> History:
    summaries = tuple(
        summarise(k, [r["eval_pass1"] for r in c], budget=max_steps, start_from="init", lr=LR,
                  collapse_threshold=0.2) for k, c in enumerate(campaigns))
    ckpts = ("init", *(f"c{k}:{kind}" for k in range(len(campaigns)) for kind in ("last", "peak")))
    return History(campaigns=tuple(tuple(c) for c in campaigns), summaries=summaries,
                   checkpoints=ckpts, max_steps=max_steps, base_lr=LR)


# --------------------------------------------------------------------------- guard: firing
def test_guard_fires_before_the_cliff_on_a_collapse() -> None:
    step = guard_trigger_step(CLIFF, RULE)
    assert step is not None and 7 < step < CLIFF_ONSET
    assert lead_time(CLIFF, step, threshold=0.2) == CLIFF_ONSET - step > 0


def test_guard_does_not_fire_on_a_clean_rise() -> None:
    assert guard_trigger_step(RISE, RULE) is None


@pytest.mark.parametrize(("signal", "params", "step", "words"), [
    ("entropy", {**OFF, "entropy_frac": 0.5}, 10, "entropy collapse"),
    ("kl", {**OFF, "kl_jump": 0.05}, 12, "kl jump"),
    ("drop", {**OFF, "drop_confidence": 0.9}, 12, "eval drop"),
])
def test_each_signal_alone_fires_at_its_first_step(signal: str, params: dict, step: int,
                                                   words: str) -> None:
    hit = guard_trigger(CLIFF, params)
    assert hit is not None
    assert hit[0] == step, signal
    assert words in hit[1]


def test_guard_with_every_signal_off_never_fires() -> None:
    assert guard_trigger_step(CLIFF, OFF) is None


def test_guard_skips_signals_whose_fields_are_missing_or_not_finite() -> None:
    recs = records(CLIFF_EVAL, [float("nan"), *CLIFF_ENTROPY[1:]])  # no kl_to_ref at all
    # entropy_0 is missing, so the start value is step 1's (0.98): 0.47 < 0.49 at step 10
    assert guard_trigger_step(recs, {**RULE, "drop_confidence": None}) == 10
    assert guard_trigger_step(records(CLIFF_EVAL), {**RULE, "drop_confidence": None}) is None


def test_guard_never_fires_before_min_step() -> None:
    recs = records([0.9, 0.1, 0.1])
    assert guard_trigger_step(recs, RULE) == 1
    assert guard_trigger_step(recs, {**RULE, "min_step": 2}) == 2


def test_credible_drop_needs_enough_eval_samples() -> None:
    peak, now = {"eval_pass1": 0.50}, {"eval_pass1": 0.35}
    p = GuardParams(drop_delta=0.05)
    assert prob_drop(now, peak, p) > 0.9                    # 240 samples: credible
    small = {"eval_samples": 10}
    assert prob_drop({**now, **small}, {**peak, **small}, p) < 0.9
    # equal rates: P(diff > delta) of two Beta(121, 121), close to its normal approximation
    sd = math.sqrt(2 * 0.25 / 243)
    expected = 1 - NormalDist().cdf(0.05 / sd)
    assert prob_drop(peak, peak, p) == pytest.approx(expected, abs=0.01)


def test_record_eval_samples_field_overrides_the_param() -> None:
    recs = records([0.5, 0.5, 0.35], eval_samples=10)
    assert guard_trigger_step(recs, {**OFF, "drop_confidence": 0.9}) is None
    assert guard_trigger_step(records([0.5, 0.5, 0.35]), {**OFF, "drop_confidence": 0.9}) == 2


# --------------------------------------------------------------------------- guard: lead time
def test_lead_time_is_none_without_a_collapse_or_a_trigger() -> None:
    assert lead_time(RISE, 5, threshold=0.2) is None
    assert lead_time(CLIFF, None, threshold=0.2) is None
    assert lead_time(CLIFF, 5, threshold=0.6) is None        # gap 0.49 is not a collapse here


def test_lead_time_is_negative_when_the_guard_fires_late() -> None:
    assert lead_time(CLIFF, 15, threshold=0.2) == CLIFF_ONSET - 15 < 0


# --------------------------------------------------------------------------- guard: controller
def test_guard_should_stop_gives_the_reason_at_the_trigger_step() -> None:
    g = make_controller("collapse_guard", RULE)
    step = guard_trigger_step(CLIFF, RULE)
    assert step is not None
    assert g.should_stop(CLIFF[:step], history([])) is None
    reason = g.should_stop(CLIFF[:step + 1], history([]))
    assert reason is not None and f"step {step}" in reason


def test_guard_plan_rolls_back_to_the_peak_after_it_fired() -> None:
    g = make_controller("collapse_guard", RULE)
    step = guard_trigger_step(CLIFF, RULE)
    assert step is not None
    p = g.plan(history([RISE, CLIFF[:step + 1]]))
    assert (p.start_from, p.budget, p.lr) == ("c1:peak", 20, LR)
    assert p.numbers["trigger_step"] == step


def test_guard_plan_continues_from_last_after_a_quiet_campaign() -> None:
    p = make_controller("collapse_guard", RULE).plan(history([RISE]))
    assert (p.start_from, p.budget, p.lr) == ("c0:last", 20, LR)


# --------------------------------------------------------------------------- oracles
FLAT = records([0.30] * 5)
TIES = records([0.10, 0.50, 0.20, 0.50])


def test_trace_oracle_picks_each_campaigns_best_step_and_the_last_for_the_chain() -> None:
    o = trace_oracle([CLIFF, TIES, FLAT])
    assert o["oracle"] is True and o["kind"] == "trace" and o["split"] == "eval"
    assert [(p["campaign"], p["step"], p["value"]) for p in o["per_campaign"]] == [
        (0, 7, 0.53), (1, 1, 0.50), (2, 0, 0.30)]              # ties: first step wins
    assert (o["campaign"], o["step"], o["value"]) == (2, 0, 0.30)
    assert o["mean_peak"] == pytest.approx((0.53 + 0.50 + 0.30) / 3)


def test_hindsight_oracle_picks_the_best_step_of_the_chain_earliest_on_ties() -> None:
    o = hindsight_oracle([FLAT, TIES, records([0.2, 0.5])])
    assert o["oracle"] is True and o["kind"] == "hindsight" and o["split"] == "eval"
    assert (o["campaign"], o["step"], o["value"]) == (1, 1, 0.50)
    o = hindsight_oracle([RISE, CLIFF])                          # RISE peaks at 0.40 < 0.53
    assert (o["campaign"], o["step"], o["value"]) == (1, 7, 0.53)


@pytest.mark.parametrize("oracle", [trace_oracle, hindsight_oracle])
def test_oracles_refuse_an_empty_chain(oracle) -> None:
    with pytest.raises(ValueError):
        oracle([])


# --------------------------------------------------------------------------- properties
unit = st.floats(0, 1, allow_nan=False)


@st.composite
def campaigns(draw: st.DrawFn) -> list[dict]:
    n = draw(st.integers(1, 21))
    return records(draw(st.lists(unit, min_size=n, max_size=n)),
                   draw(st.lists(st.floats(0.01, 2), min_size=n, max_size=n)),
                   draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))


@settings(max_examples=40, deadline=None)
@given(recs=campaigns())
def test_guard_trigger_is_the_first_prefix_where_should_stop_fires(recs: list[dict]) -> None:
    g = make_controller("collapse_guard", RULE)
    step = guard_trigger_step(recs, RULE)
    stops = [t for t in range(len(recs)) if g.should_stop(recs[:t + 1], history([]))]
    assert step == (stops[0] if stops else None)
    assert step is None or step >= 1


@settings(max_examples=40, deadline=None)
@given(chain=st.lists(st.lists(unit, min_size=1, max_size=21), min_size=1, max_size=6))
def test_oracles_bound_what_they_select_from(chain: list[list[float]]) -> None:
    recs = [records(c) for c in chain]
    t, h = trace_oracle(recs), hindsight_oracle(recs)
    assert h["value"] == max(max(c) for c in chain) >= t["value"] == max(chain[-1])
    assert chain[h["campaign"]][h["step"]] == h["value"]


# --------------------------------------------------------------------------- guard: report
# Eval only, 10 samples behind each value: the credible drop comes two steps after the onset.
LATE = records([0.5, 0.5, 0.46, 0.42, 0.38, 0.34, 0.30, 0.26, 0.22, 0.18, 0.14, 0.10, 0.05, 0.0],
               eval_samples=10)
SILENT = records([0.6, 0.6, 0.1, 0.1], eval_samples=1)     # collapses; one sample: no signal
ALARM = records([0.5, 0.5, 0.35, 0.45, 0.45])               # credible dip, recovers: gap 0.05


def test_guard_report_counts_catches_misses_and_false_alarms() -> None:
    rep = guard_report([CLIFF, LATE, SILENT, ALARM, RISE], RULE, threshold=0.2)
    assert rep["params"] == GuardParams(**RULE).model_dump(mode="json") and rep["threshold"] == 0.2
    rows = {r["campaign"]: r for r in rep["campaigns"]}
    step = guard_trigger_step(CLIFF, RULE)
    assert step is not None
    assert {k: v for k, v in rows[0].items() if k != "by_signature"} | {"reason": None} == {
        "campaign": 0, "trigger_step": step, "reason": None, "collapsed": True,
        "onset": CLIFF_ONSET, "lead_time": CLIFF_ONSET - step}
    assert "entropy collapse" in rows[0]["reason"]
    assert (rows[1]["trigger_step"], rows[1]["onset"], rows[1]["lead_time"]) == (10, 8, -2)
    assert rows[2]["collapsed"] and rows[2]["trigger_step"] is None
    assert rows[2]["reason"] is None and rows[2]["lead_time"] is None
    assert not rows[3]["collapsed"] and rows[3]["trigger_step"] == 2
    assert rows[3]["onset"] is None and rows[3]["lead_time"] is None
    assert rows[4]["trigger_step"] is None and not rows[4]["collapsed"]
    by_sig = rep["summary"].pop("by_signature")
    assert rep["summary"] == {"campaigns": 5, "collapsed": 3, "caught": 1, "late": 1,
                              "missed": 2, "false_alarms": 1, "quiet": 1,
                              "mean_lead_time": ((CLIFF_ONSET - step) + -2) / 2}
    # beside it, the same campaigns as `harness guard score` scores them (the signature)
    from harness.guard.score import Campaign, score

    want = score([Campaign("", k, None, tuple(c)) for k, c in
                  enumerate([CLIFF, LATE, SILENT, ALARM, RISE])], RULE)
    assert [r["by_signature"]["outcome"] for r in rep["campaigns"]] == [
        c["outcome"] for c in want["campaigns"]]
    assert by_sig == {**want["totals"], "stopped": 0, "min_lead": 2}


def test_guard_report_uses_its_params_and_threshold() -> None:
    rep = guard_report([CLIFF], OFF, threshold=0.2)
    assert rep["params"]["entropy_frac"] is None
    assert rep["summary"] | {"mean_lead_time": 0, "by_signature": None} == {
        "campaigns": 1, "collapsed": 1, "caught": 0, "late": 0, "missed": 1,
        "false_alarms": 0, "quiet": 0, "mean_lead_time": 0, "by_signature": None}
    assert rep["summary"]["mean_lead_time"] is None
    rep = guard_report([CLIFF], RULE, threshold=0.6)                 # gap 0.49: no collapse here
    assert rep["summary"]["false_alarms"] == 1 and rep["campaigns"][0]["onset"] is None
    assert guard_report([])["summary"]["mean_lead_time"] is None
