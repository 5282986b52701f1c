"""Advantage estimators: rewards of a step -> one advantage per completion.

A method is a registered `Method`: its advantage estimator, a function
`(rewards: Tensor[P, G], spec: MethodSpec) -> Tensor[P, G]`, and its `Params` model, which
validates and fills `MethodSpec.params` (the estimator reads `spec.params[...]`). The
`@method(name, Params)` decorator registers an estimator in `METHODS` under the name a spec
uses. Row p holds the G completions sampled for prompt p (prompt-major, as the rollouts are
ordered). The trainer looks a method up by name and never branches on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.lazy import lazy_module
from harness.registry import Registry, first_sentence

if TYPE_CHECKING:
    from torch import Tensor

    from harness.spec.schema import MethodSpec

torch = lazy_module("torch")  # imported on first use: reading a spec needs none

AdvantageFn = Callable[["Tensor", "MethodSpec"], "Tensor"]
# Estimators whose statistics span the whole batch, not one prompt's group, say how to
# compute them over the valid samples only (`masked_advantages`); the others are applied
# group by group to the valid samples.
MaskedFn = Callable[["Tensor", "Tensor", "MethodSpec"], "Tensor"]


class MethodParams(BaseModel):
    """Base of each method's parameters (`MethodSpec.params`): unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Method:
    """A registered method: advantage estimator, parameters, and (for an estimator whose
    statistics span the whole batch) how to apply it to the valid samples only. Calling it
    is calling the estimator."""

    advantages: AdvantageFn
    Params: type[MethodParams] = MethodParams
    masked: MaskedFn | None = None
    description: str = ""
    # defaults for the other fields of `MethodSpec` (policy_loss, loss_agg, ...): a method
    # that is a recipe (dapo) brings them; a field the spec sets wins
    defaults: dict[str, Any] = field(default_factory=dict)

    def __call__(self, rewards: Tensor, spec: MethodSpec) -> Tensor:
        return self.advantages(rewards, spec)


METHODS: Registry[Method] = Registry("method")


def method(name: str, params: type[MethodParams] = MethodParams, *,
           masked: MaskedFn | None = None, defaults: dict[str, Any] | None = None
           ) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator: register an advantage estimator as method `name` with its `Params` model
    (description: the first sentence of its docstring) and its defaults for the spec's other
    method fields. Returns the function unchanged."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        METHODS.add(name, Method(fn, params, masked, first_sentence(fn.__doc__),
                                 dict(defaults or {})))
        return fn

    return deco


class ReinforceParams(MethodParams):
    baseline: Literal["none", "batch_mean"] = Field(
        "none", description="Subtract the batch mean reward (batch_mean) or not (none).")


class GRPOParams(MethodParams):
    eps: float = Field(1e-4, gt=0, description="Added to the group std.")


def _check(rewards: Tensor) -> Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must have shape [P, G], got {tuple(rewards.shape)}")
    return rewards.float()


def _reinforce_masked(rewards: Tensor, valid: Tensor, spec: MethodSpec) -> Tensor:
    r = _check(rewards)
    if spec.params["baseline"] == "batch_mean":
        return torch.where(valid, r - r[valid].mean(), torch.zeros_like(r))
    return torch.where(valid, r, torch.zeros_like(r))


@method("reinforce", ReinforceParams, masked=_reinforce_masked)
def reinforce(rewards: Tensor, spec: MethodSpec) -> Tensor:
    """Naive REINFORCE: advantage = reward.

    rewards: [P, G] (binary pass/fail in this harness) -> advantages [P, G].
    With `params.baseline == "batch_mean"` the mean reward of the whole batch (all P*G
    completions) is subtracted; with `"none"` the reward is used as is.
    """
    r = _check(rewards)
    if spec.params["baseline"] == "batch_mean":
        return r - r.mean()
    return r.clone()


def masked_advantages(rewards: Tensor, valid: Tensor, spec: MethodSpec) -> tuple[Tensor, Tensor]:
    """Advantages [P, G] when some samples have no reward (`valid` [P, G] False: the grader
    failed on them), and which samples take part in the update.

    Group statistics are computed over a group's valid samples only (the estimator applied
    to those, as a [1, g] group); a group left with fewer than 2 valid samples contributes
    nothing. Estimators without group statistics (a `Method.masked`: reinforce) use the valid
    samples of the whole batch, each on its own reward (with fewer than 2 of them, nothing).
    Returns (advantages, taking_part), zero where not taking part. With every sample valid
    this is exactly the estimator itself."""
    fn = METHODS.get(spec.name)
    r = _check(rewards)
    valid = valid.bool()
    if bool(valid.all()):
        return fn(r, spec), valid
    part = valid & (valid.sum(dim=1, keepdim=True) >= 2)
    if int(valid.sum()) < 2:
        return torch.zeros_like(r), torch.zeros_like(valid)
    if fn.masked is not None:
        return fn.masked(r, valid, spec), valid
    adv = torch.zeros_like(r)
    for p in range(r.size(0)):
        idx = part[p].nonzero().squeeze(1)
        if idx.numel():
            adv[p, idx] = fn(r[p, idx].unsqueeze(0), spec)[0]
    return adv, part


