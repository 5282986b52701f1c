"""One campaign's update: rollouts and rewards in, one optimizer step out.

`Update.step` turns a step's rollouts and rewards into the method's loss (advantages, policy
loss, KL and EWC penalties: `harness.methods.backward_loss`), backpropagates it and steps the
optimizer. Whether that happens in this process (`LocalUpdate`: a fresh AdamW per campaign)
or over data-parallel ranks (`EngineUpdate`: a DeepSpeed engine; each rank backpropagates its
share of the rows) is hidden behind the same two calls, `step` and `close`. `regularizers`
sets up what the method's KL and EWC penalties need at a campaign's start.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from harness.spec.schema import MethodSpec, OptimSpec


@dataclass(frozen=True)
class StepResult:
    """What one update reports: the method's metrics (`backward_loss`), the gradient norm
    before clipping, the mean reward over the samples that have one, and the completion tokens
    trained on."""

    metrics: dict[str, float]
    grad_norm: float
    train_reward: float
    tokens: int


class Update(Protocol):
    def step(self, batch: dict[str, Tensor], rewards: list[list[float]], lr: float,
             seed: int = 0) -> StepResult: ...

    def close(self) -> None: ...


@dataclass
class Regularizers:
    """The frozen reference (KL penalty and the kl_to_ref metric) and the EWC state."""

    reference: nn.Module | None
    ewc: Any | None


def regularizers(method: MethodSpec, model: nn.Module, chain_start: Callable[[], nn.Module],
                 fisher_batches: Callable[[int], dict[str, Tensor]], *, group_size: int,
                 chunk: int | None, temperature: float) -> Regularizers:
    """A campaign's regularisers, set up at its start from the policy it starts from.

    The KL reference (also behind the kl_to_ref metric, whatever the method) is
    `chain_start()` (a frozen copy of the chain's initial policy) unless the method's KL
    measures against the campaign's start, which is then copied here. EWC anchors at the
    current weights with a diagonal Fisher estimated on `method.ewc.fisher_batches` rollout
    batches (`fisher_batches(b)` samples batch b)."""
    from harness.methods import EWCState, estimate_fisher, make_reference

    by_campaign = method.kl is not None and method.kl.reference == "campaign_start"
    reference = make_reference(model) if by_campaign else chain_start()
    ewc = None
    if method.ewc is not None:
        batches = [fisher_batches(b) for b in range(method.ewc.fisher_batches)]
        fisher = estimate_fisher(model, batches, micro_batch=group_size, chunk=chunk,
                                 temperature=temperature)
        ewc = EWCState.from_model(model, fisher)
    return Regularizers(reference=reference, ewc=ewc)


def _rewards(rewards: list[list[float]]) -> tuple[Tensor, Tensor | None, float]:
    """Rewards [P, G] as a tensor with NaN (a sample the grader failed on: no reward) set to
    0, the mask of valid samples (None: all valid) and the mean reward over the valid ones."""
    reward_t = torch.tensor(rewards, dtype=torch.float32)
    valid = ~torch.isnan(reward_t)
    mean = float(reward_t[valid].mean()) if bool(valid.any()) else math.nan
    return torch.nan_to_num(reward_t, nan=0.0), None if bool(valid.all()) else valid, mean


def _shaped(m: MethodSpec, batch: dict[str, Tensor], reward_t: Tensor, valid: Tensor | None,
            max_tokens: int, seed: int) -> Tensor:
    """The rewards the update trains on (`methods.shaping`: placebo, overlong penalty);
    samples without a reward stay at 0 and masked."""
    if not m.placebo and m.overlong is None:
        return reward_t
    from harness.methods.shaping import shape_rewards

    lengths = batch["completion_mask"].sum(-1).reshape(reward_t.shape).cpu()
    raw = reward_t if valid is None else torch.where(valid, reward_t, math.nan)
    return torch.nan_to_num(shape_rewards(m, raw, lengths, max_tokens, seed), nan=0.0)


class _Entropy:
    """The entropy bonus's coefficient over a campaign: fixed, or adaptive (TRL's rule: the
    coefficient is applied only while the last step's entropy was at or below the target, and
    moves by coef_delta towards keeping it there)."""

    def __init__(self, method: MethodSpec) -> None:
        self.spec = method.entropy
        self.coef = 0.0 if self.spec is None else self.spec.coef
        self.last = math.inf

    def applied(self) -> float:
        e = self.spec
        if e is None or not e.adaptive:
            return self.coef
        return self.coef if self.last <= e.target else 0.0

    def observe(self, entropy: float) -> None:
        e = self.spec
        if e is None or not e.adaptive or not math.isfinite(entropy):
            return
        if entropy <= e.target:
            self.coef = min(self.coef + e.coef_delta, e.coef_max)
        else:
            self.coef = max(self.coef - e.coef_delta, e.coef_min)
        self.last = entropy


def _observed_entropy(metrics: dict[str, float]) -> float:
    """The entropy adaptive control tracks: that of the tokens the policy loss acts on (all
    completion tokens, or the high-entropy ones with `top_quantile` < 1, as TRL does)."""
    return metrics.get("entropy_acting", metrics.get("entropy", math.nan))


def _mean_metrics(parts: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over inner steps (nan-free ones; nan when none is finite)."""
    out: dict[str, float] = {}
    for key in parts[0]:
        vals = [m[key] for m in parts if key in m and math.isfinite(m[key])]
        out[key] = sum(vals) / len(vals) if vals else math.nan
    return out


