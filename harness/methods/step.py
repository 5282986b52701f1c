"""One training step of any method: rewards + rollouts -> gradients, metrics and an update.

The runner calls `backward_loss` (the step's loss, backpropagated over micro-batches) then
`apply_gradients` every step; `compute_loss` + `optimizer_step` are the same step on the whole
batch at once. What differs between methods lives in registered functions looked up by the
spec's names (advantage estimator, policy loss, aggregation, KL estimator); nothing here
branches on a method's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from harness.methods.advantages import METHODS, masked_advantages
from harness.methods.logprobs import token_logprobs
from harness.methods.losses import POLICY_LOSSES, aggregate, kl_k3, kl_per_token
from harness.methods.precision import MasterWeightsAdamW
from harness.methods.regularizers import EWCState

if TYPE_CHECKING:
    from harness.spec.schema import MethodSpec

# what the step code steps: a torch optimizer, or AdamW over float32 masters
Optimizer = torch.optim.Optimizer | MasterWeightsAdamW


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


def _check_inputs(spec: MethodSpec, n_seq: int, rewards: Tensor, ref_model: nn.Module | None,
                  ewc: EWCState | None) -> None:
    if rewards.dim() != 2 or rewards.numel() != n_seq:
        raise ValueError(
            f"rewards must be [P, G] with P*G = {n_seq} sequences, got {tuple(rewards.shape)}")
    if spec.kl is not None and ref_model is None:
        raise ValueError(f"method {spec.arm!r} has a KL penalty: pass ref_model (make_reference)")
    if spec.ewc is not None and ewc is None:
        raise ValueError(f"method {spec.arm!r} has an EWC penalty: pass ewc (EWCState)")


def _group_metrics(rewards: Tensor, advantages: Tensor) -> dict[str, float]:
    r = rewards.float()
    return {"adv_mean": float(advantages.mean()),
            "adv_abs_mean": float(advantages.abs().mean()),
            "zero_var_groups": float((r == r[:, :1]).all(dim=1).float().mean())}


def _masked_group_metrics(rewards: Tensor, advantages: Tensor, taking: Tensor
                          ) -> dict[str, float]:
    """`_group_metrics` over the samples taking part (groups with >= 2 valid samples)."""
    groups = taking.any(dim=1)
    if not bool(groups.any()):
        return {"adv_mean": math.nan, "adv_abs_mean": math.nan, "zero_var_groups": math.nan}
    a = advantages[taking]
    same = [bool((r[t] == r[t][0]).all()) for r, t in zip(rewards.float()[groups],
                                                          taking[groups], strict=True)]
    return {"adv_mean": float(a.mean()), "adv_abs_mean": float(a.abs().mean()),
            "zero_var_groups": sum(same) / len(same)}


def _reference_logp(ref_model: nn.Module | None, ids: Tensor, am: Tensor, cm: Tensor,
                    temperature: float) -> Tensor | None:
    """The reference policy's per-token log-probabilities (no gradient), None without one."""
    if ref_model is None:
        return None
    with torch.no_grad():
        ref_logp, _, _ = token_logprobs(ref_model, ids, am, cm, temperature=temperature)
    return ref_logp


def loss_terms(spec: MethodSpec, logp: Tensor, adv: Tensor, ref_logp: Tensor | None,
               agg: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor | None]:
    """The step's loss terms over a batch's tokens, each aggregated by `agg` (per-token
    values [N, T'] -> scalar): the policy loss (`spec.policy_loss` of the advantages) and the
    KL penalty beta * agg(KL_est [* ratio]) (None without `spec.kl` or a reference). The one
    place the loss is written: `compute_loss` aggregates the whole batch
    (`losses.aggregate`), `backward_loss` each micro-batch by its share of the aggregation's
    weights (`aggregation_weights`)."""
    pg = agg(POLICY_LOSSES.get(spec.policy_loss)(logp, adv))
    if ref_logp is None or spec.kl is None:
        return pg, None
    per_token_kl = kl_per_token(logp, ref_logp, spec.kl.estimator, spec.kl.ratio_correction)
    return pg, spec.kl.beta * agg(per_token_kl)


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
    _check_inputs(spec, batch["input_ids"].size(0), rewards, ref_model, ewc)
    logp, entropy, mask = token_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
        temperature=temperature)
    advantages = METHODS.get(spec.name)(rewards, spec)  # [P, G]
    adv = advantages.reshape(-1).to(logp.device)  # [N], prompt-major like the batch

    ref_logp = _reference_logp(ref_model, batch["input_ids"], batch["attention_mask"],
                               batch["completion_mask"], temperature)
    pg_loss, kl_term = loss_terms(spec, logp, adv, ref_logp,
                                  lambda x: aggregate(x, mask, spec.loss_agg))
    loss = pg_loss
    kl_to_ref = math.nan if ref_logp is None else _masked_mean(kl_k3(logp.detach(), ref_logp),
                                                               mask)
    kl_penalty = 0.0
    if kl_term is not None:
        loss = loss + kl_term
        kl_penalty = float(kl_term.detach())

    ewc_penalty = 0.0
    if spec.ewc is not None and ewc is not None:
        ewc_term = spec.ewc.lam * ewc.penalty(model).to(loss.device)
        loss = loss + ewc_term
        ewc_penalty = float(ewc_term.detach())

    metrics = {
        "loss": float(loss.detach()),
        "pg_loss": float(pg_loss.detach()),
        "kl_to_ref": kl_to_ref,
        "kl_penalty": kl_penalty,
        "ewc_penalty": ewc_penalty,
        "entropy": _masked_mean(entropy.detach(), mask),
        **_group_metrics(rewards, advantages),
        "completion_len": float(mask.sum(-1).mean()),
    }
    return loss, metrics


