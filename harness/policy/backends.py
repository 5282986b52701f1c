"""`make_backend`: the rollout backend named by `RolloutSpec.backend` (`hf`, `lean`, `vllm`).

Kept apart from the backends (`harness.policy.rollout`, `harness.policy.lean`,
`harness.policy.vllm_backend`): they import `Rollouts` and `encode_prompt` from `rollout`, and
only this module imports them all, so no backend module imports another one back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.policy.rollout import HFGenerateBackend, RolloutBackend

if TYPE_CHECKING:
    from harness.policy.loading import Policy

ROLLOUT_BACKENDS = ("hf", "lean", "vllm")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def make_backend(name: str, policy: Policy | None = None,
                 warn: Callable[[str], None] | None = None) -> RolloutBackend:
    """The backend named by `RolloutSpec.backend`: `hf`, or `vllm` when vLLM is installed and
    the policy is on a CUDA GPU. Otherwise `vllm` falls back to `hf` and says so in one
    `warning:` line (`warn`, default stderr: the cell's log.txt); the rollouts are then
    exactly those of a cell with backend hf."""
    from harness.errors import UserError

    if name == "hf":
        return HFGenerateBackend()
    if name == "lean":
        from harness.policy.lean import LeanBackend

        return LeanBackend()
    if name == "vllm":
        from harness.policy.vllm_backend import VLLMBackend, vllm_unavailable

        why = vllm_unavailable(policy)
        if why is None:
            return VLLMBackend()
        (warn or _stderr)(f"warning: rollout backend vllm falls back to hf (transformers "
                          f"generate): {why}")
        return HFGenerateBackend()
    raise UserError(f"rollout backend {name!r} is not available; use backend: "
                    + ", ".join(ROLLOUT_BACKENDS[:-1]) + " or " + ROLLOUT_BACKENDS[-1])
