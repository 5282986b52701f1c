"""The method section of a spec: `MethodSpec` and its options (KL, EWC, entropy control,
dynamic sampling, overlong penalty, resets). `harness.spec.schema` re-exports them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer, model_validator

import harness.spec.limits as limits
from harness.spec.base import (
    KLEstimatorName,
    Label,
    LossAggName,
    MethodName,
    NonNegInt,
    PolicyLossName,
    PositiveInt,
    _at_most,
    _params_by_name,
    _Strict,
    registry,
    resolve_params,
)


# --------------------------------------------------------------------------- methods
class KLConfig(_Strict):
    """KL penalty beta * KL(pi || pi_ref) added to the loss."""

    beta: float = Field(0.05, ge=0, description="Penalty weight.")
    estimator: KLEstimatorName = Field(
        "k3", description="Per-token KL estimator (registered: `harness components`).")
    reference: Literal["chain_start", "campaign_start"] = Field(
        "chain_start", description="Policy the KL is measured against.")
    ratio_correction: bool = Field(
        True, description="Multiply the per-token KL by the importance ratio (TRL's "
        "use_bias_correction_kl): an unbiased gradient of KL(pi || pi_ref). False = classic "
        "DeepSeekMath GRPO.")


class EWCConfig(_Strict):
    """Elastic weight consolidation: lambda/2 * sum F_i (theta_i - theta*_i)^2 with a diagonal
    Fisher F estimated at campaign start."""

    lam: float = Field(100.0, ge=0, description="Penalty weight lambda.")
    fisher_batches: PositiveInt = Field(
        4, le=limits.MAX_FISHER_BATCHES, description="Rollout batches used to estimate F."
        + _at_most(limits.MAX_FISHER_BATCHES))


class EntropySpec(_Strict):
    """Entropy control: a bonus -coef * H on the mean per-token entropy of the tokens the
    policy loss acts on (fixed, or adaptive as in Skywork-OR1, arXiv 2505.22312, TRL
    `use_adaptive_entropy`: raised by coef_delta after a step whose entropy was at or below
    `target`, lowered otherwise, and applied only while entropy is at or below the target),
    and gradient on the highest-entropy tokens only (`top_quantile`, arXiv 2506.01939, TRL
    `top_entropy_quantile`)."""

    coef: float = Field(0.0, ge=0, description="Entropy bonus coefficient (initial one when "
                        "adaptive); 0 and not adaptive: no bonus.")
    adaptive: bool = Field(False, description="Adapt coef each step towards `target`.")
    target: float = Field(0.2, ge=0, description="Adaptive: entropy (nats per token) below "
                          "which the bonus applies and grows.")
    coef_delta: float = Field(0.005, ge=0, description="Adaptive: change of coef per step.")
    coef_min: float = Field(0.0, ge=0, description="Adaptive: smallest coef.")
    coef_max: float = Field(1.0, ge=0, description="Adaptive: largest coef.")
    top_quantile: float = Field(
        1.0, gt=0, le=1, description="Policy gradient on the top share of completion tokens "
        "by entropy only (0.2 in the paper); 1: every token.")


class DynamicSamplingSpec(_Strict):
    """DAPO's dynamic sampling (arXiv 2503.14476): groups whose rewards are all equal (all
    passed or all failed: zero advantage under group normalisation) are dropped, and more
    prompts are sampled to refill the batch, up to `max_rounds` extra rounds of
    `prompts_per_step` prompts; the step trains on the groups kept (at most prompts_per_step;
    fewer when the rounds run out, and no update at all when none is kept)."""

    max_rounds: NonNegInt = Field(3, description="Extra sampling rounds to refill the batch.")


class OverlongSpec(_Strict):
    """DAPO's soft overlong punishment: a completion longer than max_new_tokens - buffer gets
    factor * (max_new_tokens - buffer - length) / buffer added to its reward (down to -factor
    at the cap)."""

    buffer: PositiveInt = Field(description="Tokens before max_new_tokens where it ramps.")
    factor: float = Field(1.0, ge=0, description="Penalty at the length cap.")


class ResetSpec(_Strict):
    """ProRL's resets (arXiv 2505.24864): every `every` steps of a campaign the KL reference
    becomes the current policy and/or the optimizer starts afresh."""

    every: PositiveInt = Field(description="Steps between resets.")
    reference: bool = Field(True, description="Reset the KL reference to the current policy.")
    optimizer: bool = Field(True, description="Reset the optimizer's state (a fresh AdamW).")


# Method options that were flat keys of a method before they became its params.
MOVED_TO_PARAMS = ("baseline", "eps")

# Fields added to MethodSpec after specs were registered: left out of the serialised spec
# (and so of every hash and cell id) while they hold their default, so adding an option
# never changes the identity of a spec that does not use it.
_OMIT_WHEN_DEFAULT = ("policy_loss_params", "mu", "mini_batches", "entropy",
                      "dynamic_sampling", "overlong", "resets", "placebo")


class MethodSpec(_Strict):
    """How a step turns rewards into an update (docs/design.md section 2, Methods).

    `params` are the method's own parameters (its `Params` model: unknown keys are errors,
    defaults are filled in when the spec is validated). A method may bring defaults for the
    other fields (dapo: the clipped loss with clip-higher, token_mean, dynamic sampling); a
    field the spec sets wins."""

    name: MethodName = Field(description="Registered method (`harness components`).")
    label: Label | None = Field(None, description="Name in cell ids; default: the name.")
    params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=_params_by_name("method"),
        description="Method parameters, checked and completed by the method's Params model.")
    policy_loss: PolicyLossName = Field(
        "reinforce", description="Per-token policy-gradient term (registered policy loss); "
        "reinforce: -A * exp(logp - old_logp), 1 in value on a batch's first pass; clip: PPO's "
        "clipped surrogate; gspo: sequence-level ratio; clip_cov, kl_cov: covariance-based.")
    policy_loss_params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=_params_by_name("policy_loss"),
        description="Policy-loss parameters, checked and completed by the loss's Params model.")
    loss_agg: LossAggName = Field(
        "seq_sum",
        description="token_mean: sum over all completion tokens / their count; seq_mean: mean "
        "over sequences of each sequence's token mean; seq_sum: mean over sequences of each "
        "sequence's summed log-prob (the classic REINFORCE estimator); token_sum_norm: sum "
        "over all completion tokens / (N x max_new_tokens) (Dr. GRPO).")
    mu: PositiveInt = Field(
        1, description="Inner iterations over each rollout batch (TRL num_iterations, verl "
        "ppo_epochs), each one optimizer step per mini-batch; the importance ratio is taken "
        "against the log-probs of the batch's first pass. 1: on-policy, one step a batch.")
    mini_batches: PositiveInt = Field(
        1, description="Mini-batches (of whole prompt groups) per inner iteration, each its "
        "own optimizer step; must divide rollout.prompts_per_step.")
    kl: KLConfig | None = Field(None, description="Optional KL regulariser.")
    ewc: EWCConfig | None = Field(None, description="Optional EWC regulariser.")
    entropy: EntropySpec | None = Field(None, description="Optional entropy control.")
    dynamic_sampling: DynamicSamplingSpec | None = Field(
        None, description="Optional DAPO dynamic sampling (drop all-equal groups, refill).")
    overlong: OverlongSpec | None = Field(
        None, description="Optional DAPO soft overlong penalty on the reward.")
    resets: ResetSpec | None = Field(None, description="Optional ProRL reference/optimizer "
                                     "resets within a campaign.")
    placebo: bool = Field(
        False, description="Train on a random permutation of the step's rewards over its "
        "samples (the same mean, no information): the spurious-reward control of arXiv "
        "2506.10947. Eval is graded as always.")

    @model_validator(mode="before")
    @classmethod
    def _moved_to_params(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in MOVED_TO_PARAMS:
                if key in data:
                    raise ValueError(f"method.{key} moved to method.params.{key} (write "
                                     f"`params: {{{key}: {data[key]}}}`)")
            name = data.get("name")
            if isinstance(name, str) and name in registry("method"):
                defaults = dict(registry("method").get(name).defaults)
                if "policy_loss" in data and data["policy_loss"] != defaults.get("policy_loss"):
                    defaults.pop("policy_loss_params", None)  # they belong to another loss
                data = {**defaults, **data}
        return data

    @model_validator(mode="after")
    def _resolve_params(self) -> MethodSpec:
        """Check params against the method's and the policy loss's own schemas and fill their
        defaults."""
        params_cls = registry("method").get(self.name).Params
        object.__setattr__(self, "params",
                           resolve_params("method", self.name, params_cls, self.params))
        loss_cls = registry("policy_loss").get(self.policy_loss).Params
        object.__setattr__(self, "policy_loss_params",
                           resolve_params("policy_loss", self.policy_loss, loss_cls,
                                          self.policy_loss_params, "policy_loss_params"))
        return self

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in _OMIT_WHEN_DEFAULT:
            default = type(self).model_fields[key].get_default(call_default_factory=True)
            if key in data and getattr(self, key) == default:
                del data[key]
        return data

    @property
    def arm(self) -> str:
        return self.label or self.name

    @property
    def inner_steps(self) -> int:
        """Optimizer steps per rollout batch (mu x mini_batches)."""
        return self.mu * self.mini_batches



    def resolved(self) -> dict[str, Any]:
        """Every field, defaults included (the serialised spec leaves the newer ones out while
        they hold their default), and the arm's name: what `harness plan --json` shows."""
        data = self.model_dump(mode="json")
        for key in _OMIT_WHEN_DEFAULT:
            value = getattr(self, key)
            data[key] = value.model_dump(mode="json") if isinstance(value, _Strict) else value
        return {"arm": self.arm, **data}

    def describe(self) -> str:
        """One line with everything the method resolved to: its params and the policy loss's
        (defaults filled in), the aggregation, inner steps and every option that is on."""

        def kv(d: dict[str, Any]) -> str:
            return ", ".join(f"{k}={v}" for k, v in d.items())

        parts = [f"{self.arm}: {self.name}" + (f"({kv(self.params)})" if self.params else ""),
                 f"loss {self.policy_loss}" + (f"({kv(self.policy_loss_params)})"
                                               if self.policy_loss_params else ""),
                 f"agg {self.loss_agg}"]
        if self.inner_steps > 1:
            parts.append(f"mu {self.mu} x mini_batches {self.mini_batches}")
        for name in ("kl", "ewc", "entropy", "dynamic_sampling", "overlong", "resets"):
            opt = getattr(self, name)
            if opt is not None:
                parts.append(f"{name}({kv(opt.model_dump())})")
        if self.placebo:
            parts.append("placebo rewards")
        return "; ".join(parts)
