"""`care_v1`, `care_v2` (CARE: between-campaign memory; docs/design.md section 2, Controllers).

CARE decides the next campaign from a memory of what past campaigns did, in four steps, each a
small pure function below:

1. **Capability-effect memory** (`effect_memory`): per finished campaign k, the observed effect
   y_k = (end_k - start_k, peak_k - start_k) of eval pass@1 (start = step 0, before any
   update), with the plan that produced it (start checkpoint, budget, steps run, LR).
2. **Capability posterior** (`capability_posterior`): a Gaussian belief N(m, P) over the
   expected effect theta = (E[end - start], E[peak - start]) of the next campaign. Prior
   N(prior_mean * 1, prior_std^2 I). Before each observation theta drifts (random walk,
   P += drift_std^2 I, so old campaigns count less); each y_k is observed as y_k = theta + e,
   e ~ N(0, obs_noise_std^2 I), and folded in by the conjugate linear-Gaussian (Kalman) update:
   S = P + R, K = P S^-1, m += K (y_k - m), P = (I - K) P.
3. **Regression-aware belief revision**: before each update, the Mahalanobis distance of the
   observation from its prediction is d_k = sqrt((y_k - m)^T S^-1 (y_k - m)). When
   d_k > surprise_distance the campaign is a *surprise*: after the update P is multiplied by
   `inflation` (the belief becomes less certain, so the credible bounds the gate uses fall and
   the gate tightens). A surprise whose end effect is below the predicted one is a
   *regression*. Under the model d_k^2 ~ chi-square(2), so P(d_k > 2) = exp(-2) ~ 0.14.
4. **Transfer gate** (`transfer_gate`): from the belief about the next campaign, N(m, P + drift),
   with credible bounds lb = m - credible_z * sd, decide (first rule that holds):
   - `reuse`  if lb_end >= reuse_min: campaigns credibly end no worse than they start; carry
     the last checkpoint `c{k-1}:last`;
   - `adapt`  if lb_peak >= adapt_min: campaigns credibly rise, but their end is not credibly
     safe; carry the peak checkpoint `c{k-1}:peak`;
   - `pilot`  if m_peak >= adapt_min: a rise is expected but not credible; a short exploratory
     campaign from `c{k-1}:peak`;
   - `reject` otherwise: campaigns are not expected to rise even at their peak; discard the
     last campaign's result and start from the best checkpoint seen (the kept checkpoint with
     the highest recorded eval pass@1; ties: the earliest).
   A preferred checkpoint the runner no longer keeps falls back to the best kept one.

The versions differ only in what the gate's verdict and the regressions change:
- `care_v1`: budget is always B; LR = base_lr * lr_factor^(number of regressions so far)
  (halved cumulatively after each regression).
- `care_v2`: LR = base_lr; budget from the gate: `pilot_budget` (10) for `pilot` and `reject`,
  `full_budget` (default B; the study's 20) for `reuse` and `adapt`, clamped to [1, B].

The first campaign has no memory: it starts from `init` with budget B and LR base_lr (gate
`start`). Nothing is carried between calls: the memory, the posterior and the regression count
are recomputed from `history` each call, so a resumed chain decides identically.

What is published vs our reading
--------------------------------
Published (the study's abstract and docs/design.md): CARE is a between-campaign memory mechanism
with a capability posterior (linear-Gaussian), a transfer gate with the outcomes reuse /
adapt / pilot / reject, and regression-aware belief revision that tightens the gate when an
observed effect is far (Mahalanobis distance over a threshold) from the predicted one; v1
halves the LR cumulatively after regressions; v2 keeps the LR and sets the budget from the gate
(10 steps for a pilot, 20 for a full campaign).

Our reading (not published; every number is a parameter with the default below):
- the effect is the pair (end - start, peak - start) of eval pass@1, observed directly
  (observation matrix I), independent of the plan (the plan is kept in memory and logged, not
  regressed on); the random-walk drift and all prior / noise scales;
- the gate's rules, their order, the thresholds, credible_z, and which checkpoint each outcome
  carries (pilot from the last peak; reject from the best checkpoint seen);
- belief revision as variance inflation by a constant factor; a "regression" is a surprise
  whose end effect fell below its prediction (this is what v1's LR halving counts);
- v2 gives `reject` the pilot budget (a retry from an older checkpoint is exploratory);
- the first campaign's plan (no memory: init, full budget, base LR).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from harness.controllers.base import (
    Controller,
    ControllerParams,
    History,
    Plan,
    full_budget_from,
)
from harness.controllers.registry import CONTROLLERS

Gate = Literal["reuse", "adapt", "pilot", "reject"]


class CareParams(ControllerParams):
    """Shared by `care_v1` and `care_v2`. Effects are in pass@1 units (0..1)."""

    prior_mean: float = Field(0.0, ge=-1, le=1, description=(
        "Prior mean of each expected effect (end - start, peak - start)."))
    prior_std: float = Field(0.10, gt=0, description="Prior std of each expected effect.")
    obs_noise_std: float = Field(0.05, gt=0, description=(
        "Observation noise std: how far one campaign's effect scatters around its expectation."))
    drift_std: float = Field(0.02, ge=0, description=(
        "Random-walk std of the expected effect per campaign (older campaigns count less)."))
    credible_z: float = Field(1.645, gt=0, description=(
        "Credible bounds are mean -/+ credible_z * sd (1.645: one-sided 95%)."))
    reuse_min: float = Field(0.0, description=(
        "Reuse when the lower bound of E[end - start] is at least this."))
    adapt_min: float = Field(0.02, description=(
        "Adapt when the lower bound of E[peak - start] is at least this; pilot when only its "
        "mean is; reject otherwise."))
    surprise_distance: float = Field(2.0, gt=0, description=(
        "Belief revision fires when the Mahalanobis distance of an observed effect from its "
        "prediction exceeds this."))
    inflation: float = Field(2.0, ge=1, description=(
        "On a surprise, the posterior covariance is multiplied by this."))


class CareV1Params(CareParams):
    lr_factor: float = Field(0.5, gt=0, le=1, description=(
        "LR multiplier per regression, cumulative: lr = base_lr * lr_factor^regressions."))


class CareV2Params(CareParams):
    pilot_budget: int = Field(10, ge=1, description=(
        "Budget of a pilot (and of a retry after reject); clamped to B."))
    full_budget: int | None = Field(None, ge=1, description=(
        "Budget of a reuse / adapt campaign; None: B (the study's 20). Clamped to B."))


# --------------------------------------------------------------------------- memory
@dataclass(frozen=True)
class CampaignEffect:
    """One memory entry: what campaign `index` did and the plan that produced it."""

    index: int
    end_effect: float
    peak_effect: float
    start_from: str
    budget: int
    steps_run: int
    lr: float

    @property
    def vector(self) -> np.ndarray:
        return np.array([self.end_effect, self.peak_effect])


def effect_memory(history: History) -> tuple[CampaignEffect, ...]:
    """The capability-effect memory: one entry per finished campaign, oldest first."""
    return tuple(
        CampaignEffect(index=s.index, end_effect=s.end - s.start, peak_effect=s.peak - s.start,
                       start_from=s.start_from, budget=s.budget, steps_run=s.steps_run, lr=s.lr)
        for s in history.summaries)


# --------------------------------------------------------------------------- posterior
@dataclass(frozen=True)
class Belief:
    """The capability posterior after the memory, with the belief-revision log.

    `mean`, `cov`: posterior over (E[end - start], E[peak - start]) after the last campaign
    (before the drift to the next one). `distances[i]` is memory entry i's Mahalanobis
    distance from its prediction; `surprises` / `regressions` are campaign indices."""

    mean: np.ndarray
    cov: np.ndarray
    distances: tuple[float, ...]
    surprises: tuple[int, ...]
    regressions: tuple[int, ...]


def capability_posterior(memory: tuple[CampaignEffect, ...], params: CareParams) -> Belief:
    """Fold the memory into the linear-Gaussian posterior, revising on surprises."""
    eye = np.eye(2)
    mean = np.full(2, params.prior_mean)
    cov = params.prior_std ** 2 * eye
    drift = params.drift_std ** 2 * eye
    noise = params.obs_noise_std ** 2 * eye
    distances: list[float] = []
    surprises: list[int] = []
    regressions: list[int] = []
    for entry in memory:
        cov = cov + drift
        s = cov + noise
        resid = entry.vector - mean
        d = math.sqrt(float(resid @ np.linalg.solve(s, resid)))
        gain = cov @ np.linalg.inv(s)
        mean = mean + gain @ resid
        cov = (eye - gain) @ cov
        distances.append(d)
        if d > params.surprise_distance:
            cov = cov * params.inflation
            surprises.append(entry.index)
            if resid[0] < 0:
                regressions.append(entry.index)
    return Belief(mean=mean, cov=cov, distances=tuple(distances), surprises=tuple(surprises),
                  regressions=tuple(regressions))


# --------------------------------------------------------------------------- gate
@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict and the numbers it compared (all for the next campaign)."""

    gate: Gate
    mean_end: float
    mean_peak: float
    var_end: float
    var_peak: float
    lower_end: float
    lower_peak: float
    rule: str


