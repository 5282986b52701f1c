"""`naive`: start from the last checkpoint, full budget, same learning rate."""

from __future__ import annotations

from harness.controllers.base import Controller, History, Plan, full_budget_from
from harness.controllers.registry import CONTROLLERS


@CONTROLLERS.register("naive")
class Naive(Controller):
    # the oracle and offline-guard reference rows of results.json come from naive traces
    reference_arm = True

    def plan(self, history: History) -> Plan:
        k = history.next_index
        if k == 0:
            return full_budget_from("init", history, history.base_lr, "chain start")
        return full_budget_from(f"c{k - 1}:last", history, history.base_lr,
                                "naive: continue from the last checkpoint")
