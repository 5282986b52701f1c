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
    def step(self, batch: dict[str, Tensor], rewards: list[list[float]], lr: float
             ) -> StepResult: ...

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


class LocalUpdate:
    """The update in this process: AdamW (or AdamW over float32 masters), fresh per campaign."""

    def __init__(self, method: MethodSpec, optim: OptimSpec, model: nn.Module, lr: float,
                 regs: Regularizers, temperature: float) -> None:
        from harness.methods import make_optimizer

        self.method, self.optim, self.model, self.regs = method, optim, model, regs
        self.temperature = temperature
        self.optimizer = make_optimizer(model, lr=lr, betas=optim.betas,
                                        weight_decay=optim.weight_decay,
                                        master_weights=optim.master_weights)

    def step(self, batch: dict[str, Tensor], rewards: list[list[float]], lr: float
             ) -> StepResult:
        from harness.methods import apply_gradients, backward_loss

        reward_t, valid, mean = _rewards(rewards)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        metrics = backward_loss(
            self.method, self.model, batch, reward_t, ref_model=self.regs.reference,
            ewc=self.regs.ewc, valid=valid, temperature=self.temperature,
            micro_batch_size=self.optim.micro_batch_size,
            after_backward=getattr(self.optimizer, "accumulate_grads", None))
        grad_norm = apply_gradients(self.model, self.optimizer, self.optim.grad_clip)
        return StepResult(metrics, grad_norm, mean, int(batch["completion_mask"].sum()))

    def close(self) -> None:
        pass


class EngineUpdate:
    """The update over data-parallel ranks: a DeepSpeed engine per campaign
    (`harness.distributed.runtime.EngineUpdate`); every rank holds the whole batch and
    backpropagates its share of the rows."""

    def __init__(self, method: MethodSpec, optim: OptimSpec, model: nn.Module, lr: float,
                 regs: Regularizers, temperature: float, ranks: Any, distributed: str,
                 n_seq: int) -> None:
        from harness.distributed.runtime import EngineUpdate as Engine

        self.method, self.optim, self.model, self.regs = method, optim, model, regs
        self.temperature, self.ranks, self.n_seq = temperature, ranks, n_seq
        self.engine = Engine(model, ranks, distributed, lr=lr, betas=optim.betas,
                             weight_decay=optim.weight_decay, grad_clip=optim.grad_clip,
                             batch=n_seq, micro_batch_size=optim.micro_batch_size)

    def step(self, batch: dict[str, Tensor], rewards: list[list[float]], lr: float
             ) -> StepResult:
        from harness.methods import backward_loss

        reward_t, valid, mean = _rewards(rewards)
        self.engine.set_lr(lr)
        metrics = backward_loss(
            self.method, self.model, batch, reward_t, ref_model=self.regs.reference,
            ewc=self.regs.ewc, valid=valid, temperature=self.temperature,
            micro_batch_size=self.optim.micro_batch_size, rows=self.ranks.share(self.n_seq),
            backward=self.engine.backward, reduce=self.ranks.sum)
        grad_norm = self.engine.step()
        return StepResult(metrics, grad_norm, mean, int(batch["completion_mask"].sum()))

    def close(self) -> None:
        self.engine.close()


def make_update(method: MethodSpec, optim: OptimSpec, model: nn.Module, lr: float,
                regs: Regularizers, *, temperature: float, ranks: Any, distributed: str,
                n_seq: int) -> Update:
    """A campaign's update: over the ranks when there are several, else in this process."""
    if ranks.world > 1:
        return EngineUpdate(method, optim, model, lr, regs, temperature, ranks, distributed,
                            n_seq)
    return LocalUpdate(method, optim, model, lr, regs, temperature)