def transfer_gate(belief: Belief, params: CareParams) -> GateDecision:
    """reuse / adapt / pilot / reject from the belief about the next campaign (module doc)."""
    cov = belief.cov + params.drift_std ** 2 * np.eye(2)
    m_end, m_peak = (float(x) for x in belief.mean)
    v_end, v_peak = float(cov[0, 0]), float(cov[1, 1])
    lb_end = m_end - params.credible_z * math.sqrt(v_end)
    lb_peak = m_peak - params.credible_z * math.sqrt(v_peak)
    gate: Gate
    if lb_end >= params.reuse_min:
        gate, rule = "reuse", f"lb E[end-start] {lb_end:+.3f} >= reuse_min {params.reuse_min}"
    elif lb_peak >= params.adapt_min:
        gate, rule = "adapt", (f"lb E[end-start] {lb_end:+.3f} < reuse_min {params.reuse_min}; "
                               f"lb E[peak-start] {lb_peak:+.3f} >= adapt_min {params.adapt_min}")
    elif m_peak >= params.adapt_min:
        gate, rule = "pilot", (f"E[peak-start] {m_peak:+.3f} >= adapt_min {params.adapt_min} "
                               f"but its lb {lb_peak:+.3f} is not")
    else:
        gate, rule = "reject", f"E[peak-start] {m_peak:+.3f} < adapt_min {params.adapt_min}"
    return GateDecision(gate=gate, mean_end=m_end, mean_peak=m_peak, var_end=v_end,
                        var_peak=v_peak, lower_end=lb_end, lower_peak=lb_peak, rule=rule)


