"""Controllers: what carries from one campaign to the next (docs/design.md section 2)."""

from harness.controllers import care, collapse_guard, early_stop, naive  # noqa: F401  (registration)
from harness.controllers.base import (
    CampaignSummary,
    Controller,
    History,
    Plan,
    summarise,
)
from harness.controllers.registry import CONTROLLERS


def make_controller(name: str, params: dict | None = None) -> Controller:
    return CONTROLLERS.get(name)(params, name=name)


__all__ = ["CONTROLLERS", "CampaignSummary", "Controller", "History", "Plan",
           "make_controller", "summarise"]
