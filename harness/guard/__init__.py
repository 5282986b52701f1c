"""The collapse guard: early-warning signals, one rule over them, offline tuning and scoring
on recorded traces, and the same rule over other trainers' metrics (docs/guard.md).

- `harness.guard.signals`: the registered signals (`SIGNALS`);
- `harness.guard.rule`: `GuardParams` (the tuned defaults) and `guard_trigger`;
- `harness.guard.score` / `harness.guard.tune`: `harness guard score` and `harness guard tune`;
- `harness.guard.stream`: `guard_stream` over any metrics history, and
  `CollapseGuardCallback` for `transformers`/TRL trainers (imported lazily: it needs
  transformers).
"""

from __future__ import annotations

from typing import Any

from harness.guard.rule import GuardParams, as_params, guard_signals, guard_trigger
from harness.guard.signals import SIGNALS

__all__ = ["SIGNALS", "CollapseGuardCallback", "GuardParams", "as_params", "guard_signals",
           "guard_stream", "guard_trigger"]


def __getattr__(name: str) -> Any:
    if name in ("CollapseGuardCallback", "guard_stream", "GuardStream"):
        from harness.guard import stream

        return getattr(stream, name)
    raise AttributeError(name)
