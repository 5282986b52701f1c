"""Per-token loss terms and the ways a spec aggregates them into one scalar.

Per-token terms have shape [N, T'] (T' = T-1, aligned with `token_logprobs`); a mask [N, T']
marks completion tokens. Policy losses, aggregations and KL estimators are registered by the
names a spec uses (`MethodSpec.policy_loss`, `MethodSpec.loss_agg`, `KLConfig.estimator`), so
the step code only looks them up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from harness.lazy import lazy_module
from harness.registry import Registry, first_sentence

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")  # imported on first use: reading a spec needs none

# (per_token [N, T'], mask [N, T'], max_tokens: the completion-length cap) -> scalar
AggregateFn = Callable[["Tensor", "Tensor", int], "Tensor"]
KLFn = Callable[["Tensor", "Tensor"], "Tensor"]

AGGREGATIONS: Registry[AggregateFn] = Registry("loss aggregation")
KL_ESTIMATORS: Registry[KLFn] = Registry("KL estimator")


# --------------------------------------------------------------------------- aggregation
@AGGREGATIONS.register("token_mean")
def token_mean(per_token: Tensor, mask: Tensor, max_tokens: int = 0) -> Tensor:
    """Sum over all completion tokens of the batch / their count (TRL "bnpo"; "dapo" with one
    micro-batch per optimizer step). per_token, mask: [N, T'] -> scalar. Long completions
    weigh more than short ones, token for token."""
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


@AGGREGATIONS.register("seq_mean")
def seq_mean(per_token: Tensor, mask: Tensor, max_tokens: int = 0) -> Tensor:
    """Mean over sequences of each sequence's token mean (original GRPO, TRL "grpo").
    per_token, mask: [N, T'] -> scalar. A sequence with no completion token counts as 0."""
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@AGGREGATIONS.register("seq_sum")
def seq_sum(per_token: Tensor, mask: Tensor, max_tokens: int = 0) -> Tensor:
    """Mean over sequences of each sequence's token sum (classic REINFORCE:
    -mean_i A_i * sum_t log pi(y_it)). per_token, mask: [N, T'] -> scalar."""
    return (per_token * mask).sum(-1).mean()


@AGGREGATIONS.register("token_sum_norm")
def token_sum_norm(per_token: Tensor, mask: Tensor, max_tokens: int = 0) -> Tensor:
    """Sum over all completion tokens / (N x max_tokens), a constant normaliser (Dr. GRPO,
    arXiv 2503.20783: no per-sequence length normalisation, so a long wrong answer is not
    penalised less per token than a short one; TRL "dr_grpo", verl
    "seq-mean-token-sum-norm"). max_tokens is the spec's `rollout.max_new_tokens`."""
    if max_tokens <= 0:
        raise ValueError("token_sum_norm needs max_tokens (rollout.max_new_tokens) > 0")
    return (per_token * mask).sum() / (per_token.size(0) * max_tokens)


def aggregate(per_token: Tensor, mask: Tensor, mode: str, max_tokens: int = 0) -> Tensor:
    """Aggregate per-token values [N, T'] over completion tokens by a registered mode
    (`max_tokens`: the completion-length cap, for aggregations with a constant normaliser)."""
    return AGGREGATIONS.get(mode)(per_token, mask, max_tokens)


# --------------------------------------------------------------------------- policy gradient
@dataclass(frozen=True)
class PolicyInputs:
    """What a policy loss sees of one backward pass (N sequences, T' = T-1 positions).

    logp: [N, T'] log-probabilities under the policy being trained (with gradient);
    old_logp: [N, T'] under the policy that sampled the batch (no gradient): `logp.detach()`
        on the first pass over a batch, the recorded values on later inner iterations;
    advantages: [N], one per sequence; mask: [N, T'] float, 1 on completion tokens;
    seed: seeds the loss's own random choices (Clip-Cov's token draw), so a step is
        reproducible and a resumed cell draws the same tokens."""

    logp: Tensor
    old_logp: Tensor
    advantages: Tensor
    mask: Tensor
    seed: int = 0

    @property
    def adv(self) -> Tensor:
        """The advantages as [N, 1], in logp's dtype (broadcast over tokens)."""
        return self.advantages.to(self.logp.dtype).unsqueeze(-1)


@dataclass(frozen=True)
class PolicyTerms:
    """A policy loss's per-token values [N, T'] (aggregated by the spec's `loss_agg`) and
    boolean per-token flags [N, T'] reported as their share of the completion tokens (e.g.
    `clip_low`, `clip_high`: where clipping took the gradient away)."""

    per_token: Tensor
    flags: dict[str, Tensor] = field(default_factory=dict)


class PolicyLossParams(BaseModel):
    """Base of each policy loss's parameters (`MethodSpec.policy_loss_params`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


PolicyLossFn = Callable[[PolicyInputs, dict[str, Any]], PolicyTerms]


@dataclass(frozen=True)
class PolicyLoss:
    """A registered policy loss: its function `(inputs, params) -> PolicyTerms`, its `Params`
    model, and whether it can use an importance ratio against the sampling policy (which
    `optim.mu > 1` or `optim.mini_batches > 1` need)."""

    fn: PolicyLossFn
    Params: type[PolicyLossParams] = PolicyLossParams
    description: str = ""

    def __call__(self, inputs: PolicyInputs, params: dict[str, Any]) -> PolicyTerms:
        return self.fn(inputs, params)


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def policy_loss(name: str, params: type[PolicyLossParams] = PolicyLossParams
                ) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: register `fn(inputs, params) -> PolicyTerms` as policy loss `name` with its
    `Params` model (description: the first sentence of its docstring)."""

    def deco(fn: PolicyLossFn) -> PolicyLossFn:
        POLICY_LOSSES.add(name, PolicyLoss(fn, params, first_sentence(fn.__doc__)))
        return fn

    return deco


def pg_per_token(logp: Tensor, advantages: Tensor, old_logp: Tensor | None = None) -> Tensor:
    """Per-token policy-gradient loss -ratio * A with ratio = exp(logp - old_logp).

    logp: [N, T'], advantages: [N] (one per sequence) -> [N, T']. With `old_logp` None (or
    `logp.detach()`, the first pass over a batch) the ratio is 1 in value and its gradient is
    that of logp, so this is REINFORCE; it is the form TRL's GRPOTrainer uses with one update
    per batch (its clipping never binds at ratio 1), which makes the two agree numerically.
    """
    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    return -ratio * advantages.to(logp.dtype).unsqueeze(-1)


@policy_loss("reinforce")
def _reinforce(inp: PolicyInputs, params: dict[str, Any]) -> PolicyTerms:
    """Unclipped policy gradient: -A * exp(logp - old_logp) per token (REINFORCE on the first
    pass over a batch, where the ratio is 1 in value; importance-weighted on later passes)."""
    return PolicyTerms(pg_per_token(inp.logp, inp.advantages, inp.old_logp))


class ClipParams(PolicyLossParams):
    eps_low: float = Field(0.2, gt=0, lt=1, description="Lower clip: ratio >= 1 - eps_low.")
    eps_high: float | None = Field(
        None, gt=0, description="Upper clip: ratio <= 1 + eps_high (DAPO's clip-higher: 0.28); "
        "null: eps_low.")
    delta: float | None = Field(
        None, gt=1, description="Two-sided clipping: the unclipped ratio is also capped at "
        "delta (TRL `delta`); null: off.")


def _clipped(inp: PolicyInputs, coef: Tensor, params: dict[str, Any]) -> PolicyTerms:
    """-min(coef * A, clip(coef, 1 - eps_low, 1 + eps_high) * A), coef [N, T'] or [N, 1], as
    TRL's GRPOTrainer computes it, with its clip flags."""
    low = params["eps_low"]
    high = low if params["eps_high"] is None else params["eps_high"]
    adv = inp.adv
    clipped = torch.clamp(coef, 1 - low, 1 + high)
    delta = params.get("delta")
    unclipped = coef if delta is None else torch.clamp(coef, max=delta)
    per_token = -torch.min(unclipped * adv, clipped * adv)
    shape = inp.logp.shape
    flags = {"clip_low": ((coef < 1 - low) & (adv < 0)).expand(shape),
             "clip_high": ((coef > 1 + high) & (adv > 0)).expand(shape)}
    return PolicyTerms(per_token.expand(shape), flags)


@policy_loss("clip", ClipParams)
def _clip(inp: PolicyInputs, params: dict[str, Any]) -> PolicyTerms:
    """PPO's clipped surrogate per token, -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) with
    r = exp(logp - old_logp) (Schulman et al. 2017, arXiv 1707.06347; separate eps_high is
    DAPO's clip-higher, arXiv 2503.14476; TRL `loss_type` grpo/bnpo/dr_grpo/dapo with
    `epsilon`/`epsilon_high`, verl `clip_ratio_low`/`clip_ratio_high`)."""
    return _clipped(inp, torch.exp(inp.logp - inp.old_logp), params)


class GSPOParams(ClipParams):
    eps_low: float = Field(3e-4, gt=0, lt=1, description="Lower clip of the sequence ratio.")
    eps_high: float | None = Field(4e-4, gt=0, description="Upper clip of the sequence ratio.")


@policy_loss("gspo", GSPOParams)
def _gspo(inp: PolicyInputs, params: dict[str, Any]) -> PolicyTerms:
    """GSPO's sequence-level ratio and clipping: s_i = exp(mean over i's tokens of (logp -
    old_logp)), loss -min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i) on every token of
    sequence i (Zheng et al. 2025, arXiv 2507.18071; TRL `importance_sampling_level:
    sequence`, verl `loss_mode: gspo`). Use with `loss_agg: seq_mean`, as the paper does."""
    log_ratio = (inp.logp - inp.old_logp) * inp.mask
    seq = (log_ratio.sum(-1) / inp.mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    return _clipped(inp, torch.exp(seq), params)


class ClipCovParams(PolicyLossParams):
    eps_low: float = Field(0.2, gt=0, lt=1, description="PPO lower clip.")
    eps_high: float | None = Field(None, gt=0, description="PPO upper clip; null: eps_low.")
    ratio: float = Field(2e-4, gt=0, le=1, description="Share of the tokens whose gradient is "
                         "cut (verl `clip_cov_ratio`).")
    cov_lb: float = Field(1.0, description="Tokens are drawn from those with covariance in "
                          "(cov_lb, cov_ub) (verl `clip_cov_lb`).")
    cov_ub: float = Field(5.0, description="Upper end of that band (verl `clip_cov_ub`).")


def _covariance(inp: PolicyInputs) -> Tensor:
    """Per-token centred product (A - mean A)(logp - mean logp) over the completion tokens
    [N, T'], no gradient: the token's share of Cov(logp, A), which drives entropy down
    (Cui et al. 2025, arXiv 2505.22617)."""
    m = inp.mask
    n = m.sum().clamp(min=1.0)
    adv = inp.adv.detach().expand_as(inp.logp)
    logp = inp.logp.detach()
    return (adv - (adv * m).sum() / n) * (logp - (logp * m).sum() / n)


@policy_loss("clip_cov", ClipCovParams)
def _clip_cov(inp: PolicyInputs, params: dict[str, Any]) -> PolicyTerms:
    """Clip-Cov: the PPO clipped surrogate, with the gradient cut on a random `ratio` share of
    the tokens whose log-prob/advantage covariance lies in (cov_lb, cov_ub) and that clipping
    did not already cut (Cui et al. 2025, arXiv 2505.22617; verl `loss_mode: clip_cov`).
    Tokens are drawn over the tokens of one backward pass, seeded per step."""
    terms = _clip(inp, params)
    cov = _covariance(inp)
    clipped = terms.flags["clip_low"] | terms.flags["clip_high"]
    band = (cov > params["cov_lb"]) & (cov < params["cov_ub"]) & (inp.mask > 0) & ~clipped
    idx = band.reshape(-1).nonzero().squeeze(1)
    n_cut = max(int(params["ratio"] * float(inp.mask.sum())), 1)
    cut = torch.zeros(band.numel(), dtype=torch.bool, device=band.device)
    if idx.numel():
        g = torch.Generator(device="cpu").manual_seed(inp.seed)
        chosen = idx[torch.randperm(idx.numel(), generator=g)[:n_cut].to(idx.device)]
        cut[chosen] = True
    cut = cut.reshape(band.shape)
    return PolicyTerms(terms.per_token * (~cut).to(terms.per_token.dtype),
                       {**terms.flags, "cov_selected": cut})


class KLCovParams(PolicyLossParams):
    ratio: float = Field(2e-4, gt=0, le=1, description="Share of the tokens with the largest "
                         "covariance that get the KL penalty (verl `kl_cov_ratio`).")
    kl_coef: float = Field(1.0, ge=0, description="Weight of |logp - old_logp| on them (verl "
                           "`ppo_kl_coef`).")


@policy_loss("kl_cov", KLCovParams)
def _kl_cov(inp: PolicyInputs, params: dict[str, Any]) -> PolicyTerms:
    """KL-Cov: the unclipped surrogate -A r, plus kl_coef * |logp - old_logp| on the `ratio`
    share of the tokens with the largest log-prob/advantage covariance (Cui et al. 2025,
    arXiv 2505.22617; verl `loss_mode: kl_cov`), chosen over the tokens of one backward
    pass."""
    log_ratio = inp.logp - inp.old_logp
    per_token = -torch.exp(log_ratio) * inp.adv
    cov = _covariance(inp)
    valid = inp.mask.reshape(-1) > 0
    idx = valid.nonzero().squeeze(1)
    sel = torch.zeros(valid.numel(), dtype=torch.bool, device=valid.device)
    if idx.numel():
        k = max(1, int(idx.numel() * params["ratio"]))
        top = torch.topk(cov.reshape(-1)[idx], k, largest=True).indices
        sel[idx[top]] = True
    sel = sel.reshape(inp.mask.shape)
    penalty = params["kl_coef"] * log_ratio.abs()
    return PolicyTerms(torch.where(sel, per_token + penalty, per_token),
                       {"cov_selected": sel})


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
