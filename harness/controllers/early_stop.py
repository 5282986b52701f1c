"""`es` (early stop): roll forward the previous campaign's peak checkpoint; the next budget is
peak_step + 3, clamped to [1, B]. Optional online patience stop inside a campaign."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from harness.controllers.base import (
    Controller,
    ControllerParams,
    History,
    Plan,
    full_budget_from,
)
from harness.controllers.registry import CONTROLLERS


class ESParams(ControllerParams):
    extra_steps: int = Field(3, ge=0, description="Next budget = peak_step + extra_steps.")
    patience: int | None = Field(
        None, ge=1, description="Online stop: end a campaign after this many steps without a "
        "new peak (off by default, as in the study).")


@CONTROLLERS.register("es")
class EarlyStop(Controller):
    Params = ESParams
    params: ESParams

    def plan(self, history: History) -> Plan:
        k = history.next_index
        if k == 0:
            return full_budget_from("init", history, history.base_lr, "chain start")
        prev = history.summaries[-1]
        budget = min(max(prev.peak_step + self.params.extra_steps, 1), history.max_steps)
        return Plan(
            start_from=f"c{k - 1}:peak", budget=budget, lr=history.base_lr,
            reason=(f"es: roll forward campaign {k - 1}'s peak (pass@1 {prev.peak:.3f} at step "
                    f"{prev.peak_step}); budget = peak_step + {self.params.extra_steps}"),
            numbers={"prev_peak": prev.peak, "prev_peak_step": prev.peak_step,
                     "prev_end": prev.end})

    def should_stop(self, records: list[dict[str, Any]], history: History) -> str | None:
        if self.params.patience is None:
            return None
        curve = [r["eval_pass1"] for r in records]
        best = curve.index(max(curve))
        if len(curve) - 1 - best >= self.params.patience:
            return (f"es patience: no new peak for {self.params.patience} steps "
                    f"(peak {curve[best]:.3f} at step {best})")
        return None