class LocalUpdate:
    """The update in this process: AdamW (or AdamW over float32 masters), fresh per campaign.

    With `method.mu` x `method.mini_batches` > 1 each rollout batch takes several optimizer
    steps: mu passes over mini-batches of whole prompt groups, the advantages computed once
    over the whole batch, and the importance ratio taken against each mini-batch's log-probs
    at its first pass (the first mini-batch's come from that pass itself; the others', which
    come after an optimizer step, from one forward pass without gradient before the first
    step). The step's metrics are the first pass's (mean over mini-batches); grad_norm and
    the clip shares are means over every inner step."""

    def __init__(self, method: MethodSpec, optim: OptimSpec, model: nn.Module, lr: float,
                 regs: Regularizers, temperature: float, max_tokens: int = 0) -> None:
        self.method, self.optim, self.model, self.regs = method, optim, model, regs
        self.temperature, self.max_tokens = temperature, max_tokens
        self.entropy = _Entropy(method)
        self.steps = 0
        self.optimizer = self._optimizer(lr)

    def _optimizer(self, lr: float) -> Any:
        from harness.methods import make_optimizer

        return make_optimizer(self.model, lr=lr, betas=self.optim.betas,
                              weight_decay=self.optim.weight_decay,
                              master_weights=self.optim.master_weights)

    def _backward(self, batch: dict[str, Tensor], rewards: Tensor, coef: float, seed: int,
                  **kw: Any) -> dict[str, float]:
        from harness.methods import backward_loss

        return backward_loss(
            self.method, self.model, batch, rewards, ref_model=self.regs.reference,
            ewc=self.regs.ewc, temperature=self.temperature,
            micro_batch_size=self.optim.micro_batch_size,
            after_backward=getattr(self.optimizer, "accumulate_grads", None),
            entropy_coef=coef, max_tokens=self.max_tokens, seed=seed, **kw)

    def step(self, batch: dict[str, Tensor], rewards: list[list[float]], lr: float,
             seed: int = 0) -> StepResult:
        from harness.methods import apply_gradients

        reward_t, valid, mean = _rewards(rewards)
        tokens = int(batch["completion_mask"].sum())
        if batch["input_ids"].size(0) == 0:  # dynamic sampling kept no group: no update
            return StepResult({}, math.nan, mean, 0)
        reward_t = _shaped(self.method, batch, reward_t, valid, self.max_tokens, seed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        coef = self.entropy.applied()
        if self.method.inner_steps == 1:
            self.optimizer.zero_grad(set_to_none=True)
            metrics = self._backward(batch, reward_t, coef, seed, valid=valid)
            grad_norm = apply_gradients(self.model, self.optimizer, self.optim.grad_clip)
        else:
            metrics, grad_norm = self._inner_steps(batch, reward_t, valid, coef, seed, lr)
        if self.method.entropy is not None:
            metrics["entropy_coef"] = coef
        self.entropy.observe(_observed_entropy(metrics))
        self.steps += 1
        if self._reset(lr):
            metrics["reset"] = 1.0
        return StepResult(metrics, grad_norm, mean, tokens)

    def _inner_steps(self, batch: dict[str, Tensor], reward_t: Tensor, valid: Tensor | None,
                     coef: float, seed: int, lr: float) -> tuple[dict[str, float], float]:
        from harness.methods import apply_gradients
        from harness.methods.step import batch_logprobs, step_advantages
        from harness.runner.seeds import derive_seed

        m = self.method
        adv, taking = step_advantages(m, reward_t, valid)
        n_prompts, group = reward_t.shape
        # whole groups, as evenly as they split (dynamic sampling may keep fewer prompts than
        # prompts_per_step, which mini_batches divides): no mini-batch is empty
        cuts = [round(j * n_prompts / m.mini_batches) for j in range(m.mini_batches + 1)]
        groups = [slice(a, b) for a, b in pairwise(cuts) if b > a]
        subs = [{k: v[g.start * group:g.stop * group] for k, v in batch.items()}
                for g in groups]
        # old log-probs: mini-batch 0's from its own first pass; the others' now, before
        # the first optimizer step changes the policy
        olds: list[Tensor | None] = [None] + [
            batch_logprobs(self.model, sub, temperature=self.temperature,
                           micro_batch_size=self.optim.micro_batch_size) for sub in subs[1:]]
        first: list[dict[str, float]] = []
        every: list[dict[str, float]] = []
        norms: list[float] = []
        for it in range(m.mu):
            for j, (g, sub) in enumerate(zip(groups, subs, strict=True)):
                keep: list[Tensor] | None = [] if olds[j] is None else None
                self.optimizer.zero_grad(set_to_none=True)
                metrics = self._backward(
                    sub, reward_t[g], coef, derive_seed(seed, it, j),
                    advantages=(adv[g], None if taking is None else taking[g]),
                    old_logp=olds[j], keep_logp=keep)
                if keep is not None:
                    olds[j] = torch.cat(keep)
                norms.append(apply_gradients(self.model, self.optimizer, self.optim.grad_clip))
                if it == 0:
                    first.append(metrics)
                every.append(metrics)
        out = _mean_metrics(first)
        flags = [k for k in every[0] if k.endswith("_frac")]
        out.update({k: v for k, v in _mean_metrics(every).items() if k in flags})
        finite = [x for x in norms if math.isfinite(x)]
        grad_norm = sum(finite) / len(finite) if finite else math.nan
        return out, grad_norm

    def _reset(self, lr: float) -> bool:
        """ProRL's resets, every `method.resets.every` steps: the KL reference becomes the
        current policy (a new frozen copy; the chain's shared reference is left alone) and/or
        the optimizer starts afresh."""
        r = self.method.resets
        if r is None or self.steps % r.every:
            return False
        if r.reference and self.regs.reference is not None:
            from harness.methods import make_reference

            self.regs.reference = make_reference(self.model)
        if r.optimizer:
            self.optimizer = self._optimizer(lr)
        return True

    def close(self) -> None:
        pass


class EngineUpdate:
    """The update over data-parallel ranks: a DeepSpeed engine per campaign
    (`harness.distributed.runtime.EngineUpdate`); every rank holds the whole batch and
    backpropagates its share of the rows. Inner iterations (mu, mini_batches) and resets are
    not available here yet: the spec is refused with one line at the campaign's start."""

    def __init__(self, method: MethodSpec, optim: OptimSpec, model: nn.Module, lr: float,
                 regs: Regularizers, temperature: float, ranks: Any, distributed: str,
                 n_seq: int, max_tokens: int = 0) -> None:
        from harness.distributed.runtime import EngineUpdate as Engine
        from harness.errors import UserError

        if method.inner_steps > 1 or method.resets is not None:
            raise UserError(f"method {method.arm}: mu/mini_batches > 1 and resets run in one "
                            f"process only, not with resources.distributed: {distributed}; "
                            "set resources.distributed: none or mu: 1, mini_batches: 1")
        self.method, self.optim, self.model, self.regs = method, optim, model, regs
        self.temperature, self.ranks, self.n_seq = temperature, ranks, n_seq
        self.max_tokens = max_tokens
        self.entropy = _Entropy(method)
        self.engine = Engine(model, ranks, distributed, lr=lr, betas=optim.betas,
                             weight_decay=optim.weight_decay, grad_clip=optim.grad_clip,
                             batch=n_seq, micro_batch_size=optim.micro_batch_size)

    def step(self, batch: dict[str, Tensor], rewards: list[list[float]], lr: float,
             seed: int = 0) -> StepResult:
        from harness.methods import backward_loss

        reward_t, valid, mean = _rewards(rewards)
        reward_t = _shaped(self.method, batch, reward_t, valid, self.max_tokens, seed)
        self.engine.set_lr(lr)
        coef = self.entropy.applied()
        metrics = backward_loss(
            self.method, self.model, batch, reward_t, ref_model=self.regs.reference,
            ewc=self.regs.ewc, valid=valid, temperature=self.temperature,
            micro_batch_size=self.optim.micro_batch_size, rows=self.ranks.share(self.n_seq),
            backward=self.engine.backward, reduce=self.ranks.sum, entropy_coef=coef,
            max_tokens=self.max_tokens, seed=seed)
        if self.method.entropy is not None:
            metrics["entropy_coef"] = coef
        self.entropy.observe(_observed_entropy(metrics))
        grad_norm = self.engine.step()
        return StepResult(metrics, grad_norm, mean, int(batch["completion_mask"].sum()))

    def close(self) -> None:
        self.engine.close()


def make_update(method: MethodSpec, optim: OptimSpec, model: nn.Module, lr: float,
                regs: Regularizers, *, temperature: float, ranks: Any, distributed: str,
                n_seq: int, max_tokens: int = 0) -> Update:
    """A campaign's update: over the ranks when there are several, else in this process.
    `max_tokens`: rollout.max_new_tokens (the overlong penalty's and token_sum_norm's cap)."""
    if ranks.world > 1:
        return EngineUpdate(method, optim, model, lr, regs, temperature, ranks, distributed,
                            n_seq, max_tokens)
    return LocalUpdate(method, optim, model, lr, regs, temperature, max_tokens)