def aggregation_weights(mask: Tensor, mode: str) -> Tensor:
    """The weights w [N, T'] with aggregate(x, mask, mode) == (w * x).sum() for every x.

    Every registered aggregation is linear in the per-token values, with normalisers (token
    counts, sequence counts) taken from the whole batch's mask. Its weights are its gradient,
    taken once at zero; a micro-batch's share of the loss is then (w[rows] * x[rows]).sum(), so
    accumulating micro-batch gradients gives the whole batch's gradient. An aggregation that is
    not linear (a registered extension) cannot be split and is refused with a clear error.
    """
    mask = mask.float()
    probe = torch.zeros_like(mask, requires_grad=True)
    with torch.enable_grad():
        (weights,) = torch.autograd.grad(aggregate(probe, mask, mode), probe, allow_unused=True)
    weights = torch.zeros_like(mask) if weights is None else weights.detach()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(mask.shape, generator=g, dtype=torch.float64).to(mask.device)
    expected = aggregate(x, mask.double(), mode)
    if not torch.allclose((weights.double() * x).sum(), expected, rtol=1e-6, atol=1e-9):
        from harness.errors import UserError

        raise UserError(f"loss aggregation {mode!r} is not linear in the per-token values, so "
                        f"the update cannot be split into micro-batches: set "
                        f"optim.micro_batch_size: null, or register a linear aggregation")
    return weights


def _micro_batches(n_seq: int, size: int | None) -> list[slice]:
    size = n_seq if size is None or size >= n_seq else size
    return [slice(start, min(start + size, n_seq)) for start in range(0, n_seq, size)]


