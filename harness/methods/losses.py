"""Per-token loss terms and the ways a spec aggregates them into one scalar.

Per-token terms have shape [N, T'] (T' = T-1, aligned with `token_logprobs`); a mask [N, T']
marks completion tokens. Policy losses, aggregations and KL estimators are registered by the
names a spec uses (`MethodSpec.policy_loss`, `MethodSpec.loss_agg`, `KLConfig.estimator`), so
the step code only looks them up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.lazy import lazy_module
from harness.registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")  # imported on first use: reading a spec needs none

AggregateFn = Callable[["Tensor", "Tensor"], "Tensor"]
KLFn = Callable[["Tensor", "Tensor"], "Tensor"]
PolicyLossFn = Callable[["Tensor", "Tensor"], "Tensor"]  # (logp [N, T'], advantages [N]) -> [N, T']

POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
AGGREGATIONS: Registry[AggregateFn] = Registry("loss aggregation")
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")


# --------------------------------------------------------------------------- aggregation
@AGGREGATIONS.register("token_mean")
def token_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Sum over all completion tokens of the batch / their count (TRL "bnpo"; "dapo" with one
    micro-batch per optimizer step). per_token, mask: [N, T'] -> scalar. Long completions
    weigh more than short ones, token for token."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@AGGREGATIONS.register("seq_mean")
def seq_mean(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over sequences of each sequence's token mean (original GRPO, TRL "grpo").
    per_token, mask: [N, T'] -> scalar. A sequence with no completion token counts as 0."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@AGGREGATIONS.register("seq_sum")
def seq_sum(per_token: Tensor, mask: Tensor) -> Tensor:
    """Mean over sequences of each sequence's token sum (classic REINFORCE:
    -mean_i A_i * sum_t log pi(y_it)). per_token, mask: [N, T'] -> scalar."""
    return (per_token * mask).sum(-1).mean()


def aggregate(per_token: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Aggregate per-token values [N, T'] over completion tokens by a registered mode."""
    return AGGREGATIONS.get(mode)(per_token, mask)


# --------------------------------------------------------------------------- policy gradient
@POLICY_LOSSES.register(
    "reinforce", "-A * ratio per token, ratio = exp(logp - logp.detach()) (1 in value): "
    "REINFORCE's gradient, and TRL's GRPO loss with one update per batch.")
def pg_per_token(logp: Tensor, advantages: Tensor) -> Tensor:
    """Per-token policy-gradient loss -ratio * A with ratio = exp(logp - logp.detach()).

    logp: [N, T'], advantages: [N] (one per sequence) -> [N, T']. The ratio is 1 in value
    and its gradient is that of logp, so this is REINFORCE; it is the form TRL's GRPOTrainer
    uses with one update per batch (its clipping never binds at ratio 1), which makes the
    two agree numerically.
    """
    ratio = torch.exp(logp - logp.detach())
    return -ratio * advantages.to(logp.dtype).unsqueeze(-1)


# --------------------------------------------------------------------------- KL estimators
@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = logp - ref_logp per token ([N, T'] -> [N, T']); unbiased for KL(pi || ref) but
    signed. As a loss its expected gradient is zero on on-policy samples (E[grad log pi] = 0),
    so it regularises only through sampling noise; k3 is what TRL uses."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1 per token ([N, T'] -> [N, T']); >= 0 always,
    unbiased for KL(pi || ref) on samples from pi (Schulman's estimator; TRL's per_token_kl)."""
    d = ref_logp - logp
    # expm1(d) - d is exp(d) - 1 - d without the cancellation near d = 0; the clamp removes
    # the last-ulp negatives rounding can still leave (k3 is >= 0 by definition).
    return (torch.expm1(d) - d).clamp_min(0.0)


def kl_per_token(
    logp: Tensor, ref_logp: Tensor, estimator: str, ratio_correction: bool = True
) -> Tensor:
    """Per-token KL penalty term [N, T'] by a registered estimator.

    With `ratio_correction` the estimate is multiplied by ratio = exp(logp - logp.detach()):
    1 in value, but its gradient adds kl * grad logp, the score-function term that makes the
    gradient an unbiased estimate of grad KL(pi || ref) on samples from pi, for k1 as for k3
    (DeepSeek-V3.2; TRL's `use_bias_correction_kl`, on by default since TRL 1.x). Without it the
    estimate is differentiated as a plain loss (DeepSeekMath GRPO, TRL <= 0.2x): k3's gradient is
    then biased and k1's has zero expectation.
    """
    kl = KL_ESTIMATORS.get(estimator)(logp, ref_logp)
    if ratio_correction:
        kl = kl * torch.exp(logp - logp.detach())
    return kl
