"""The controller interface: a pure function of the history that plans the next campaign.

A controller sees every finished campaign (its per-step records and summary) and the
checkpoints the runner keeps, and returns a `Plan`: where the next campaign starts, its step
budget and its learning rate, with a reason and the numbers behind it. Controllers may also
stop a running campaign early (`should_stop`), again with a reason. Both decisions are logged
in the trace and the results.

Checkpoints the runner keeps (bounded: five policies at most):
- `init`: the policy the chain starts from;
- `c{k}:last`: the policy at the end of campaign k;
- `c{k}:peak`: the policy at campaign k's peak step (first maximum of eval pass@1).
Only the latest campaign's two and the best-peak campaign's `c{j}:peak` are kept;
`history.checkpoints` lists exactly what is available.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import UserError


class ControllerParams(BaseModel):
    """Base of each controller's parameters: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class CampaignSummary:
    """docs/design.md section 2 terms for one campaign. Steps count from 0 (before any update)."""

    index: int
    start: float
    peak: float
    peak_step: int
    end: float
    gap: float
    collapsed: bool
    onset: int | None
    budget: int
    steps_run: int
    start_from: str
    lr: float
    stopped_early: str | None = None
    signature: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def has_signature(pass1: list[float], rise: float = 0.05, fall: float = 0.10) -> bool:
    """The study's signature: the curve peaks at least `rise` above its start, and its last
    step ends at least `fall` below the peak (a fall that climbs back does not count)."""
    peak = max(pass1)
    return peak - pass1[0] >= rise - 1e-9 and peak - pass1[-1] >= fall - 1e-9


def summarise(index: int, pass1: list[float], *, budget: int, start_from: str, lr: float,
              collapse_threshold: float, stopped_early: str | None = None,
              signature_rise: float = 0.05, signature_fall: float = 0.10) -> CampaignSummary:
    """Summarise one campaign's eval pass@1 curve (index 0 = before the first update)."""
    peak = max(pass1)
    peak_step = pass1.index(peak)
    end = pass1[-1]
    gap = peak - end
    onset = None
    for s in range(peak_step + 1, len(pass1)):
        if pass1[s] < peak - gap / 2:
            onset = s
            break
    return CampaignSummary(
        index=index, start=pass1[0], peak=peak, peak_step=peak_step, end=end, gap=gap,
        collapsed=gap > collapse_threshold, onset=onset, budget=budget,
        steps_run=len(pass1) - 1, start_from=start_from, lr=lr, stopped_early=stopped_early,
        signature=has_signature(pass1, signature_rise, signature_fall))


@dataclass(frozen=True)
class History:
    """What a controller sees. `campaigns[k]` are campaign k's per-step records (dicts with at
    least `step` and `eval_pass1`, step 0 first)."""

    campaigns: tuple[tuple[dict[str, Any], ...], ...]
    summaries: tuple[CampaignSummary, ...]
    checkpoints: tuple[str, ...]
    max_steps: int
    base_lr: float

    @property
    def next_index(self) -> int:
        return len(self.summaries)


@dataclass(frozen=True)
class Plan:
    start_from: str
    budget: int
    lr: float
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Controller:
    """Subclass, set `Params`, implement `plan`; optionally `should_stop`.

    What the results derive from a controller (`harness.results`) is declared here, never
    looked up by name: `reference_arm`, `offline_guard` with `offline_report`, and
    `offline_guard_params`."""

    Params: ClassVar[type[ControllerParams]] = ControllerParams
    # True: results.json derives its reference rows (the trace and hindsight oracles, the
    # offline guard's lead time) from this controller's arms, whose traces are the
    # uncontrolled chains those references replay (docs/run-directory.md "Results").
    reference_arm: ClassVar[bool] = False
    # True on the one controller replayed offline (`offline_report`) on every cell's finished
    # campaigns for the `guard` section of its result.json.
    offline_guard: ClassVar[bool] = False

    @classmethod
    def offline_report(cls, campaign_records: Sequence[Sequence[Mapping[str, Any]]],
                       params: Mapping[str, Any] | None, threshold: float, *,
                       stopped: Collection[int] = (), signature_rise: float = 0.05,
                       signature_fall: float = 0.10) -> dict[str, Any]:
        """This controller replayed offline over a recorded chain (one list of step records
        per campaign; `stopped`: the indices of campaigns a controller cut short), for the
        `guard` section of result.json; only an `offline_guard` controller has one."""
        raise NotImplementedError(f"{cls.__name__} has no offline replay")

    @classmethod
    def offline_guard_params(cls, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """The params of the offline guard replay in a cell of this controller, given the
        cell's own controller params: the guard's defaults ({}), unless overridden."""
        return {}

    def __init__(self, params: dict[str, Any] | None = None, name: str = "") -> None:
        self.name = name or type(self).__name__
        try:
            self.params = self.Params.model_validate(params or {})
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            raise UserError(f"controller {self.name!r}: params.{loc}: {first['msg']}; "
                            f"allowed params: {', '.join(self.Params.model_fields) or 'none'}"
                            ) from None

    def plan(self, history: History) -> Plan:
        raise NotImplementedError

    def should_stop(self, records: list[dict[str, Any]], history: History
                    ) -> str | None:
        """Called after each step of a running campaign; a reason string stops it."""
        return None


def full_budget_from(start: str, history: History, lr: float, reason: str) -> Plan:
    return Plan(start_from=start, budget=history.max_steps, lr=lr, reason=reason)
