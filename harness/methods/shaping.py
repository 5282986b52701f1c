"""Reward shaping before the advantages: DAPO's soft overlong penalty and the placebo.

Both act on the rewards the update trains on, never on eval pass@1 or the recorded train
reward (the true pass rate). A sample without a reward (NaN: the grader failed on it) stays
without one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from harness.spec.schema import MethodSpec


def overlong_penalty(lengths: Tensor, max_tokens: int, buffer: int, factor: float) -> Tensor:
    """DAPO's soft overlong punishment (arXiv 2503.14476, eq. 13) per completion: 0 up to
    max_tokens - buffer tokens, then falling linearly to -factor at max_tokens (and below it
    beyond). lengths: completion tokens, any shape -> the same shape."""
    start = max_tokens - buffer
    over = (lengths.float() - start).clamp(min=0.0)
    return -factor * over / buffer


def placebo_rewards(rewards: Tensor, seed: int) -> Tensor:
    """The step's rewards [P, G] randomly permuted over its samples (those with a reward):
    the same mean and the same number of passes, carrying no information about which
    completion earned them (the random-reward control of "Spurious Rewards", arXiv
    2506.10947). Seeded, so a rerun draws the same permutation."""
    flat = rewards.reshape(-1).clone()
    valid = (~torch.isnan(flat)).nonzero().squeeze(1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    perm = valid[torch.randperm(valid.numel(), generator=g)]
    flat[valid] = rewards.reshape(-1)[perm]
    return flat.reshape(rewards.shape)


def shape_rewards(spec: MethodSpec, rewards: Tensor, lengths: Tensor, max_tokens: int,
                  seed: int) -> Tensor:
    """The rewards [P, G] the update trains on: the placebo's permutation (`spec.placebo`),
    then the overlong penalty (`spec.overlong`) on each completion's length [P, G]."""
    out = rewards.float()
    if spec.placebo:
        out = placebo_rewards(out, seed)
    if spec.overlong is not None:
        out = out + overlong_penalty(lengths, max_tokens, spec.overlong.buffer,
                                     spec.overlong.factor)
    return out
