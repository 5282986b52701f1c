"""Regularisers composable with any method: a frozen reference (for KL) and EWC.

The runner decides *when* to snapshot: at chain start or campaign start for the KL reference
(`KLConfig.reference`), at campaign start for the EWC anchor and Fisher.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from harness.methods.logprobs import token_logprobs


def make_reference(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` (deep copy, no gradients, eval mode) to measure KL against."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _checkpointed_layer(module: nn.Module) -> bool:
    """A decoder layer that HF activation checkpointing recomputes (in train mode)."""
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # older transformers: no checkpointing in eval mode
        return False
    return isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing


def estimate_fisher(
    model: nn.Module,
    batches: list[dict[str, Tensor]],
    *,
    micro_batch: int = 1,
    chunk: int | None = None,
    temperature: float = 1.0,
) -> dict[str, Tensor]:
    """Diagonal Fisher information of the policy, one float32 tensor per trainable parameter.

    Estimator: F_i = E_x E_{y ~ pi(.|x)} [(d/d theta_i log pi(y | x))^2], where log pi(y | x) is
    the summed log-likelihood of a completion y *sampled from the policy itself* (the "true"
    Fisher on rollouts, not the "empirical" Fisher on reference solutions). The expectation is
    the mean over all sequences of `batches`.

    `micro_batch` sequences share one backward pass: the squared gradient of their summed
    log-likelihood, divided by their number, is still unbiased for F because the cross terms
    E[g_i g_j] vanish (E_{y~pi}[grad log pi(y)] = 0 and completions are sampled independently
    given their prompt), at the cost of more variance. micro_batch = 1 is the textbook
    per-sample estimator (one backward pass per sequence).

    `chunk` bounds memory without changing the estimate: a micro-batch's gradient is summed
    over forward/backward passes of at most `chunk` sequences (in float32) before it is
    squared. With activation checkpointing enabled on the model it is used here too, with
    dropout still off (the decoder layers alone are put in train mode, which is what turns
    HF checkpointing on; their submodules stay in eval mode).

    Args:
        batches: dicts as `Rollouts.to_batch()` gives: input_ids, attention_mask,
            completion_mask, each [N, T].
    Returns:
        {parameter name: Fisher diagonal of the parameter's shape}, finite and >= 0.
    """
    params = _trainable(model)
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the policy that samples
    checkpointed = [m for m in model.modules() if _checkpointed_layer(m)]
    for layer in checkpointed:  # the layer's own flag only: its submodules stay in eval mode
        layer.training = True
    count = 0
    try:
        for batch in batches:
            n_seq = batch["input_ids"].size(0)
            for start in range(0, n_seq, micro_batch):
                stop = min(start + micro_batch, n_seq)
                step = stop - start if chunk is None else chunk
                total: list[Tensor | None] = [None] * len(params)
                for lo in range(start, stop, step):
                    rows = slice(lo, min(lo + step, stop))
                    logp, _, mask = token_logprobs(
                        model, batch["input_ids"][rows], batch["attention_mask"][rows],
                        batch["completion_mask"][rows], temperature=temperature)
                    grads = torch.autograd.grad(
                        (logp * mask).sum(), list(params.values()), allow_unused=True)
                    total = [t if g is None else g.float() if t is None else t.add_(g.float())
                             for t, g in zip(total, grads, strict=True)]
                for name, g in zip(params, total, strict=True):
                    if g is not None:
                        fisher[name] += g.pow(2) / (stop - start)
                count += 1
    finally:
        for layer in checkpointed:
            layer.training = False
        model.train(was_training)
    if count == 0:
        raise ValueError("estimate_fisher needs at least one sequence")
    return {n: f / count for n, f in fisher.items()}


@dataclass
class EWCState:
    """Anchor parameters theta* and diagonal Fisher F of one campaign start.

    anchor: {name: theta*_i} (detached copies, parameter dtype); fisher: {name: F_i} float32.
    """

    anchor: dict[str, Tensor]
    fisher: dict[str, Tensor]

    @classmethod
    def from_model(cls, model: nn.Module, fisher: dict[str, Tensor]) -> EWCState:
        """Anchor at `model`'s current parameters with the given Fisher."""
        anchor = {n: p.detach().clone() for n, p in _trainable(model).items() if n in fisher}
        missing = set(fisher) - set(anchor)
        if missing:
            raise ValueError(f"Fisher has parameters the model lacks: {sorted(missing)[:3]}")
        return cls(anchor=anchor, fisher=fisher)

    def penalty(self, model: nn.Module) -> Tensor:
        """0.5 * sum_i F_i (theta_i - theta*_i)^2, a differentiable float32 scalar (the caller
        multiplies by lambda). Zero at the anchor, quadratic in the displacement."""
        params = dict(model.named_parameters())
        total = None
        for name, theta_star in self.anchor.items():
            diff = params[name].float() - theta_star.float()
            term = (self.fisher[name] * diff.pow(2)).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), dtype=torch.float32)
        return 0.5 * total
