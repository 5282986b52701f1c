"""Per-seed metrics of results.json cells and per-arm aggregates over seeds.

A cell entry of results.json (docs/run-directory.md "Results") holds `end_of_chain` and `aggregates`; the
comparison metrics of a spec (`ComparisonSpec.metric`) read one field of one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

# metric name -> (section of a results.json cell, key)
METRIC_FIELDS: dict[str, tuple[str, str]] = {
    "end_of_chain_pass1_test": ("end_of_chain", "pass1_test"),
    "end_of_chain_pass1_eval": ("end_of_chain", "pass1_eval"),
    "mean_peak": ("aggregates", "mean_peak"),
    "mean_end": ("aggregates", "mean_end"),
    "mean_gap": ("aggregates", "mean_gap"),
    "collapse_rate": ("aggregates", "collapse_rate"),
}
# A smaller gap and fewer collapsed campaigns are better.
LOWER_IS_BETTER = frozenset({"mean_gap", "collapse_rate"})


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def iqm(values: Iterable[float]) -> float:
    """Interquartile mean: the mean of the values left after cutting floor(n/4) from each end
    of the sorted values (scipy.stats.trim_mean(x, 0.25), as in rliable). n >= 1."""
    x = np.sort(np.asarray(list(values), dtype=float))
    if x.size == 0:
        raise ValueError("iqm of no values")
    k = int(0.25 * x.size)
    return float(x[k:x.size - k].mean())


def cell_metric(cell: Mapping[str, Any], metric: str) -> float | None:
    """One metric of one results.json cell entry (None when absent)."""
    section, key = METRIC_FIELDS[metric]
    v = (cell.get(section) or {}).get(key)
    return None if v is None else float(v)


def metric_by_seed(cells: Iterable[Mapping[str, Any]], metric: str, *, model: str, method: str,
                   controller: str) -> dict[int, float]:
    """{seed: metric} over the *finished* cells of one arm (labels as in results.json)."""
    out: dict[int, float] = {}
    for c in cells:
        if (c.get("status") == "finished" and c.get("model") == model
                and c.get("method") == method and c.get("controller") == controller):
            v = cell_metric(c, metric)
            if v is not None:
                out[int(c["seed"])] = v
    return out


def _summary(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"mean": None, "iqm": None}
    return {"mean": float(np.mean(xs)), "iqm": iqm(xs)}


def arm_aggregates(cells: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregates of one arm over its finished cells: `n`, `seeds`, and for each metric of
    `METRIC_FIELDS` plus `carryover` (a cell's mean start-minus-previous-end) its mean and
    IQM over seeds."""
    done = [c for c in cells if c.get("status") == "finished"]
    out: dict[str, Any] = {"n": len(done), "seeds": sorted(int(c["seed"]) for c in done)}
    for metric in METRIC_FIELDS:
        out[metric] = _summary([v for c in done if (v := cell_metric(c, metric)) is not None])
    carry = [float(np.mean(co)) for c in done
             if (co := (c.get("aggregates") or {}).get("carryover"))]
    out["carryover"] = _summary(carry)
    return out