def backward_loss(
    spec: MethodSpec,
    model: nn.Module,
    batch: dict[str, Tensor],
    rewards: Tensor,
    ref_model: nn.Module | None = None,
    ewc: EWCState | None = None,
    *,
    temperature: float = 1.0,
    micro_batch_size: int | None = None,
    valid: Tensor | None = None,
    after_backward: Callable[[], None] | None = None,
    rows: slice | None = None,
    backward: Callable[[Tensor, bool], None] | None = None,
    reduce: Callable[[dict[str, float]], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Backpropagate one step's loss (`compute_loss`'s), `micro_batch_size` sequences at a time.

    Gradients accumulate into the parameters' `.grad` (zero them before; `apply_gradients`
    after). Each micro-batch's forward and backward pass holds only its own activations, so
    peak memory scales with the micro-batch, not the batch; advantages come from the whole
    [P, G] reward matrix and the aggregation's normalisers from the whole batch's mask
    (`aggregation_weights`), so the accumulated gradient is the whole batch's: in float32 equal
    up to summation order; in 16 bits each micro-batch's forward pass rounds differently, a
    difference of the size of 16-bit rounding itself. Each micro-batch is cut to its own
    longest sequence. `after_backward` runs after each backward pass: with 16-bit weights,
    `MasterWeightsAdamW.accumulate_grads`, which sums the micro-batches in float32.

    Data-parallel training (one process per rank, `harness.distributed.runtime`): every rank
    holds the whole batch and rewards, so advantages and normalisers are the whole batch's, and
    backpropagates only `rows` (its share of the sequences) through `backward(loss, last)` (the
    DeepSpeed engine's; `last`: the share's last micro-batch); `reduce` sums the metrics'
    partial sums over the ranks. The ranks' gradients then add up to the whole batch's. Each
    rank adds its share's fraction of the EWC penalty, so together they add it once.

    `valid` [P, G] (None: all): False marks a sample without a reward (the grader failed on
    it). Such samples take no part: advantages come from `masked_advantages` (group
    statistics over the valid samples; a group with fewer than 2 contributes nothing), and
    their tokens are out of the loss, of the aggregation's normalisers and of the metrics.

    micro_batch_size None (or >= N) with no `rows` and no `valid` is exactly `compute_loss`
    followed by `loss.backward()`. Returns `compute_loss`'s metrics.
    """
    n_seq = batch["input_ids"].size(0)
    share = rows if rows is not None else slice(0, n_seq)
    chunks = [slice(share.start + c.start, share.start + c.stop)
              for c in _micro_batches(share.stop - share.start, micro_batch_size)]
    if valid is not None and bool(valid.all()):
        valid = None
    if valid is None and rows is None and backward is None and len(chunks) == 1:
        loss, metrics = compute_loss(spec, model, batch, rewards, ref_model, ewc,
                                     temperature=temperature)
        loss.backward()
        if after_backward is not None:
            after_backward()
        return metrics

    _check_inputs(spec, n_seq, rewards, ref_model, ewc)
    full_mask = batch["completion_mask"][:, 1:].bool() & batch["attention_mask"][:, 1:].bool()
    if valid is None:
        advantages = METHODS.get(spec.name)(rewards, spec)  # [P, G]
        weights = aggregation_weights(full_mask, spec.loss_agg)
    else:
        advantages, taking = masked_advantages(rewards, valid, spec)
        keep = taking.reshape(-1).to(full_mask.device)
        weights = torch.zeros(full_mask.shape, device=full_mask.device)
        if bool(keep.any()):  # the normalisers of the samples taking part only
            weights[keep] = aggregation_weights(full_mask[keep], spec.loss_agg).to(weights)
        full_mask = full_mask & keep.unsqueeze(1)
    adv = advantages.reshape(-1)
    columns = torch.arange(batch["attention_mask"].size(1), device=full_mask.device)

    sums = dict.fromkeys(("pg_loss", "kl_penalty", "ewc_penalty", "entropy", "kl_to_ref"), 0.0)
    for i, part in enumerate(chunks):
        # columns after the micro-batch's last real token are padding for all its rows
        width = max(int(columns[batch["attention_mask"][part].bool().any(0)].max()) + 1, 2)
        ids, am, cm = (batch[k][part, :width]
                       for k in ("input_ids", "attention_mask", "completion_mask"))
        logp, entropy, mask = token_logprobs(model, ids, am, cm, temperature=temperature)
        w = weights[part, :width - 1].to(logp.device)
        ref_logp = _reference_logp(ref_model, ids, am, cm, temperature)
        # the aggregation as its weights: this micro-batch's share of the whole batch's loss
        pg, kl_term = loss_terms(spec, logp, adv[part].to(logp.device), ref_logp,
                                 lambda x, w=w: (w * x).sum())
        loss = pg
        sums["pg_loss"] += float(pg.detach())
        if valid is not None:  # samples without a reward take no part in the metrics either
            mask = mask * full_mask[part, :width - 1].to(mask)
        sums["entropy"] += float((entropy.detach() * mask).sum())
        if ref_logp is not None:
            sums["kl_to_ref"] += float((kl_k3(logp.detach(), ref_logp) * mask).sum())
        if kl_term is not None:
            loss = loss + kl_term
            sums["kl_penalty"] += float(kl_term.detach())
        if i == 0 and spec.ewc is not None and ewc is not None:
            # added once: in parts proportional to the ranks' shares (every rank's backward
            # then touches the same parameters, as ZeRO-2's gradient reduction needs)
            ewc_term = (spec.ewc.lam * ewc.penalty(model).to(loss.device)
                        * ((share.stop - share.start) / n_seq))
            loss = loss + ewc_term
            sums["ewc_penalty"] = float(ewc_term.detach())
        if backward is None:
            loss.backward()
        else:
            backward(loss, i == len(chunks) - 1)
        if after_backward is not None:
            after_backward()
    if reduce is not None:
        sums = reduce(sums)

    n_tokens = max(float(full_mask.sum()), 1.0)
    return {
        "loss": sums["pg_loss"] + sums["kl_penalty"] + sums["ewc_penalty"],
        "pg_loss": sums["pg_loss"],
        "kl_to_ref": sums["kl_to_ref"] / n_tokens if ref_model is not None else math.nan,
        "kl_penalty": sums["kl_penalty"],
        "ewc_penalty": sums["ewc_penalty"],
        "entropy": sums["entropy"] / n_tokens,
        **(_group_metrics(rewards, advantages) if valid is None else
           _masked_group_metrics(rewards, advantages, taking)),
        "completion_len": float(full_mask.sum(-1).float().mean()) if valid is None else
        float(full_mask.sum(-1).float()[keep].mean()) if bool(keep.any()) else math.nan,
    }


def optimizer_step(
    model: nn.Module, optimizer: Optimizer, loss: Tensor, grad_clip: float
) -> float:
    """Backpropagate `loss`, then `apply_gradients`: clip, step, zero grads.

    Returns the global gradient norm *before* clipping (see `apply_gradients`).
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return apply_gradients(model, optimizer, grad_clip)


def apply_gradients(model: nn.Module, optimizer: Optimizer, grad_clip: float) -> float:
    """Clip the accumulated gradients' global norm to `grad_clip`, step, zero grads.

    With `MasterWeightsAdamW` the gradients are first moved onto its float32 masters, and the
    norm and clipping are taken there. Returns the global gradient norm *before* clipping. A
    non-finite norm skips the update (the parameters stay as they were) and is returned as
    is, so the runner can log it.
    """
    if isinstance(optimizer, MasterWeightsAdamW):
        params = optimizer.master_grads()
    else:
        params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if params else torch.zeros(())
    grad_norm = float(norm)
    if math.isfinite(grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm
