"""One training step of any method: rewards + rollouts -> gradients, metrics and an update.

The runner calls `backward_loss` (the step's loss, backpropagated over micro-batches) then
`apply_gradients` every step; `compute_loss` + `optimizer_step` are the same step on the whole
batch at once. What differs between methods lives in registered functions looked up by the
spec's names (advantage estimator, policy loss, aggregation, KL estimator); nothing here
branches on a method's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from harness.methods.advantages import METHODS, masked_advantages
from harness.methods.logprobs import token_logprobs
from harness.methods.losses import (
    POLICY_LOSSES,
    PolicyInputs,
    aggregate,
    kl_k3,
    kl_per_token,
)
from harness.methods.precision import MasterWeightsAdamW
from harness.methods.regularizers import EWCState

if TYPE_CHECKING:
    from harness.spec.schema import MethodSpec

# what the step code steps: a torch optimizer, or AdamW over float32 masters
Optimizer = torch.optim.Optimizer | MasterWeightsAdamW


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    return float((x * mask).sum() / mask.sum().clamp(min=1.0))


def _cov_sums(logp: Tensor, adv: Tensor, mask: Tensor) -> dict[str, float]:
    """The sums behind Cov(logp, A) over completion tokens (`logp_adv_cov`): sum of logp*A,
    of logp, of A and the token count, so micro-batches and ranks add up before dividing."""
    lp = logp.detach() * mask
    a = adv.detach().reshape(-1, 1).to(lp) * mask
    return {"cov_la": float((lp * a).sum()), "cov_l": float(lp.sum()),
            "cov_a": float(a.sum()), "cov_n": float(mask.sum())}


def _cov(sums: Mapping[str, float]) -> float:
    """Cov(logp, A) over completion tokens from `_cov_sums` (nan without a token): the
    token-level covariance whose sign says whether the update lowers the entropy (positive:
    confident tokens get the larger advantages; Cui et al. 2025, arXiv 2505.22617)."""
    n = sums["cov_n"]
    if n <= 0:
        return math.nan
    return sums["cov_la"] / n - (sums["cov_l"] / n) * (sums["cov_a"] / n)


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


def high_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """Completion tokens [N, T'] whose entropy is at or above the (1 - quantile) quantile of
    the completion tokens' entropies (the top `quantile` share by entropy: "Beyond the 80/20
    Rule", arXiv 2506.01939; TRL `top_entropy_quantile`, whose formula this is)."""
    values = entropy[mask.bool()].float()
    if values.numel() == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    threshold = torch.quantile(values, 1 - quantile)
    return ((entropy * mask) >= threshold) & mask.bool()


@dataclass
class LossTerms:
    """One backward pass's loss terms: the policy loss, the KL penalty (None without
    `spec.kl`), the entropy bonus (None without a coefficient), the policy loss's per-token
    flags, and the tokens the policy loss acts on (the mask, or its high-entropy part)."""

    pg: Tensor
    kl: Tensor | None
    bonus: Tensor | None
    flags: dict[str, Tensor]
    acting: Tensor

    def total(self) -> Tensor:
        loss = self.pg
        for term in (self.kl, self.bonus):
            if term is not None:
                loss = loss + term
        return loss


def loss_terms(spec: MethodSpec, inp: PolicyInputs, ref_logp: Tensor | None,
               agg: Callable[[Tensor], Tensor], *, entropy: Tensor | None = None,
               entropy_coef: float = 0.0, bonus_scale: float = 1.0) -> LossTerms:
    """The step's loss terms over a batch's tokens, each aggregated by `agg` (per-token
    values [N, T'] -> scalar): the policy loss (`spec.policy_loss` with its params, on the
    high-entropy tokens only when `spec.entropy.top_quantile` < 1), the KL penalty
    beta * agg(KL_est [* ratio]) (None without `spec.kl` or a reference), and the entropy
    bonus -coef * (mean entropy over the tokens the policy loss acts on) x `bonus_scale` (the
    pass's share of the batch's tokens). The one place the loss is written: `compute_loss`
    aggregates the whole batch (`losses.aggregate`), `backward_loss` each micro-batch by its
    share of the aggregation's weights (`aggregation_weights`)."""
    terms = POLICY_LOSSES.get(spec.policy_loss)(inp, spec.policy_loss_params)
    per_token, acting = terms.per_token, inp.mask
    quantile = spec.entropy.top_quantile if spec.entropy is not None else 1.0
    if quantile < 1.0 and entropy is not None:
        keep = high_entropy_mask(entropy.detach(), inp.mask, quantile)
        per_token = per_token * keep.to(per_token.dtype)
        acting = keep.to(inp.mask.dtype)
    pg = agg(per_token)
    kl_term = None
    if ref_logp is not None and spec.kl is not None:
        per_token_kl = kl_per_token(inp.logp, ref_logp, spec.kl.estimator,
                                    spec.kl.ratio_correction)
        kl_term = spec.kl.beta * agg(per_token_kl)
    bonus = None
    if entropy_coef and entropy is not None:
        mean_entropy = (entropy * acting).sum() / acting.sum().clamp(min=1.0)
        bonus = -entropy_coef * mean_entropy * bonus_scale
    return LossTerms(pg, kl_term, bonus, terms.flags, acting)


def _flag_sums(terms: LossTerms, mask: Tensor) -> dict[str, float]:
    """Per-token flags summed over the completion tokens (divided by their count later)."""
    return {k: float((v.to(mask.dtype) * mask).sum()) for k, v in terms.flags.items()}


def compute_loss(
    spec: MethodSpec,
    model: nn.Module,
    batch: dict[str, Tensor],
    rewards: Tensor,
    ref_model: nn.Module | None = None,
    ewc: EWCState | None = None,
    *,
    temperature: float = 1.0,
    old_logp: Tensor | None = None,
    entropy_coef: float = 0.0,
    max_tokens: int = 0,
    seed: int = 0,
) -> tuple[Tensor, dict[str, float]]:
    """Loss of one step: policy loss + optional KL penalty + entropy bonus + EWC penalty.

    Args:
        spec: the method (advantage estimator by name, policy loss and its params,
            aggregation, regularisers, entropy options).
        model: the policy, in train mode.
        batch: `Rollouts.to_batch()`: input_ids, attention_mask, completion_mask, each [N, T],
            right-padded, prompt-major (rows p*G .. p*G+G-1 are prompt p's completions).
        rewards: [P, G] with P*G = N.
        ref_model: frozen reference (see `make_reference`). When given, `kl_to_ref` (k3, mean
            per completion token) is reported whatever the spec; the penalty applies only when
            `spec.kl` is set, which requires it.
        ewc: anchor and Fisher; required when `spec.ewc` is set, ignored otherwise.
        temperature: the sampling temperature; log-probs are taken under logits / temperature.
        old_logp: [N, T-1] log-probs of the policy that sampled the batch, for the importance
            ratio of inner iterations (`optim.mu`); None: this pass's own, detached (ratio 1).
        entropy_coef: the entropy bonus's coefficient this step (0: none).
        max_tokens: the completion-length cap, for a constant-normaliser aggregation.
        seed: seeds the policy loss's own random choices (Clip-Cov).

    Returns:
        loss: scalar to backpropagate,
            agg(policy loss) + beta * agg(KL_est [* ratio]) - coef * H + lam * 0.5 * sum F
            (theta - theta*)^2 (see `kl_per_token` for the optional ratio correction).
        metrics: pg_loss, kl_to_ref (nan without a reference), kl_penalty, ewc_penalty (the
            weighted terms added to the loss, 0 when off), entropy (mean per completion token),
            adv_mean, adv_abs_mean, zero_var_groups (fraction of prompts whose G rewards are all
            equal), completion_len (mean completion tokens), logp_adv_cov (Cov(logp, A) over
            completion tokens: positive when the update makes the policy more certain), loss;
            and, when the policy loss
            or options produce them, the share of completion tokens of each flag
            (`clip_low_frac`, `clip_high_frac`, `cov_selected_frac`), `entropy_bonus` and
            `entropy_tokens_frac` (tokens the policy loss acted on) with `entropy_acting`
            (their mean entropy).
    """
    _check_inputs(spec, batch["input_ids"].size(0), rewards, ref_model, ewc)
    logp, entropy, mask = token_logprobs(
        model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"],
        temperature=temperature)
    advantages = METHODS.get(spec.name)(rewards, spec)  # [P, G]
    adv = advantages.reshape(-1).to(logp.device)  # [N], prompt-major like the batch

    ref_logp = _reference_logp(ref_model, batch["input_ids"], batch["attention_mask"],
                               batch["completion_mask"], temperature)
    inp = PolicyInputs(logp, logp.detach() if old_logp is None else old_logp.to(logp), adv,
                       mask, seed)
    terms = loss_terms(spec, inp, ref_logp,
                       lambda x: aggregate(x, mask, spec.loss_agg, max_tokens),
                       entropy=entropy, entropy_coef=entropy_coef)
    loss = terms.total()
    kl_to_ref = math.nan if ref_logp is None else _masked_mean(kl_k3(logp.detach(), ref_logp),
                                                               mask)
    kl_penalty = 0.0 if terms.kl is None else float(terms.kl.detach())

    ewc_penalty = 0.0
    if spec.ewc is not None and ewc is not None:
        ewc_term = spec.ewc.lam * ewc.penalty(model).to(loss.device)
        loss = loss + ewc_term
        ewc_penalty = float(ewc_term.detach())

    n_tokens = max(float(mask.sum()), 1.0)
    metrics = {
        "loss": float(loss.detach()),
        "pg_loss": float(terms.pg.detach()),
        "kl_to_ref": kl_to_ref,
        "kl_penalty": kl_penalty,
        "ewc_penalty": ewc_penalty,
        "entropy": _masked_mean(entropy.detach(), mask),
        **_group_metrics(rewards, advantages),
        "completion_len": float(mask.sum(-1).mean()),
        "logp_adv_cov": _cov(_cov_sums(logp, adv, mask)),
        **_extra_metrics(spec, _flag_sums(terms, mask),
                         None if terms.bonus is None else float(terms.bonus.detach()),
                         float(terms.acting.sum()), n_tokens,
                         float((entropy.detach() * terms.acting).sum())),
    }
    return loss, metrics


def _extra_metrics(spec: MethodSpec, flag_sums: dict[str, float], bonus: float | None,
                   acting: float, n_tokens: float, acting_entropy: float = 0.0
                   ) -> dict[str, float]:
    """The metrics only some policy losses and options have (absent otherwise, so the step
    records of methods without them stay as they were)."""
    out = {f"{k}_frac": v / n_tokens for k, v in flag_sums.items()}
    if bonus is not None:
        out["entropy_bonus"] = bonus
    if spec.entropy is not None and spec.entropy.top_quantile < 1.0:
        out["entropy_tokens_frac"] = acting / n_tokens
        # the entropy of the tokens the policy loss acts on: what adaptive control tracks
        out["entropy_acting"] = acting_entropy / max(acting, 1.0)
    return out


def aggregation_weights(mask: Tensor, mode: str, max_tokens: int = 0) -> Tensor:
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
        (weights,) = torch.autograd.grad(aggregate(probe, mask, mode, max_tokens), probe,
                                         allow_unused=True)
    weights = torch.zeros_like(mask) if weights is None else weights.detach()
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(mask.shape, generator=g, dtype=torch.float64).to(mask.device)
    expected = aggregate(x, mask.double(), mode, max_tokens)
    if not torch.allclose((weights.double() * x).sum(), expected, rtol=1e-6, atol=1e-9):
        from harness.errors import UserError

        raise UserError(f"loss aggregation {mode!r} is not linear in the per-token values, so "
                        f"the update cannot be split into micro-batches: set "
                        f"optim.micro_batch_size: null, or register a linear aggregation")
    return weights


def _micro_batches(n_seq: int, size: int | None) -> list[slice]:
    size = n_seq if size is None or size >= n_seq else size
    return [slice(start, min(start + size, n_seq)) for start in range(0, n_seq, size)]


def step_advantages(spec: MethodSpec, rewards: Tensor, valid: Tensor | None
                    ) -> tuple[Tensor, Tensor | None]:
    """A step's advantages [P, G] and which samples take part ([P, G] bool; None: all), over
    the whole batch: `masked_advantages` when some samples have no reward (`valid`)."""
    if valid is None or bool(valid.all()):
        return METHODS.get(spec.name)(rewards, spec), None
    return masked_advantages(rewards, valid, spec)


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
    advantages: tuple[Tensor, Tensor | None] | None = None,
    old_logp: Tensor | None = None,
    keep_logp: list[Tensor] | None = None,
    entropy_coef: float = 0.0,
    max_tokens: int = 0,
    seed: int = 0,
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

    Inner iterations (`optim.mu`, `optim.mini_batches`: `runner.update`): `advantages` gives
    the (advantages, taking part) of these rows, computed once over the whole rollout batch
    (`step_advantages`), `old_logp` [N, T-1] the sampling policy's log-probs for the
    importance ratio (None: each pass's own, detached, as on a batch's first pass), and
    `keep_logp`, when a list, receives this pass's detached log-probs [N, T-1] (the old
    log-probs of later iterations, without a second forward pass).

    micro_batch_size None (or >= N) with no `rows`, `valid`, `advantages`, `old_logp` or
    `keep_logp` is exactly `compute_loss` followed by `loss.backward()`. Returns
    `compute_loss`'s metrics.
    """
    n_seq = batch["input_ids"].size(0)
    share = rows if rows is not None else slice(0, n_seq)
    chunks = [slice(share.start + c.start, share.start + c.stop)
              for c in _micro_batches(share.stop - share.start, micro_batch_size)]
    if valid is not None and bool(valid.all()):
        valid = None
    plain = (valid is None and rows is None and backward is None and advantages is None
             and old_logp is None and keep_logp is None)
    if plain and len(chunks) == 1:
        loss, metrics = compute_loss(spec, model, batch, rewards, ref_model, ewc,
                                     temperature=temperature, entropy_coef=entropy_coef,
                                     max_tokens=max_tokens, seed=seed)
        loss.backward()
        if after_backward is not None:
            after_backward()
        return metrics

    _check_inputs(spec, n_seq, rewards, ref_model, ewc)
    full_mask = batch["completion_mask"][:, 1:].bool() & batch["attention_mask"][:, 1:].bool()
    if advantages is None:
        adv_pg, taking = step_advantages(spec, rewards, valid)
    else:
        adv_pg, taking = advantages
    if taking is None:
        weights = aggregation_weights(full_mask, spec.loss_agg, max_tokens)
    else:
        keep = taking.reshape(-1).to(full_mask.device)
        weights = torch.zeros(full_mask.shape, device=full_mask.device)
        if bool(keep.any()):  # the normalisers of the samples taking part only
            weights[keep] = aggregation_weights(full_mask[keep], spec.loss_agg,
                                                max_tokens).to(weights)
        full_mask = full_mask & keep.unsqueeze(1)
    adv = adv_pg.reshape(-1)
    columns = torch.arange(batch["attention_mask"].size(1), device=full_mask.device)
    n_tokens = max(float(full_mask.sum()), 1.0)

    sums = dict.fromkeys(("pg_loss", "kl_penalty", "ewc_penalty", "entropy", "kl_to_ref",
                          "cov_la", "cov_l", "cov_a", "cov_n"), 0.0)
    flag_sums: dict[str, float] = {}
    acting_sum, acting_entropy, bonus_sum = 0.0, 0.0, None
    for i, part in enumerate(chunks):
        # columns after the micro-batch's last real token are padding for all its rows
        width = max(int(columns[batch["attention_mask"][part].bool().any(0)].max()) + 1, 2)
        ids, am, cm = (batch[k][part, :width]
                       for k in ("input_ids", "attention_mask", "completion_mask"))
        logp, entropy, mask = token_logprobs(model, ids, am, cm, temperature=temperature)
        if keep_logp is not None:
            full = torch.zeros(part.stop - part.start, full_mask.size(1), device=logp.device)
            full[:, :width - 1] = logp.detach()
            keep_logp.append(full)
        w = weights[part, :width - 1].to(logp.device)
        ref_logp = _reference_logp(ref_model, ids, am, cm, temperature)
        if taking is not None:  # samples without a reward take no part in the metrics either
            mask = mask * full_mask[part, :width - 1].to(mask)
        old = logp.detach() if old_logp is None else old_logp[part, :width - 1].to(logp)
        inp = PolicyInputs(logp, old, adv[part].to(logp.device), mask, seed + i)
        # the aggregation as its weights: this micro-batch's share of the whole batch's loss
        terms = loss_terms(spec, inp, ref_logp, lambda x, w=w: (w * x).sum(),
                           entropy=entropy, entropy_coef=entropy_coef,
                           bonus_scale=float(mask.sum()) / n_tokens)
        loss = terms.total()
        sums["pg_loss"] += float(terms.pg.detach())
        sums["entropy"] += float((entropy.detach() * mask).sum())
        for k, v in _cov_sums(logp, adv[part], mask).items():
            sums[k] += v
        for k, v in _flag_sums(terms, mask).items():
            flag_sums[k] = flag_sums.get(k, 0.0) + v
        acting_sum += float(terms.acting.sum())
        acting_entropy += float((entropy.detach() * terms.acting).sum())
        if terms.bonus is not None:
            bonus_sum = (bonus_sum or 0.0) + float(terms.bonus.detach())
        if ref_logp is not None:
            sums["kl_to_ref"] += float((kl_k3(logp.detach(), ref_logp) * mask).sum())
        if terms.kl is not None:
            sums["kl_penalty"] += float(terms.kl.detach())
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

    kept = None if taking is None else taking.reshape(-1).to(full_mask.device)
    total = sums["pg_loss"] + sums["kl_penalty"] + sums["ewc_penalty"]
    return {
        "loss": total if bonus_sum is None else total + bonus_sum,
        "pg_loss": sums["pg_loss"],
        "kl_to_ref": sums["kl_to_ref"] / n_tokens if ref_model is not None else math.nan,
        "kl_penalty": sums["kl_penalty"],
        "ewc_penalty": sums["ewc_penalty"],
        "entropy": sums["entropy"] / n_tokens,
        **(_group_metrics(rewards, adv_pg) if taking is None else
           _masked_group_metrics(rewards, adv_pg, taking)),
        "completion_len": float(full_mask.sum(-1).float().mean()) if kept is None else
        float(full_mask.sum(-1).float()[kept].mean()) if bool(kept.any()) else math.nan,
        "logp_adv_cov": _cov(sums),
        **_extra_metrics(spec, flag_sums, bonus_sum, acting_sum, n_tokens, acting_entropy),
    }


def batch_logprobs(model: nn.Module, batch: dict[str, Tensor], *, temperature: float = 1.0,
                   micro_batch_size: int | None = None) -> Tensor:
    """Per-token log-probs [N, T-1] of a batch under `model`, without gradient (the old
    log-probs of a mini-batch whose first pass comes after another mini-batch's optimizer
    step), `micro_batch_size` sequences at a time."""
    n, width = batch["input_ids"].shape
    out = torch.zeros(n, width - 1, device=batch["input_ids"].device)
    columns = torch.arange(width, device=out.device)
    with torch.no_grad():
        for part in _micro_batches(n, micro_batch_size):
            w = max(int(columns[batch["attention_mask"][part].bool().any(0)].max()) + 1, 2)
            logp, _, _ = token_logprobs(
                model, *(batch[k][part, :w] for k in ("input_ids", "attention_mask",
                                                      "completion_mask")),
                temperature=temperature)
            out[part, :w - 1] = logp
    return out


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
