"""Between-campaign controllers (naive, es, care_v1, care_v2) on hand-made histories whose right
decisions are known, plus property tests over random histories for every registered one."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.controllers import CONTROLLERS, History, make_controller, summarise
from harness.controllers.care import CareParams, capability_posterior, effect_memory
from harness.errors import UserError

LR = 1e-6


def history(curves: Sequence[Sequence[float]], *, max_steps: int = 20, base_lr: float = LR,
            checkpoints: Sequence[str] | None = None) -> History:
    """A history of finished campaigns with these eval pass@1 curves (index 0 = step 0),
    keeping `init`, `c{k}:last`, `c{k}:peak` for every campaign unless told otherwise."""
    campaigns = tuple(tuple({"step": s, "eval_pass1": v} for s, v in enumerate(c))
                      for c in curves)
    summaries = tuple(summarise(k, list(c), budget=max_steps, start_from="init", lr=base_lr,
                                collapse_threshold=0.2) for k, c in enumerate(curves))
    if checkpoints is None:
        checkpoints = ["init", *(f"c{k}:{kind}" for k in range(len(curves))
                                 for kind in ("last", "peak"))]
    return History(campaigns=campaigns, summaries=summaries, checkpoints=tuple(checkpoints),
                   max_steps=max_steps, base_lr=base_lr)


RISE = [0.20 + 0.01 * s for s in range(21)]                       # peak at the end
COLLAPSE = [0.30, 0.40, 0.45, 0.50, 0.45, 0.30, 0.20, 0.10] + [0.05] * 13  # peak at step 3
FLAT = [0.30] * 21
NOISY = [0.30, 0.34, 0.28, 0.33, 0.29, 0.35, 0.27, 0.31, 0.30, 0.32, 0.29,
         0.33, 0.30, 0.28, 0.34, 0.31, 0.29, 0.30, 0.33, 0.28, 0.30]  # peak 0.35 at step 5
SMALL_RISE = [0.30, 0.33, 0.35, 0.32, 0.28] + [0.27] * 16          # peak +0.05, end -0.03
TIES = [0.10, 0.50, 0.20, 0.50, 0.50] + [0.30] * 16               # first peak at step 1


def plan(name: str, h: History, params: dict | None = None):
    return make_controller(name, params).plan(h)


# --------------------------------------------------------------------------- naive
@pytest.mark.parametrize("curve", [RISE, COLLAPSE, FLAT, NOISY, TIES])
def test_naive_continues_from_last_checkpoint_with_full_budget(curve: list[float]) -> None:
    p = plan("naive", history([curve, curve]))
    assert (p.start_from, p.budget, p.lr) == ("c1:last", 20, LR)


def test_every_controller_starts_the_chain_from_init_with_full_budget() -> None:
    for name in CONTROLLERS:
        p = plan(name, history([], max_steps=7))
        assert (p.start_from, p.budget, p.lr) == ("init", 7, LR), name


# --------------------------------------------------------------------------- es
@pytest.mark.parametrize(("curve", "peak_step"), [
    (RISE, 20), (COLLAPSE, 3), (FLAT, 0), (NOISY, 5), (TIES, 1)])
def test_es_rolls_forward_the_peak_with_budget_peak_step_plus_3(curve: list[float],
                                                                peak_step: int) -> None:
    p = plan("es", history([FLAT, curve]))
    assert p.start_from == "c1:peak"
    assert p.budget == min(max(peak_step + 3, 1), 20)
    assert p.lr == LR
    assert p.numbers["prev_peak_step"] == peak_step


def test_es_budget_is_clamped_to_one_and_to_b() -> None:
    assert plan("es", history([FLAT], max_steps=20), {"extra_steps": 0}).budget == 1
    assert plan("es", history([RISE[:6]], max_steps=5)).budget == 5


def test_es_patience_stops_after_steps_without_a_new_peak() -> None:
    es = make_controller("es", {"patience": 2})
    recs = [{"step": s, "eval_pass1": v} for s, v in enumerate([0.1, 0.3, 0.2, 0.2])]
    assert es.should_stop(recs[:3], history([])) is None
    assert "patience" in (es.should_stop(recs, history([])) or "")


# --------------------------------------------------------------------------- care: gate
@pytest.mark.parametrize(("curves", "gate", "start"), [
    ([RISE], "reuse", "c0:last"),
    ([COLLAPSE], "adapt", "c0:peak"),
    ([SMALL_RISE], "pilot", "c0:peak"),
    ([FLAT], "reject", "init"),
])
@pytest.mark.parametrize("name", ["care_v1", "care_v2"])
def test_care_gate_outcomes_and_their_start_checkpoints(name: str, curves: list[list[float]],
                                                        gate: str, start: str) -> None:
    p = plan(name, history(curves))
    assert p.numbers["gate"] == gate
    assert p.start_from == start
    assert gate in p.reason


def test_care_reject_starts_from_the_best_checkpoint_seen() -> None:
    c0 = [0.30, 0.31] + [0.30] * 19          # c0:peak = 0.31 is the best policy seen
    c1 = [0.20] * 21
    p = plan("care_v2", history([c0, c1]))
    assert p.numbers["gate"] == "reject"
    assert p.start_from == "c0:peak"


def test_care_falls_back_to_the_best_kept_checkpoint_when_memory_is_bounded() -> None:
    c0 = [0.30, 0.31] + [0.30] * 19
    p = plan("care_v2", history([c0, [0.20] * 21], checkpoints=["init", "c1:last", "c1:peak"]))
    assert p.numbers["gate"] == "reject"
    assert p.start_from == "init"            # 0.30 beats c1's 0.20; c0:peak is gone


def test_care_noisy_flat_campaign_is_not_reused() -> None:
    p = plan("care_v2", history([NOISY]))
    assert p.numbers["gate"] in ("pilot", "reject")


# --------------------------------------------------------------------------- care: budgets, lr
@pytest.mark.parametrize(("max_steps", "pilot", "full"), [(20, 10, 20), (15, 10, 15), (8, 8, 8)])
def test_care_v2_budget_is_pilot_10_or_full_clamped_to_b(max_steps: int, pilot: int,
                                                         full: int) -> None:
    def budget(curve: list[float]) -> int:
        p = plan("care_v2", history([curve[:max_steps + 1]], max_steps=max_steps))
        assert p.lr == LR
        return p.budget

    assert budget(RISE) == full                  # reuse
    assert budget(SMALL_RISE) == pilot           # pilot
    assert budget(FLAT) == pilot                 # reject retries with a pilot budget


def test_care_v1_halves_the_lr_after_a_regression_and_keeps_full_budget() -> None:
    p = plan("care_v1", history([COLLAPSE]))
    assert p.numbers["regressions"] == [0]
    assert (p.lr, p.budget) == (LR / 2, 20)


def test_care_v1_lr_halving_is_cumulative() -> None:
    curves = [COLLAPSE, RISE, RISE, RISE, RISE, COLLAPSE]
    p = plan("care_v1", history(curves))
    assert p.numbers["regressions"] == [0, 5]
    assert p.lr == pytest.approx(LR / 4)
    assert plan("care_v1", history(curves[:5])).lr == pytest.approx(LR / 2)


def test_care_v1_does_not_halve_on_a_clean_rise() -> None:
    assert plan("care_v1", history([RISE, RISE])).lr == LR


# --------------------------------------------------------------------------- care: belief
def test_belief_revision_fires_on_a_surprising_effect_and_tightens_the_gate() -> None:
    h = history([RISE, RISE, RISE, COLLAPSE])
    p = plan("care_v2", h)
    assert p.numbers["belief_revised"] is True
    assert p.numbers["last_distance"] > 2.0
    assert 3 in p.numbers["regressions"]
    plain = plan("care_v2", h, {"inflation": 1.0})       # same data, no revision
    assert p.numbers["lower_peak"] < plain.numbers["lower_peak"]
    assert p.numbers["posterior_var_end"] > plain.numbers["posterior_var_end"]


def test_belief_revision_does_not_fire_on_an_expected_effect() -> None:
    p = plan("care_v2", history([RISE, RISE]))
    assert p.numbers["belief_revised"] is False


def test_posterior_is_the_conjugate_update_of_the_memory() -> None:
    params = CareParams(drift_std=0.0, surprise_distance=100.0)
    mem = effect_memory(history([RISE]))
    b = capability_posterior(mem, params)
    prior_var, noise_var = params.prior_std ** 2, params.obs_noise_std ** 2
    post_var = 1 / (1 / prior_var + 1 / noise_var)
    assert b.cov[0, 0] == pytest.approx(post_var)
    assert b.mean[0] == pytest.approx(post_var * (0.20 / noise_var))


def test_care_decides_identically_when_resumed() -> None:
    h = history([COLLAPSE, NOISY, RISE])
    a, b = make_controller("care_v1"), make_controller("care_v1")
    plan_a = a.plan(h)
    a.plan(history([FLAT]))                      # calls in between leave no state behind
    assert a.plan(h) == plan_a == b.plan(h)


# --------------------------------------------------------------------------- params
@pytest.mark.parametrize("name", ["naive", "es", "care_v1", "care_v2", "collapse_guard"])
def test_params_reject_unknown_keys(name: str) -> None:
    with pytest.raises(UserError, match="allowed params"):
        make_controller(name, {"no_such_param": 1})


@pytest.mark.parametrize(("name", "params"), [
    ("care_v1", {"lr_factor": 0}), ("care_v2", {"pilot_budget": 0}),
    ("care_v1", {"prior_std": -1}), ("collapse_guard", {"drop_confidence": 1.5})])
def test_params_reject_out_of_range_values(name: str, params: dict) -> None:
    with pytest.raises(UserError):
        make_controller(name, params)


# --------------------------------------------------------------------------- properties
curve_st = st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=21)


@st.composite
def histories(draw: st.DrawFn) -> History:
    max_steps = draw(st.integers(1, 25))
    curves = draw(st.lists(curve_st.map(lambda c: c[:max_steps + 1]), min_size=0, max_size=6))
    bounded = draw(st.booleans()) and curves
    checkpoints = (["init", f"c{len(curves) - 1}:last", f"c{len(curves) - 1}:peak"]
                   if bounded else None)
    return history(curves, max_steps=max_steps, base_lr=draw(st.floats(1e-8, 1e-2)),
                   checkpoints=checkpoints)


@settings(max_examples=60, deadline=None)
@given(h=histories(), name=st.sampled_from(sorted(CONTROLLERS)))
def test_any_plan_is_valid_and_deterministic(h: History, name: str) -> None:
    p = plan(name, h)
    assert p.start_from in h.checkpoints
    assert 1 <= p.budget <= h.max_steps
    assert p.lr > 0
    assert p.reason
    assert plan(name, h) == p
    json.dumps(p.to_dict())                      # loggable as it is


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(CONTROLLERS)),
       key=st.text(min_size=1, max_size=12).filter(lambda k: k.isidentifier()))
def test_params_reject_any_unknown_key(name: str, key: str) -> None:
    controller = CONTROLLERS.get(name)
    if key in controller.Params.model_fields:
        return
    with pytest.raises(UserError):
        make_controller(name, {key: 1})
