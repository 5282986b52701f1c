"""Results, derived from the cells' traces: the one place that builds them (schemas in
docs/run-directory.md "Results").

- a cell's `result.json` from its trace records (`build_result`; the cell runner writes it
  when the chain ends);
- `results.json` of a run (`build_results`; `harness bench` writes it): its per-cell entries
  (`cell_entry`) and its `arms` rows (`arm_rows`: the arms, the oracle references and the
  offline collapse guard's lead time);
- the summaries that MLflow (`harness.tracking`) and the report (`harness.report`) show
  beside them: a chain's aggregates (`chain_aggregates`), its decisions (`decisions`), the
  per-seed values behind an `arms` row (`seed_values`) and their interval (`mean_ci`), a
  campaign's signature (`campaign_signature`).

Nothing here names a controller. What the results derive from a controller is declared by
its class, looked up in `harness.controllers.CONTROLLERS` by the cell's controller name:
`Controller.reference_arm` (the arms whose traces the oracle and offline-guard reference rows
are computed from), `Controller.offline_guard` (the controller replayed offline for every
cell's `guard` section, `Controller.offline_report`) and `Controller.offline_guard_params`
(the params of that replay in a cell of this controller).

Means are plain sums over counts, as results.json has always held them; intervals are the
project's bootstrap (`harness.stats.bootstrap_ci`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.runner.verdicts import add_counts

if TYPE_CHECKING:
    from harness.controllers import CampaignSummary, Controller
    from harness.runner.cell import CellConfig
    from harness.spec import Cell, Spec

RESULTS_SCHEMA_VERSION = 2
# the oracles of a cell's `final` record -> the `controller` label of their rows in `arms`
ORACLE_ROWS = {"trace": "trace_oracle", "hindsight": "hindsight_oracle"}
ORACLE_KINDS = {label: kind for kind, label in ORACLE_ROWS.items()}

Record = Mapping[str, Any]


def mean(xs: Iterable[Any]) -> float | None:
    """The mean of the values that are not None (as floats); None when there is none."""
    vals = [float(x) for x in xs if x is not None]
    return sum(vals) / len(vals) if vals else None


# --------------------------------------------------------------------------- controllers
def _controller(name: str | None) -> type[Controller] | None:
    """The registered class of a controller name, None for a name this harness does not know
    (a results file written elsewhere)."""
    from harness.controllers import CONTROLLERS

    return CONTROLLERS.get(name) if name is not None and name in CONTROLLERS else None


def is_reference_arm(controller_name: str | None) -> bool:
    """Whether `arms` derives the oracle and offline-guard rows from an arm of this controller
    (the class declares `reference_arm`)."""
    cls = _controller(controller_name)
    return bool(cls is not None and cls.reference_arm)


def offline_guard() -> type[Controller]:
    """The controller whose offline replay is every cell's `guard` section: the one registered
    class that declares `offline_guard`."""
    from harness.controllers import CONTROLLERS

    found = [CONTROLLERS.get(n) for n in CONTROLLERS if CONTROLLERS.get(n).offline_guard]
    classes = list(dict.fromkeys(found))
    if len(classes) != 1:
        raise RuntimeError("exactly one registered controller must declare offline_guard; "
                           f"found {[c.__name__ for c in classes]}")
    return classes[0]


# --------------------------------------------------------------------------- one cell
def summary_from(record: Record) -> CampaignSummary:
    """The `CampaignSummary` of a trace's `campaign` record."""
    from harness.controllers import CampaignSummary

    fields = CampaignSummary.__dataclass_fields__
    return CampaignSummary(**{k: record[k] for k in fields if k in record})


def decisions(records: Iterable[Record]) -> list[dict[str, Any]]:
    """Every `plan` and `stop` record of a trace, its `type` as `kind`."""
    return [{k: v for k, v in r.items() if k != "type"} | {"kind": r["type"]}
            for r in records if r.get("type") in ("plan", "stop")]


