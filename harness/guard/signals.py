"""Early-warning signals of a collapse, each a registered function over a campaign's records.

A *record* is one step of a campaign as the trace holds it (`type: step`; step 0 first) or as
`harness.guard.stream` builds it from another trainer's logged metrics. The fields a signal
reads (each skipped where it is missing or not finite):

| signal | fires at step t when | fields |
| --- | --- | --- |
| `eval_drop` | P(pass@1_t < pass@1_peak - drop_delta) > drop_confidence, Beta posteriors | eval_pass1, eval_samples |
| `entropy_level` | entropy_t < entropy_frac x entropy at the campaign's start | entropy |
| `entropy_slope` | the least-squares slope of entropy over the last `slope_window` steps, relative to the start value, < -entropy_slope per step | entropy |
| `kl_jump` | kl_to_ref_t - kl_to_ref at the previous step > kl_jump nats | kl_to_ref |
| `zero_var` | the share of prompts whose rollouts all got the same reward > zero_var | zero_var_groups |
| `length_drift` | abs(completion_len_t / completion_len at the start - 1) > length_drift | completion_len |
| `truncated` | share of train completions cut at max_new_tokens > truncated | verdicts.train.truncated / grading.train_samples, or truncated_share |
| `reward_gap` | train_reward_t - eval_pass1_t > reward_gap (the policy does better on what it trains on than on held-out problems) | train_reward, eval_pass1 |
| `covariance` | Cov(token log-prob, advantage) of the update > cov_max (the entropy-dynamics signal of arXiv 2505.22617: a positive covariance drives entropy down) | logp_adv_cov |

Each signal has one or two parameters in `GuardParams`; a signal whose main parameter is None
is off. The guard fires at the first step (>= min_step) where any enabled signal fires; with
`min_rise`, the early warnings (all but `eval_drop`) only once eval pass@1 has risen that much
above the campaign's start (`armed`).

Our reading: the signals come from the literature and from what peers log (entropy and KL in
verl, TRL and OpenRLHF; the zero-variance share of DAPO's dynamic sampling; truncation and
length from TRL's `completions/*`); their thresholds are tuned on recorded naive traces with
`harness guard tune` (docs/guard.md), not taken from any paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from harness.lazy import lazy_module
from harness.registry import Registry

stats = lazy_module("scipy.stats")  # seconds to import; `harness validate` needs none

Records = Sequence[Mapping[str, Any]]
# (records, t, params) -> the reason it fires at position t, or None
Signal = Callable[[Records, int, Any], "str | None"]
SIGNALS: Registry[Signal] = Registry("guard signal")
_GRID = np.linspace(0.0, 1.0, 4001)


def finite(record: Mapping[str, Any], key: str) -> float | None:
    """record[key] as a float, None when missing or not finite."""
    v = record.get(key)
    if v is None or isinstance(v, bool):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _start(records: Records, t: int, key: str) -> float | None:
    """The first finite value of `key` before position t (the campaign's start value)."""
    return next((v for r in records[:t] if (v := finite(r, key)) is not None), None)


def truncated_share(record: Mapping[str, Any]) -> float | None:
    """Share of the step's train completions cut at max_new_tokens: `truncated_share` when the
    record has it (another trainer's stream), else from the trace's verdict counts."""
    if (v := finite(record, "truncated_share")) is not None:
        return v
    kinds = (record.get("verdicts") or {}).get("train") or {}
    n = (record.get("grading") or {}).get("train_samples")
    if not n or "truncated" not in kinds:
        return None
    return float(kinds["truncated"]) / float(n)


def _posterior(record: Mapping[str, Any], p: Any) -> tuple[float, float]:
    n = int(record.get("eval_samples") or p.eval_samples)
    x = min(max(round(float(record["eval_pass1"]) * n), 0), n)
    return p.prior_a + x, p.prior_b + n - x


def prob_drop(now: Mapping[str, Any], peak: Mapping[str, Any], p: Any) -> float:
    """P(p_now < p_peak - drop_delta) under independent Beta posteriors of the two rates:
    the expectation over p_peak of F_now(p_peak - delta), on a fixed 4001-point grid."""
    a_now, b_now = _posterior(now, p)
    a_pk, b_pk = _posterior(peak, p)
    w = stats.beta.pdf(_GRID, a_pk, b_pk)
    w = w / w.sum()
    return float(np.sum(w * stats.beta.cdf(_GRID - p.drop_delta, a_now, b_now)))


@SIGNALS.register("eval_drop")
def eval_drop(records: Records, t: int, p: Any) -> str | None:
    """A credible drop of eval pass@1 below the campaign's running peak (steps 0..t-1)."""
    if p.drop_confidence is None or t == 0 or finite(records[t], "eval_pass1") is None:
        return None
    curve = [finite(r, "eval_pass1") for r in records[:t]]
    scored = [(v, i) for i, v in enumerate(curve) if v is not None]
    if not scored:
        return None
    best = max(v for v, _ in scored)
    pk = next(i for v, i in scored if v == best)
    prob = prob_drop(records[t], records[pk], p)
    if prob <= p.drop_confidence:
        return None
    return (f"eval drop: P(pass@1 < peak {best:.3f} - {p.drop_delta}) = {prob:.3f} > "
            f"{p.drop_confidence} (now {float(records[t]['eval_pass1']):.3f})")


@SIGNALS.register("entropy_level")
def entropy_level(records: Records, t: int, p: Any) -> str | None:
    """Entropy fallen below a fraction of its campaign-start value."""
    if p.entropy_frac is None or (now := finite(records[t], "entropy")) is None:
        return None
    start = _start(records, t, "entropy")
    if start is None or not now < p.entropy_frac * start:
        return None
    return f"entropy collapse: {now:.4g} < {p.entropy_frac} x start {start:.4g}"


@SIGNALS.register("entropy_slope")
def entropy_slope(records: Records, t: int, p: Any) -> str | None:
    """Entropy falling fast: the slope of its last `slope_window` values, per step and relative
    to the campaign-start value, below -entropy_slope."""
    if p.entropy_slope is None or finite(records[t], "entropy") is None:
        return None
    start = _start(records, t, "entropy")
    pts = [(float(r["step"]), v) for r in records[:t + 1] if (v := finite(r, "entropy"))
           is not None][-p.slope_window:]
    if start is None or start <= 0 or len(pts) < min(3, p.slope_window):
        return None
    x = np.array([a for a, _ in pts])
    y = np.array([b for _, b in pts]) / start
    slope = float(np.polyfit(x, y, 1)[0])
    if not slope < -p.entropy_slope:
        return None
    return (f"entropy falling: {slope:+.3f} x start per step over {len(pts)} steps "
            f"(< -{p.entropy_slope})")


@SIGNALS.register("kl_jump")
def kl_jump(records: Records, t: int, p: Any) -> str | None:
    """kl_to_ref rising by more than kl_jump nats in one step."""
    if p.kl_jump is None or (now := finite(records[t], "kl_to_ref")) is None:
        return None
    prev = next((v for r in reversed(records[:t]) if (v := finite(r, "kl_to_ref")) is not None),
                None)
    if prev is None or not now - prev > p.kl_jump:
        return None
    return f"kl jump: kl_to_ref {prev:.4g} -> {now:.4g} (> +{p.kl_jump})"


@SIGNALS.register("zero_var")
def zero_var(records: Records, t: int, p: Any) -> str | None:
    """Most groups carry no learning signal: their rollouts all got the same reward."""
    if p.zero_var is None or (now := finite(records[t], "zero_var_groups")) is None:
        return None
    if not now > p.zero_var:
        return None
    return f"zero-variance groups: {now:.3f} > {p.zero_var}"


@SIGNALS.register("length_drift")
def length_drift(records: Records, t: int, p: Any) -> str | None:
    """Completion length drifted away from its campaign-start value."""
    if p.length_drift is None or (now := finite(records[t], "completion_len")) is None:
        return None
    start = _start(records, t, "completion_len")
    if start is None or start <= 0 or not abs(now / start - 1) > p.length_drift:
        return None
    return f"length drift: completion length {start:.4g} -> {now:.4g} (> {p.length_drift:.0%})"


@SIGNALS.register("truncated")
def truncated(records: Records, t: int, p: Any) -> str | None:
    """Many completions cut at max_new_tokens (the policy stops ending its programs)."""
    if p.truncated is None or (now := truncated_share(records[t])) is None:
        return None
    if not now > p.truncated:
        return None
    return f"truncated completions: {now:.3f} > {p.truncated}"


@SIGNALS.register("reward_gap")
def reward_gap(records: Records, t: int, p: Any) -> str | None:
    """Train reward running ahead of eval pass@1."""
    if p.reward_gap is None:
        return None
    tr, ev = finite(records[t], "train_reward"), finite(records[t], "eval_pass1")
    if tr is None or ev is None or not tr - ev > p.reward_gap:
        return None
    return f"train/eval divergence: train reward {tr:.3f} - eval {ev:.3f} > {p.reward_gap}"


@SIGNALS.register("covariance")
def covariance(records: Records, t: int, p: Any) -> str | None:
    """The update's Cov(token log-prob, advantage) above cov_max: the policy is being pushed
    hardest towards what it is already sure of, which lowers its entropy (Cui et al. 2025,
    arXiv 2505.22617, eq. 2: the entropy change is about -lr x this covariance)."""
    if p.cov_max is None or (now := finite(records[t], "logp_adv_cov")) is None:
        return None
    if not now > p.cov_max:
        return None
    return f"log-prob/advantage covariance: {now:.4g} > {p.cov_max}"


# signals that fire whether or not the guard is armed: a credible fall of eval pass@1 itself
# (below the start when nothing rose) is worth stopping on, while the early warnings only
# mean something once there is a gain to protect
UNGATED = ("eval_drop",)


def armed(records: Records, t: int, p: Any) -> bool:
    """Whether the early-warning signals (all but `UNGATED`) may fire at position t: always
    with `min_rise` None; else once eval pass@1 has risen at least `min_rise` above its
    campaign-start value at some step up to t (a warning before any gain would stop a
    campaign that has nothing to lose yet). A stream without any eval value is always armed
    (only its training-side signals can fire)."""
    if p.min_rise is None:
        return True
    curve = [v for r in records[:t + 1] if (v := finite(r, "eval_pass1")) is not None]
    return not curve or max(curve) - curve[0] >= p.min_rise
