"""The optimizer of a campaign, with float32 master weights for 16-bit policies.

AdamW's step is about `lr` per parameter. A bfloat16 weight of magnitude 0.02 is spaced
2**-13 (1.2e-4) from its neighbours, so at the study's lr of 1e-6 an update applied to the
16-bit weight itself rounds back to the same value: plain AdamW on a bf16 model changed 2.4%
of its parameters after one step and still 2.4% after 50 (those near zero;
`tests/test_methods.py`). Mixed-precision
training (DeepSpeed's bf16 mode, accelerate, Megatron) keeps a float32 "master" copy that the
optimizer steps, and writes it back rounded to the model's dtype after every step, so small
updates accumulate until they move the 16-bit weight. `MasterWeightsAdamW` does that here,
and also sums micro-batch gradients in float32.

The master copy lives for one campaign, like the optimizer: a campaign starts from the
16-bit weights of its checkpoint, as a fresh training run from a saved checkpoint would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

SIXTEEN_BIT = (torch.bfloat16, torch.float16)


class MasterWeightsAdamW:
    """AdamW over float32 copies of the parameters; each step writes them back, rounded.

    Use it as the step code uses any optimizer: `zero_grad`, backpropagate into the model
    (`backward_loss(..., after_backward=opt.accumulate_grads)`), `apply_gradients` (which
    calls `master_grads` to clip the float32 gradients, then `step`).
    AdamW's moments are float32 too. Memory: 4 bytes (master) + 8 (moments) per parameter,
    against 4 (16-bit moments) for plain AdamW on a 16-bit model.
    """

    def __init__(self, params: Iterable[Tensor], *, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.masters = [p.detach().to(torch.float32, copy=True) for p in self.params]
        # on CUDA the fused kernel: no whole-model temporaries (the foreach path allocates
        # some the size of the moments, 12 GB at 3B)
        fused = bool(self.masters) and all(m.is_cuda for m in self.masters)
        self.inner = torch.optim.AdamW(self.masters, lr=lr, betas=betas,
                                       weight_decay=weight_decay, fused=fused or None)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def accumulate_grads(self) -> None:
        """Add the model's 16-bit gradients onto the masters' float32 ones and free them.

        Called after each micro-batch's backward pass (`backward_loss(after_backward=...)`),
        so the sum over micro-batches is taken in float32, not rounded to 16 bits at every
        addition (DeepSpeed's bf16 mode accumulates in float32 the same way)."""
        for p, m in zip(self.params, self.masters, strict=True):
            if p.grad is None:
                continue
            g = p.grad.detach().to(torch.float32)
            m.grad = g if m.grad is None else m.grad.add_(g)
            p.grad = None

    def master_grads(self) -> list[Tensor]:
        """Accumulate what the model still holds; the masters that have a gradient."""
        self.accumulate_grads()
        return [m for m in self.masters if m.grad is not None]

    @torch.no_grad()
    def step(self) -> None:
        self.accumulate_grads()
        self.inner.step()
        for p, m in zip(self.params, self.masters, strict=True):
            p.copy_(m)  # rounds to the model's dtype (round to nearest even)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for t in (*self.params, *self.masters):
            if set_to_none:
                t.grad = None
            elif t.grad is not None:
                t.grad.zero_()


def make_optimizer(model: nn.Module, *, lr: float, betas: tuple[float, float],
                   weight_decay: float, master_weights: str = "float32"
                   ) -> torch.optim.Optimizer | MasterWeightsAdamW:
    """AdamW over the model's trainable parameters; with `master_weights: float32` and 16-bit
    weights, over float32 master copies (`MasterWeightsAdamW`). `none`: plain AdamW whatever
    the dtype."""
    params = [p for p in model.parameters() if p.requires_grad]
    if master_weights == "float32" and any(p.dtype in SIXTEEN_BIT for p in params):
        return MasterWeightsAdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if master_weights not in ("float32", "none"):
        raise ValueError(f"master_weights must be float32 or none, not {master_weights!r}")
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