def chain_aggregates(campaigns: Sequence[Record]) -> dict[str, Any]:
    """Aggregates over a chain's campaign records: `mean_peak`, `mean_end`, `mean_gap`,
    `collapse_rate` (None without campaigns), `collapsed_campaigns`, `signature_campaigns`,
    `carryover` (start of campaign k+1 minus end of campaign k)."""
    n = len(campaigns)
    return {
        "mean_peak": sum(c["peak"] for c in campaigns) / n if n else None,
        "mean_end": sum(c["end"] for c in campaigns) / n if n else None,
        "mean_gap": sum(c["gap"] for c in campaigns) / n if n else None,
        "collapse_rate": sum(c["collapsed"] for c in campaigns) / n if n else None,
        "collapsed_campaigns": sum(c["collapsed"] for c in campaigns),
        "signature_campaigns": sum(bool(c.get("signature")) for c in campaigns),
        "carryover": [campaigns[i]["start"] - campaigns[i - 1]["end"] for i in range(1, n)],
    }


def guard_section(cfg: CellConfig, campaign_records: Sequence[Sequence[Record]],
                  stopped: Collection[int] = ()) -> dict[str, Any]:
    """The cell's `guard` section: the offline guard replayed on its finished campaigns, with
    the params the cell's controller declares for it (`offline_guard_params`); `stopped`: the
    indices of the campaigns its controller stopped early."""
    own = _controller(cfg.controller.name)
    params = own.offline_guard_params(cfg.controller.params) if own is not None else {}
    return offline_guard().offline_report(
        campaign_records, params, cfg.chain.collapse_threshold, stopped=stopped,
        signature_rise=cfg.chain.signature_rise, signature_fall=cfg.chain.signature_fall)


def build_result(cfg: CellConfig, records: list[dict[str, Any]]) -> dict[str, Any]:
    """`result.json` of a cell (schema in docs/run-directory.md "Results")."""
    campaigns = [{k: v for k, v in r.items() if k != "type"} for r in records
                 if r["type"] == "campaign"]
    final = next((r for r in records if r["type"] == "final"), None)
    steps = [r for r in records if r["type"] == "step"]
    finished = {c["index"] for c in campaigns}
    stopped = {c["index"] for c in campaigns if c.get("stopped_early")}
    by_campaign: dict[int, list[dict[str, Any]]] = {}
    for s in steps:
        if s["campaign"] in finished:
            by_campaign.setdefault(s["campaign"], []).append(s)
    chain_kinds: dict[str, Any] = {"train": None, "eval": None}
    for c in campaigns:  # verdict kinds per campaign and over the chain (runner/verdicts.py)
        kinds: dict[str, Any] = {"train": None, "eval": None}
        for st in by_campaign.get(c["index"], []):
            for part, counts in (st.get("verdicts") or {}).items():
                kinds[part] = add_counts(kinds[part], counts)
                chain_kinds[part] = add_counts(chain_kinds[part], counts)
        c["verdicts"] = kinds
    return {
        "cell_id": cfg.cell_id,
        "model": cfg.model.name, "method": cfg.method.arm, "controller": cfg.controller.arm,
        "seed": cfg.seed,
        "campaigns": campaigns,
        "decisions": decisions(records),
        "end_of_chain": None if final is None else {
            "pass1_test": final["pass1_test"], "pass1_eval": final["pass1_eval"],
            "carried_from": final["carried_from"]},
        "oracles": None if final is None else final.get("oracles"),
        "guard": guard_section(cfg, [by_campaign[k] for k in sorted(by_campaign)],
                               [i for i, k in enumerate(sorted(by_campaign)) if k in stopped]),
        "aggregates": {
            **chain_aggregates(campaigns),
            "total_steps": len([s for s in steps if s["step"] > 0]),
            "verdicts": chain_kinds,
        },
    }


