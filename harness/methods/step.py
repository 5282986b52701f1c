"""One training step of any method: rewards + rollouts -> scalar loss and metrics.

The runner calls `compute_loss` then `optimizer_step` every step. What differs between
methods lives in registered functions looked up by the spec's names (advantage estimator,
aggregation, KL estimator); nothing here branches on a method's name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from harness.methods.advantages import METHODS
from harness.methods.logprobs import token_logprobs
from harness.methods.losses import aggregate, kl_k3, kl_per_token, pg_per_token
from harness.methods.regularizers import EWCState

if TYPE_CHECKING:
    from harness.spec.schema import MethodSpec


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


def compute_loss(
    spec: MethodSpec,
    model: nn.Module,
    batch: dict[str, Tensor],
    rewards: Tensor,
    ref_model: nn.Module | None = None,
    ewc: EWCState | None = None,
    *,
    temperature: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Loss of one step: policy gradient + optional KL penalty + optional EWC penalty.

    Args:
        spec: the method (advantage estimator by name, aggregation, regularisers).
        model: the policy, in train mode.
        batch: `Rollouts.to_batch()`: input_ids, attention_mask, completion_mask, each [N, T],
            right-padded, prompt-major (rows p*G .. p*G+G-1 are prompt p's completions).
        rewards: [P, G] with P*G = N.
        ref_model: frozen reference (see `make_reference`). When given, `kl_to_ref` (k3, mean
            per completion token) is reported whatever the spec; the penalty applies only when
            `spec.kl` is set, which requires it.
        ewc: anchor and Fisher; required when `spec.ewc` is set, ignored otherwise.
        temperature: the sampling temperature; log-probs are taken under logits / temperature.

    Returns:
        loss: scalar to backpropagate,
            agg(-A * ratio) + beta * agg(KL_est [* ratio]) + lam * 0.5 * sum F (theta - theta*)^2
            (see `kl_per_token` for the optional ratio correction of the KL term).
        metrics: pg_loss, kl_to_ref (nan without a reference), kl_penalty, ewc_penalty (the
            weighted terms added to the loss, 0 when off), entropy (mean per completion token),
            adv_mean, adv_abs_mean, zero_var_groups (fraction of prompts whose G rewards are all
            equal), completion_len (mean completion tokens), loss.
    """
    n_seq = batch["input_ids"].size(0)
    if rewards.dim() != 2 or rewards.numel() != n_seq:
        raise ValueError(
            f"rewards must be [P, G] with P*G = {n_seq} sequences, got {tuple(rewards.shape)}")
    if spec.kl is not None and ref_model is None:
        raise ValueError(f"method {spec.arm!r} has a KL penalty: pass ref_model (make_reference)")
    if spec.ewc is not None and ewc is None:
        raise ValueError(f"method {spec.arm!r} has an EWC penalty: pass ewc (EWCState)")

    logp, entropy, mask = token_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
        temperature=temperature)
    advantages = METHODS.get(spec.name)(rewards, spec)  # [P, G]
    adv = advantages.reshape(-1).to(logp.device)  # [N], prompt-major like the batch

    pg_loss = aggregate(pg_per_token(logp, adv), mask, spec.loss_agg)
    loss = pg_loss

    kl_to_ref = math.nan
    kl_penalty = 0.0
    if ref_model is not None:
        with torch.no_grad():
            ref_logp, _, _ = token_logprobs(
                ref_model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
                temperature=temperature)
        kl_to_ref = _masked_mean(kl_k3(logp.detach(), ref_logp), mask)
        if spec.kl is not None:
            # `ratio_correction` (TRL's use_bias_correction_kl) defaults to TRL's default when the
            # spec's KLConfig does not carry the field
            correction = getattr(spec.kl, "ratio_correction", True)
            per_token_kl = kl_per_token(logp, ref_logp, spec.kl.estimator, correction)
            kl_term = spec.kl.beta * aggregate(per_token_kl, mask, spec.loss_agg)
            loss = loss + kl_term
            kl_penalty = float(kl_term.detach())

    ewc_penalty = 0.0
    if spec.ewc is not None and ewc is not None:
        ewc_term = spec.ewc.lam * ewc.penalty(model).to(loss.device)
        loss = loss + ewc_term
        ewc_penalty = float(ewc_term.detach())

    r = rewards.float()
    metrics = {
        "loss": float(loss.detach()),
        "pg_loss": float(pg_loss.detach()),
        "kl_to_ref": kl_to_ref,
        "kl_penalty": kl_penalty,
        "ewc_penalty": ewc_penalty,
        "entropy": _masked_mean(entropy.detach(), mask),
        "adv_mean": float(advantages.mean()),
        "adv_abs_mean": float(advantages.abs().mean()),
        "zero_var_groups": float((r == r[:, :1]).all(dim=1).float().mean()),
        "completion_len": float(mask.sum(-1).mean()),
    }
    return loss, metrics


def optimizer_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss: Tensor, grad_clip: float
) -> float:
    """Backpropagate `loss`, clip the global gradient norm to `grad_clip`, step, zero grads.

    Returns the global gradient norm *before* clipping. A non-finite norm skips the update
    (the parameters stay as they were) and is returned as is, so the runner can log it.
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if params else torch.zeros(())
    grad_norm = float(norm)
    if math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
