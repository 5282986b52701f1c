"""Scoring the guard on recorded campaigns: did it fire before the cliff, and how often in vain?

Per campaign (its step records, step 0 first): `signature` (the study's: eval pass@1 peaks at
least `rise` above its start and ends at least `fall` below the peak at the last step),
`onset` (the first step after the peak below peak - (peak - end)/2; signature campaigns only),
`trigger_step` (where the guard first fires, None if never), `lead_time` = onset - trigger.
Outcome: `caught` (signature, lead >= min_lead), `late` (signature, fired with a smaller lead,
or after the onset), `missed` (signature, never fired), `false_alarm` (no signature, fired),
`quiet` (no signature, never fired). Totals: counts of each, the caught share of signature
campaigns, the false-alarm share of the others, mean and median lead time over the signature
campaigns it fired on, and `before_peak`: signature campaigns it fired on before their peak
(caught by the definition, but a stop there gives up the rest of the rise).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.guard.rule import GuardParams, as_params, guard_trigger

MIN_LEAD = 2  # steps before the onset that count as a catch


@dataclass(frozen=True)
class Campaign:
    """One recorded campaign: where it came from, and its step records."""

    source: str
    index: int
    seed: int | None
    records: tuple[Mapping[str, Any], ...]


def load_fixture(path: Path) -> list[Campaign]:
    """The campaigns of a reduced fixture (`scripts/guard_fixture.py`: one JSON line per step
    record, with its `cell`, `campaign` and `seed`), gzip-compressed."""
    import gzip
    import json

    by: dict[tuple[str, int], list[dict[str, Any]]] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            r = json.loads(line)
            by.setdefault((r["cell"], r["campaign"]), []).append(r)
    return [Campaign(cell, k, recs[0]["seed"], tuple(recs)) for (cell, k), recs in by.items()]


def load_campaigns(runs: Iterable[Path], controller: str | None = "naive",
                   seeds: Sequence[int] | None = None,
                   method: str | None = None) -> list[Campaign]:
    """The finished campaigns of every cell of the given run directories (or cell directories)
    whose controller is `controller` (None: any), whose seed is in `seeds` (None: any) and
    whose method's label (its name where it has none) is `method` (None: any).

    A campaign a controller stopped early is left out: its cliff never happened, so it can
    neither be caught nor be a false alarm."""
    from harness.rundir import read_json_object
    from harness.runner.trace import read_trace_checked

    cells: list[Path] = []
    for run in runs:
        run = Path(run)
        if (run / "trace.jsonl").is_file():
            cells.append(run)
        elif (run / "cells").is_dir():
            cells += sorted(p for p in (run / "cells").iterdir() if (p / "trace.jsonl").is_file())
        else:
            raise FileNotFoundError(f"{run}: neither a run directory (cells/*/trace.jsonl) nor a "
                                    f"cell directory (trace.jsonl)")
    out: list[Campaign] = []
    for cell in cells:
        cfg = {}
        if (cell / "config.json").is_file():
            cfg = read_json_object(cell / "config.json", "the cell's config",
                                   "re-run `harness bench` on its spec").get("config") or {}
        name = (cfg.get("controller") or {}).get("name")
        seed = cfg.get("seed")
        if controller is not None and name is not None and name != controller:
            continue
        m = cfg.get("method") or {}
        if method is not None and (m.get("label") or m.get("name")) != method:
            continue
        if seeds is not None and seed not in seeds:
            continue
        steps: dict[int, list[dict[str, Any]]] = {}
        done: dict[int, dict[str, Any]] = {}
        # a finished cell's trace (it has its result.json) must be whole, as in `harness gate`
        records, _ = read_trace_checked(cell / "trace.jsonl",
                                        complete=(cell / "result.json").is_file())
        for r in records:
            if r["type"] == "step":
                steps.setdefault(r["campaign"], []).append(r)
            elif r["type"] == "campaign":
                done[r["index"]] = r
        for k in sorted(done):
            if done[k].get("stopped_early") or not steps.get(k):
                continue
            out.append(Campaign(cell.name, k, seed, tuple(steps[k])))
    return out


@dataclass(frozen=True)
class CampaignScore:
    source: str
    index: int
    seed: int | None
    signature: bool
    peak_step: int
    onset: int | None
    trigger_step: int | None
    reason: str | None
    lead_time: int | None
    outcome: str


def shape(c: Campaign, rise: float = 0.05, fall: float = 0.10) -> tuple[bool, int, int | None]:
    """(signature, peak step, onset step: None without the signature) of a campaign."""
    from harness.controllers.base import has_signature, summarise

    curve = [float(r["eval_pass1"]) for r in c.records]
    s = summarise(c.index, curve, budget=len(curve) - 1, start_from="", lr=1.0,
                  collapse_threshold=0.0)
    sig = has_signature(curve, rise, fall)
    onset = int(c.records[s.onset]["step"]) if sig and s.onset is not None else None
    return sig, int(c.records[s.peak_step]["step"]), onset


def score_campaign(c: Campaign, params: GuardParams, *, rise: float = 0.05,
                   fall: float = 0.10, min_lead: int = MIN_LEAD) -> CampaignScore:
    sig, peak_step, onset = shape(c, rise, fall)
    hit = guard_trigger(c.records, params)
    trigger = None if hit is None else hit[0]
    lead = None if trigger is None or onset is None else onset - trigger
    if sig:
        outcome = ("missed" if trigger is None else "caught" if lead is not None
                   and lead >= min_lead else "late")
    else:
        outcome = "quiet" if trigger is None else "false_alarm"
    return CampaignScore(c.source, c.index, c.seed, sig, peak_step,
                         onset, trigger, None if hit is None else hit[1], lead, outcome)


def from_report_row(row: Mapping[str, Any]) -> CampaignScore | None:
    """The score of a campaign row of a cell's `guard` section (its `by_signature`), or None
    for a row without one (written before it existed) or of a campaign a controller stopped."""
    b = row.get("by_signature")
    if not b or b.get("outcome") == "stopped":
        return None
    return CampaignScore("", int(row["campaign"]), None, bool(b["signature"]),
                         int(b["peak_step"]), b["onset"], b["trigger_step"], row.get("reason"),
                         b["lead_time"], str(b["outcome"]))


def totals(scores: Sequence[CampaignScore]) -> dict[str, Any]:
    """Counts per outcome, the caught share of signature campaigns, the false-alarm share of
    the others, and the mean and median lead time over the signature campaigns it fired on."""
    n_sig = sum(s.signature for s in scores)
    n_other = len(scores) - n_sig
    count = {k: sum(s.outcome == k for s in scores)
             for k in ("caught", "late", "missed", "false_alarm", "quiet")}
    leads = [s.lead_time for s in scores if s.signature and s.lead_time is not None]
    # fired before the campaign's peak: caught by the definition, but a stop there gives up
    # the rise that was still to come
    early = sum(1 for s in scores if s.signature and s.trigger_step is not None
                and s.trigger_step < s.peak_step)
    return {"campaigns": len(scores), "signature": n_sig, "no_signature": n_other, **count,
            "before_peak": early,
            "caught_share": count["caught"] / n_sig if n_sig else None,
            "false_alarm_share": count["false_alarm"] / n_other if n_other else None,
            "mean_lead_time": statistics.fmean(leads) if leads else None,
            "median_lead_time": statistics.median(leads) if leads else None}


def score(campaigns: Sequence[Campaign], params: GuardParams | Mapping[str, Any] | None = None,
          *, rise: float = 0.05, fall: float = 0.10, min_lead: int = MIN_LEAD
          ) -> dict[str, Any]:
    """The guard with `params` over recorded campaigns: per-campaign rows and totals."""
    p = as_params(params)
    rows = [score_campaign(c, p, rise=rise, fall=fall, min_lead=min_lead) for c in campaigns]
    return {"params": p.model_dump(mode="json"), "min_lead": min_lead,
            "signature": {"rise": rise, "fall": fall},
            "campaigns": [asdict(r) for r in rows], "totals": totals(rows)}