# --------------------------------------------------------------------------- results.json
def cell_entry(cell: Cell, run_dir: Path, error: str | None = None) -> dict[str, Any]:
    """A cell's entry in results.json: its keys, `controller_name`, `status` and the fields
    of its result.json (`error`: why it failed, from the executor)."""
    entry: dict[str, Any] = {**cell.keys(), "controller_name": cell.controller.name,
                             "status": "missing"}
    try:
        res = json.loads((run_dir / "cells" / cell.cell_id / "result.json").read_text())
        entry.update(status="finished" if res.get("end_of_chain") else "partial",
                     campaigns=res["campaigns"], decisions=res["decisions"],
                     end_of_chain=res["end_of_chain"], aggregates=res["aggregates"],
                     oracles=res.get("oracles"), guard=res.get("guard"))
    except (OSError, json.JSONDecodeError, KeyError):
        pass
    if error is not None:
        entry.update(status="failed", error=error)
    return entry


def build_results(spec: Spec, run_dir: Path, cells: list[Cell], failures: dict[str, str],
                  executor: dict[str, Any] | None) -> dict[str, Any]:
    """results.json of a run from its cells' result.json files (schema in
    docs/run-directory.md "Results"); `failures`: cell_id -> error of the cells that failed
    in this invocation, `executor`: where they ran (environment.json's `executor`)."""
    from harness import __version__
    from harness.compare import evaluate_comparisons
    from harness.spec import spec_hash

    out_cells = [cell_entry(c, run_dir, failures.get(c.cell_id)) for c in cells]
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "spec": spec.name, "version": spec.version, "spec_hash": spec_hash(spec),
        "harness_version": __version__,
        "executor": executor,
        "cells": out_cells,
        "arms": arm_rows(out_cells),
    }
    # The spec's declared comparisons, paired by seed (docs/comparisons-and-gate.md).
    results["comparisons"] = evaluate_comparisons(spec, results)
    return results


def _arm_verdicts(aggregates: list[dict[str, Any]]) -> dict[str, Any]:
    """Verdict kinds of an arm's train and eval samples, summed over its cells' chains."""
    out: dict[str, Any] = {"train": None, "eval": None}
    for a in aggregates:
        for part, counts in (a.get("verdicts") or {}).items():
            if counts:
                out[part] = add_counts(out[part], counts)
    return out


def _guard_row(guard: list[dict[str, Any]]) -> dict[str, Any]:
    """The pooled offline-guard campaigns of an arm's cells (a `guard_lead_time` row)."""
    from harness.guard.score import from_report_row, totals

    runs = [r for g in guard for r in g.get("campaigns") or []]
    leads = [r["lead_time"] for r in runs if r["collapsed"] and r["lead_time"] is not None]
    collapsed = sum(1 for r in runs if r["collapsed"])
    caught = sum(1 for v in leads if v >= 0)
    scored = [from_report_row(r) for r in runs]
    return {"params": next((g["params"] for g in guard if g.get("params")), None),
            "campaigns": len(runs), "collapsed": collapsed, "caught": caught,
            "late": len(leads) - caught, "missed": collapsed - caught,
            "false_alarms": sum(1 for r in runs if not r["collapsed"]
                                and r["trigger_step"] is not None),
            "mean_lead_time": mean(leads),
            # as `harness guard score` scores them; None when a cell predates it
            "by_signature": totals([s for s in scored if s is not None])
            if runs and all("by_signature" in r for r in runs) else None}


