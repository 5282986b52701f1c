"""Reference rows computed from a recorded chain without training (docs/design.md section 2).

Both take `campaign_records`: one list of per-step records per campaign, in chain order, each
record with at least `step` and `eval_pass1` (step 0 = before the campaign's first update).
They select on eval pass@1, the only split measured at every step, so the value they report is
the *selection (eval) value* of the step they pick, not a test-split number: test pass@1 of an
arbitrary step was never measured. The eval value of a selected maximum is optimistic (the
maximum of noisy estimates); read oracle rows as upper references, not as arms. Ties: the
first step (earliest campaign, then earliest step) wins, as for a campaign's peak.

- `trace_oracle`: ES applied post hoc to the trace (usually naive): the best step of each
  campaign. Its chain value (`value`) is the best step of the *last* campaign: the policy ES
  would carry out of the chain if, in the last campaign, it had stopped at the peak. It is not
  what an ES chain would reach (ES restarts each campaign from the peak and so follows another
  trajectory); `mean_peak` is the mean over campaigns of their best values.
- `hindsight_oracle`: the best step of the whole chain (any campaign, any step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Records = Sequence[Mapping[str, Any]]


def _best(records: Records) -> tuple[int, float]:
    """(position, value) of the first maximum of eval pass@1."""
    if not records:
        raise ValueError("a campaign with no records has no best step")
    curve = [float(r["eval_pass1"]) for r in records]
    i = curve.index(max(curve))
    return i, curve[i]


def trace_oracle(campaign_records: Sequence[Records]) -> dict[str, Any]:
    """ES post hoc: per campaign its best step; the chain value is the last campaign's best.

    Returns {"oracle": True, "kind": "trace", "split": "eval", "value", "campaign", "step",
    "mean_peak", "per_campaign": [{"campaign", "step", "value"}, ...]}."""
    if not campaign_records:
        raise ValueError("trace_oracle needs at least one campaign")
    picks = []
    for k, records in enumerate(campaign_records):
        i, value = _best(records)
        picks.append({"campaign": k, "step": int(records[i]["step"]), "value": value})
    last = picks[-1]
    return {"oracle": True, "kind": "trace", "split": "eval", "value": last["value"],
            "campaign": last["campaign"], "step": last["step"],
            "mean_peak": sum(p["value"] for p in picks) / len(picks), "per_campaign": picks}


def hindsight_oracle(campaign_records: Sequence[Records]) -> dict[str, Any]:
    """The best step of the whole chain.

    Returns {"oracle": True, "kind": "hindsight", "split": "eval", "value", "campaign",
    "step"}."""
    if not campaign_records:
        raise ValueError("hindsight_oracle needs at least one campaign")
    best: tuple[float, int, int] | None = None
    for k, records in enumerate(campaign_records):
        i, value = _best(records)
        if best is None or value > best[0]:
            best = (value, k, int(records[i]["step"]))
    assert best is not None
    return {"oracle": True, "kind": "hindsight", "split": "eval", "value": best[0],
            "campaign": best[1], "step": best[2]}