# --------------------------------------------------------------------------- checkpoints
def checkpoint_value(name: str, history: History) -> float | None:
    """Recorded eval pass@1 of a kept checkpoint (`init`: campaign 0's start), or None."""
    if name == "init":
        return history.summaries[0].start if history.summaries else None
    tag, _, kind = name.partition(":")
    if not tag.startswith("c") or not tag[1:].isdigit() or kind not in ("last", "peak"):
        return None
    k = int(tag[1:])
    if k >= len(history.summaries):
        return None
    s = history.summaries[k]
    return s.end if kind == "last" else s.peak


def best_checkpoint(history: History) -> str:
    """The kept checkpoint with the highest recorded eval pass@1; ties: the earliest in chain
    order (init, c0:peak, c0:last, c1:peak, ...). Falls back to the first kept one."""
    def order(name: str) -> tuple[int, int]:
        if name == "init":
            return (-1, 0)
        tag, _, kind = name.partition(":")
        return (int(tag[1:]), 0 if kind == "peak" else 1)

    scored = [(v, n) for n in history.checkpoints
              if (v := checkpoint_value(n, history)) is not None]
    if not scored:
        return history.checkpoints[0]
    top = max(v for v, _ in scored)
    return min((n for v, n in scored if v == top), key=order)


def gate_checkpoint(gate: Gate, history: History) -> str:
    """Where the gate's verdict starts the next campaign (module doc), if it is still kept."""
    k = history.next_index
    preferred = {"reuse": f"c{k - 1}:last", "adapt": f"c{k - 1}:peak",
                 "pilot": f"c{k - 1}:peak", "reject": None}[gate]
    if preferred is not None and preferred in history.checkpoints:
        return preferred
    return best_checkpoint(history)