def arm_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The `arms` rows of results.json from its per-cell entries (docs/run-directory.md "Results").

    Per (model, method, controller) arm, over its finished cells: `kind` "arm". Then per arm
    whose controller is a reference arm (`is_reference_arm` of the cells' `controller_name`):
    one `kind` "oracle" row per oracle (controller `trace_oracle` / `hindsight_oracle`, `of`
    = the source arm's controller) and one `kind` "guard_lead_time" row (the collapse guard
    run offline on those traces). Rows keep the order in which arms first appear in
    `cells`."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    n_cells: dict[tuple[str, str, str], int] = {}
    reference: set[tuple[str, str, str]] = set()
    for c in cells:
        key = (c["model"], c["method"], c["controller"])
        n_cells[key] = n_cells.get(key, 0) + 1
        groups.setdefault(key, [])
        if c.get("status") == "finished":
            groups[key].append(c)
        if is_reference_arm(c.get("controller_name", c["controller"])):
            reference.add(key)
    rows: list[dict[str, Any]] = []
    for key, done in groups.items():
        model, method, controller = key
        base = {"model": model, "method": method, "n": len(done),
                "seeds": sorted(c["seed"] for c in done), "n_cells": n_cells[key]}
        eoc = [c.get("end_of_chain") or {} for c in done]
        agg = [c.get("aggregates") or {} for c in done]
        rows.append({**base, "controller": controller, "kind": "arm", "oracle": False,
                     "pass1_test": mean(e.get("pass1_test") for e in eoc),
                     "pass1_eval": mean(e.get("pass1_eval") for e in eoc),
                     "mean_peak": mean(a.get("mean_peak") for a in agg),
                     "mean_gap": mean(a.get("mean_gap") for a in agg),
                     "collapsed_campaigns": sum(a.get("collapsed_campaigns") or 0 for a in agg),
                     "signature_campaigns": sum(a.get("signature_campaigns") or 0 for a in agg),
                     "campaigns": sum(len(c.get("campaigns") or []) for c in done),
                     "verdicts": _arm_verdicts(agg)})
        if key not in reference:
            continue
        for kind, label in ORACLE_ROWS.items():
            picks = [(c.get("oracles") or {}).get(kind) or {} for c in done]
            rows.append({**base, "controller": label, "kind": "oracle", "oracle": True,
                         "of": controller,
                         "pass1_test": mean(o.get("pass1_test") for o in picks),
                         "pass1_eval": mean(o.get("pass1_eval") for o in picks)})
        rows.append({**base, "controller": "guard_lead_time", "kind": "guard_lead_time",
                     "oracle": False, "of": controller,
                     **_guard_row([c.get("guard") or {} for c in done])})
    return rows


# --------------------------------------------------------------------------- summaries
def seed_values(cells: Iterable[Mapping[str, Any]], row: Mapping[str, Any], split: str
                ) -> list[tuple[int, float]]:
    """Per-seed end-of-chain pass@1 on `split` ("test" or "eval") behind an `arms` row of
    kind "arm" (the cells' `end_of_chain`) or "oracle" (the source arm's cells' `oracles`),
    over the finished results.json cell entries of that arm, in `cells` order."""
    of = row["controller"] if row["kind"] == "arm" else row["of"]
    out = []
    for c in cells:
        if (c["model"], c["method"], c["controller"]) != (row["model"], row["method"], of) \
                or c.get("status") != "finished":
            continue
        if row["kind"] == "arm":
            src = c.get("end_of_chain") or {}
        else:
            src = (c.get("oracles") or {}).get(ORACLE_KINDS[row["controller"]]) or {}
        v = src.get(f"pass1_{split}")
        if v is not None:
            out.append((int(c["seed"]), float(v)))
    return out


def mean_ci(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """(mean, low, high) of the values that are not None, the interval by the project's
    bootstrap (`harness.stats.bootstrap_ci`: a seeded percentile bootstrap of the mean);
    None without values."""
    import numpy as np

    from harness.stats import bootstrap_ci

    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    lo, hi = bootstrap_ci(np.asarray(vals))
    return sum(vals) / len(vals), lo, hi


def campaign_signature(campaign: Record, steps: Iterable[Record], chain: Mapping[str, Any]
                       ) -> bool:
    """A campaign record's `signature`, or (traces written before it was recorded) the
    signature of its eval pass@1 curve (its records among the cell's `steps`) under the
    thresholds of the spec's `chain` section."""
    if "signature" in campaign:
        return bool(campaign["signature"])
    from harness.controllers.base import has_signature

    curve = [float(s["eval_pass1"]) for s in steps if s["campaign"] == campaign["index"]]
    return bool(curve) and has_signature(curve, float(chain.get("signature_rise", 0.05)),
                                         float(chain.get("signature_fall", 0.10)))