@method("grpo", GRPOParams)
def grpo(rewards: Tensor, spec: MethodSpec) -> Tensor:
    """GRPO: (r - group mean) / (group std + eps).

    rewards: [P, G] -> advantages [P, G]. The std is the *unbiased* (Bessel-corrected, divide by
    G-1) std of the prompt's G rewards, as TRL's GRPOTrainer computes it (`scale_rewards="group"`,
    `trl.trainer.utils.nanstd`); eps is `params.eps` (TRL hard-codes 1e-4, the spec default).
    A group whose rewards are all equal gets zero advantages. G = 1 has no defined std: the
    advantages are zero (r - mean = 0), as in TRL.
    """
    r = _check(rewards)
    centred = r - r.mean(dim=1, keepdim=True)
    if r.size(1) == 1:
        return torch.zeros_like(r)
    std = r.std(dim=1, unbiased=True, keepdim=True)
    return centred / (std + spec.params["eps"])


@method("rloo")
def rloo(rewards: Tensor, spec: MethodSpec) -> Tensor:
    """REINFORCE leave-one-out: r_i - mean of the other G-1 rewards of the same prompt.

    rewards: [P, G] -> advantages [P, G]; equals G/(G-1) * (r_i - group mean). With G = 1 there
    is no other completion to form a baseline from: the advantages are zero (no update signal)
    rather than the raw reward, so a G=1 rloo run never silently turns into naive REINFORCE.
    """
    del spec
    r = _check(rewards)
    g = r.size(1)
    if g == 1:
        return torch.zeros_like(r)
    others_mean = (r.sum(dim=1, keepdim=True) - r) / (g - 1)
    return r - others_mean


@method("dr_grpo", defaults={"policy_loss": "clip", "loss_agg": "token_sum_norm"})
def dr_grpo(rewards: Tensor, spec: MethodSpec) -> Tensor:
    """Dr. GRPO: r - group mean, with no division by the group's std (Liu et al. 2025,
    "Understanding R1-Zero-Like Training", arXiv 2503.20783).

    rewards: [P, G] -> advantages [P, G]. The std normalisation is what biases GRPO towards
    questions that are too easy or too hard; the paper also drops the per-sequence length
    normaliser, which is the `token_sum_norm` aggregation (sum over tokens / (N x
    max_new_tokens)) this method defaults to, with the clipped loss (TRL `loss_type: dr_grpo`,
    `scale_rewards: none`).
    """
    del spec
    r = _check(rewards)
    return r - r.mean(dim=1, keepdim=True)


@method("dapo", GRPOParams, defaults={
    "policy_loss": "clip", "policy_loss_params": {"eps_low": 0.2, "eps_high": 0.28},
    "loss_agg": "token_mean", "dynamic_sampling": {"max_rounds": 3}})
def dapo(rewards: Tensor, spec: MethodSpec) -> Tensor:
    """DAPO: GRPO's group-normalised advantages with the paper's update (Yu et al. 2025,
    arXiv 2503.14476).

    rewards: [P, G] -> advantages [P, G], as `grpo`. The method's defaults are the rest of
    DAPO: the clipped loss with clip-higher (eps_low 0.2, eps_high 0.28), token-level
    normalisation (`token_mean`), and dynamic sampling (groups whose rewards are all equal
    are dropped and more prompts are sampled to refill the batch). The soft overlong penalty
    is the `overlong` option (off unless set). TRL `loss_type: dapo`.
    """
    return grpo(rewards, spec)


@method("gspo", GRPOParams, defaults={"policy_loss": "gspo", "loss_agg": "seq_mean"})
def gspo(rewards: Tensor, spec: MethodSpec) -> Tensor:
    """GSPO: GRPO's group-normalised advantages with a sequence-level importance ratio and
    clipping (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv 2507.18071).

    rewards: [P, G] -> advantages [P, G], as `grpo`; the defaults are the `gspo` policy loss
    (ratio exp(mean token log-ratio), clipped to [1 - 3e-4, 1 + 4e-4]) and `seq_mean`. TRL
    `importance_sampling_level: sequence`.
    """
    return grpo(rewards, spec)
