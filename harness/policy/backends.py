"""The rollout backend registry: `ROLLOUT_BACKENDS` maps a `RolloutSpec.backend` name to its
factory `(policy, warn) -> RolloutBackend`, and `make_backend` builds the one a spec names.

Each backend registers its own factory in its module (`harness.policy.rollout`: `hf`,
`harness.policy.lean`: `lean`, `harness.policy.vllm_backend`: `vllm`), and `harness.policy`
imports them all. This module imports none of them, so no backend module imports another one
back; the registry is the only list of their names.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness.registry import Registry

if TYPE_CHECKING:
    from harness.policy.loading import Policy
    from harness.policy.rollout import RolloutBackend

Warn = Callable[[str], None]
# (the policy the backend samples from, or None; where a backend says it falls back)
BackendFactory = Callable[["Policy | None", Warn], "RolloutBackend"]

ROLLOUT_BACKENDS: Registry[BackendFactory] = Registry("rollout backend")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def make_backend(name: str, policy: Policy | None = None,
                 warn: Warn | None = None) -> RolloutBackend:
    """The backend named by `RolloutSpec.backend`, from its registered factory. A backend that
    cannot run here may fall back to another and say so in one `warning:` line (`warn`,
    default stderr: the cell's log.txt): `vllm` without vLLM or a CUDA GPU is `hf`."""
    from harness.errors import UserError

    if name not in ROLLOUT_BACKENDS:
        names = ROLLOUT_BACKENDS.names()
        raise UserError(f"rollout backend {name!r} is not available; use backend: "
                        + ", ".join(names[:-1]) + " or " + names[-1])
    return ROLLOUT_BACKENDS.get(name)(policy, warn or _stderr)