# --------------------------------------------------------------------------- controllers
class _Care(Controller):
    params: CareParams
    version = ""

    def plan(self, history: History) -> Plan:
        if history.next_index == 0:
            return full_budget_from("init", history, history.base_lr,
                                    f"{self.version}: chain start (no memory)")
        memory = effect_memory(history)
        belief = capability_posterior(memory, self.params)
        decision = transfer_gate(belief, self.params)
        start = gate_checkpoint(decision.gate, history)
        budget, lr, why = self._budget_lr(decision.gate, belief, history)
        last = memory[-1]
        revised = last.index in belief.surprises
        reason = (f"{self.version} gate={decision.gate}: {decision.rule}; start {start}; {why}"
                  + (f"; belief revised (campaign {last.index} distance "
                     f"{belief.distances[-1]:.2f} > {self.params.surprise_distance})"
                     if revised else ""))
        numbers: dict[str, Any] = {
            "gate": decision.gate,
            "posterior_mean_end": decision.mean_end, "posterior_mean_peak": decision.mean_peak,
            "posterior_var_end": decision.var_end, "posterior_var_peak": decision.var_peak,
            "lower_end": decision.lower_end, "lower_peak": decision.lower_peak,
            "last_effect_end": last.end_effect, "last_effect_peak": last.peak_effect,
            "last_distance": belief.distances[-1], "belief_revised": revised,
            "surprises": list(belief.surprises), "regressions": list(belief.regressions),
            "memory_size": len(memory),
        }
        return Plan(start_from=start, budget=budget, lr=lr, reason=reason, numbers=numbers)

    def _budget_lr(self, gate: Gate, belief: Belief, history: History
                   ) -> tuple[int, float, str]:
        raise NotImplementedError


@CONTROLLERS.register("care_v1")
class CareV1(_Care):
    """CARE v1: full budget; LR halved cumulatively after each regression."""

    Params = CareV1Params
    params: CareV1Params
    version = "care_v1"

    def _budget_lr(self, gate: Gate, belief: Belief, history: History
                   ) -> tuple[int, float, str]:
        n = len(belief.regressions)
        lr = history.base_lr * self.params.lr_factor ** n
        return history.max_steps, lr, (f"budget {history.max_steps} (full); lr = base x "
                                       f"{self.params.lr_factor}^{n} regressions = {lr:.3g}")


@CONTROLLERS.register("care_v2")
class CareV2(_Care):
    """CARE v2: base LR; budget from the gate (pilot / reject short, reuse / adapt full)."""

    Params = CareV2Params
    params: CareV2Params
    version = "care_v2"

    def _budget_lr(self, gate: Gate, belief: Belief, history: History
                   ) -> tuple[int, float, str]:
        b = history.max_steps
        if gate in ("pilot", "reject"):
            budget, kind = min(self.params.pilot_budget, b), "pilot"
        else:
            budget, kind = min(self.params.full_budget or b, b), "full"
        return budget, history.base_lr, f"budget {budget} ({kind}, B={b}); lr = base"
