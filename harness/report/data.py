"""The report's data: a run directory read (`load_run`: results.json, the resolved spec, the
environment and every cell's trace), and what the figures and tables draw from it: the
per-seed curves (`seed_curve`, `boundaries`, `mean_band`, `verdict_shares`), the end-of-chain
rows with their intervals (`end_rows`) and the comparisons (`comparison_rows`). The numbers
themselves come from `harness.results`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.results import arm_rows, campaign_signature, mean_ci, seed_values
from harness.runcheck import check_finished
from harness.rundir import read_json_object, read_results, require_run_dir
from harness.runner.trace import read_trace_checked

ArmKey = tuple[str, str, str]   # (model, method, controller) labels


# --------------------------------------------------------------------------- loading
@dataclass
class CellData:
    """One cell: its `results.json` entry and the step / campaign records of its trace."""

    entry: dict[str, Any]
    steps: list[dict[str, Any]]
    campaigns: list[dict[str, Any]]

    @property
    def key(self) -> ArmKey:
        return (self.entry["model"], self.entry["method"], self.entry["controller"])

    @property
    def seed(self) -> int:
        return int(self.entry["seed"])


@dataclass
class RunData:
    run_dir: Path
    results: dict[str, Any]
    resolved: dict[str, Any]
    environment: dict[str, Any]
    cells: list[CellData]
    missing: list[str] = field(default_factory=list)   # what the report cannot show

    @property
    def spec(self) -> dict[str, Any]:
        return self.resolved.get("spec") or {}

    def arm_keys(self) -> list[ArmKey]:
        """Arms in grid order, each once."""
        return list(dict.fromkeys(c.key for c in self.cells))

    def arm_cells(self, key: ArmKey) -> list[CellData]:
        return sorted((c for c in self.cells if c.key == key and c.steps), key=lambda c: c.seed)

    def label(self, key: ArmKey) -> str:
        multi = len({k[0] for k in self.arm_keys()}) > 1
        return f"{key[0]}: {key[1]}/{key[2]}" if multi else f"{key[1]}/{key[2]}"


def read_cell_trace(path: Path, complete: bool = False
                    ) -> tuple[list[dict[str, Any]], int | None]:
    """A cell's trace records and the number of a cut-off last line (None if none)
    (`harness.runner.trace.read_trace_checked`): a corrupt line, or a cut-off line in the
    trace of a finished cell (`complete`), is a one-line `UserError` naming file and line."""
    return read_trace_checked(path, complete=complete)


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; raise `UserError` naming the problem and the fix."""
    require_run_dir(run_dir)
    rerun = "run `harness bench SPEC --out RUN_DIR` to (re)collect it"
    results = read_results(run_dir, "`harness bench` writes it when it ends: re-run "
                           "`harness bench SPEC --out RUN_DIR` (finished cells are skipped)")
    if not isinstance(results.get("cells"), list):
        raise UserError(f"{run_dir / 'results.json'} is not a results file (no `cells`); "
                        f"{rerun}")
    resolved: dict[str, Any] = {}
    if (run_dir / "resolved_spec.json").exists():
        resolved = read_json_object(run_dir / "resolved_spec.json", "the run's resolved spec",
                                    rerun)
    env: dict[str, Any] = {}
    if (run_dir / "environment.json").exists():
        env = read_json_object(run_dir / "environment.json", "the run's environment", rerun)
    if "arms" not in results:  # written before schema 2
        results["arms"] = arm_rows(results["cells"])
    missing = []
    if not resolved:
        missing.append("resolved_spec.json is missing: spec details are left out")
    cells = []
    for entry in results["cells"]:
        cid = entry.get("cell_id", "?")
        path = run_dir / "cells" / cid / "trace.jsonl"
        status = entry.get("status", "missing")
        if not path.exists():
            if status == "finished":
                raise UserError(
                    f"cell {cid} is finished in results.json but {path} is missing; copy the "
                    "whole run directory (cells/*/trace.jsonl are the source of truth), or "
                    "delete the cell directory and re-run `harness bench`")
            missing.append(f"cell {cid}: {status}, no trace")
            cells.append(CellData(entry, [], []))
            continue
        records, torn = read_cell_trace(path, complete=status == "finished")
        if status == "finished":
            check_finished(run_dir, entry, path, records)
        elif torn is not None:
            missing.append(f"cell {cid}: {path}:{torn} is cut off (the step in flight when the "
                           "cell stopped, or is still running): left out")
        steps = [r for r in records if r.get("type") == "step"]
        camps = [r for r in records if r.get("type") == "campaign"]
        if status != "finished":
            missing.append(f"cell {cid}: {status}, {len(camps)} finished campaign(s) in its "
                           "trace (shown as far as it goes; no end-of-chain result)")
        cells.append(CellData(entry, steps, camps))
    return RunData(run_dir, results, resolved, env, cells, missing)


# --------------------------------------------------------------------------- curves
def seed_curve(steps: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(global steps, eval pass@1) of one cell in trace order; a campaign boundary appears as
    two points at the same global step (end of campaign k, start of k+1)."""
    xs = [float(s["global_step"]) for s in steps]
    ys = [float(s["eval_pass1"]) for s in steps]
    return xs, ys


def boundaries(steps: Sequence[dict[str, Any]]) -> list[float]:
    """Global steps where campaigns 1, 2, ... start."""
    return [float(s["global_step"]) for s in steps if s["step"] == 0 and s["campaign"] > 0]


def mean_band(curves: Sequence[tuple[list[float], list[float]]]
              ) -> tuple[list[float], list[float], list[float], list[float], list[int]]:
    """Mean, min and max over seeds at every global step any seed reached, over the seeds that
    reached it. A global step holding two records in a seed (a campaign boundary) gives two
    points, (the end of one campaign, the start of the next); other seeds contribute their
    single value to both. Returns (x, mean, low, high, n seeds)."""
    per_seed: list[dict[float, tuple[float, float]]] = []
    for xs, ys in curves:
        d: dict[float, tuple[float, float]] = {}
        for x, y in zip(xs, ys, strict=True):
            d[x] = (d[x][0], y) if x in d else (y, y)
        per_seed.append(d)
    grid = sorted({x for d in per_seed for x in d})
    ox: list[float] = []
    om: list[float] = []
    olo: list[float] = []
    ohi: list[float] = []
    on: list[int] = []
    for x in grid:
        for side in (0, 1):
            vals = [d[x][side] for d in per_seed if x in d]
            if side == 1 and all(d[x][0] == d[x][1] for d in per_seed if x in d):
                continue
            ox.append(x)
            om.append(sum(vals) / len(vals))
            olo.append(min(vals))
            ohi.append(max(vals))
            on.append(len(vals))
    return ox, om, olo, ohi, on


def verdict_shares(cells: Sequence[Any], part: str = "eval"
                   ) -> tuple[list[float], dict[str, list[float]]]:
    """(global steps, {kind: share of the samples}) of `part` ("eval" or "train") summed over
    the cells' seeds; at a campaign boundary the later record (the next campaign's start)
    stands for the step. Kinds never seen are left out."""
    from harness.runner.verdicts import KINDS

    totals: dict[float, dict[str, int]] = {}
    for c in cells:
        last: dict[float, dict[str, Any]] = {}
        for st in c.steps:
            counts = (st.get("verdicts") or {}).get(part)
            if counts:
                last[float(st["global_step"])] = counts
        for x, counts in last.items():
            t = totals.setdefault(x, dict.fromkeys(KINDS, 0))
            for k in KINDS:
                t[k] += int(counts.get(k, 0))
    xs = sorted(totals)
    shares: dict[str, list[float]] = {}
    for k in KINDS:
        col = [totals[x][k] / max(sum(totals[x].values()), 1) for x in xs]
        if any(col):
            shares[k] = col
    return xs, shares


def signature(run: RunData, cell: CellData, campaign: dict[str, Any]) -> bool:
    """Whether a campaign of a cell shows the study's signature
    (`harness.results.campaign_signature` under the spec's chain thresholds)."""
    return campaign_signature(campaign, cell.steps, run.spec.get("chain") or {})


def end_rows(run: RunData) -> list[dict[str, Any]]:
    """The arm and oracle rows of `arms` with per-seed values and bootstrap CIs."""
    rows = []
    entries = [c.entry for c in run.cells]
    for r in run.results.get("arms") or []:
        if r.get("kind") not in ("arm", "oracle"):
            continue
        test = seed_values(entries, r, "test")
        ev = seed_values(entries, r, "eval")
        if r["kind"] == "arm":
            label = run.label((r["model"], r["method"], r["controller"]))
        else:
            label = "* " + run.label((r["model"], r["method"], r["of"])) + \
                f" ({r['controller'].replace('_', ' ')})"
        rows.append({"label": label, "oracle": r["kind"] == "oracle", "n": len(test),
                     "n_cells": r.get("n_cells"), "test": test, "eval": ev,
                     "test_ci": mean_ci([v for _, v in test]), "eval_ci": mean_ci([v for _, v in ev])})
    return rows


def comparison_rows(run: RunData) -> tuple[list[dict[str, Any]] | None, str]:
    """The comparison rows and where they came from: results.json `comparisons`, else
    `harness.compare.evaluate_comparisons` on the resolved spec; None (and why) when neither
    is possible."""
    rows = run.results.get("comparisons")
    if rows is not None:
        return list(rows), "results.json"
    from pydantic import ValidationError

    from harness.compare import evaluate_comparisons
    from harness.spec import Spec

    if not run.spec:
        return None, "no comparisons evaluated (resolved_spec.json is missing)"
    try:
        spec = Spec.model_validate(run.spec)
    except ValidationError as e:
        first = str(e).splitlines()[0]
        return None, ("no comparisons evaluated (resolved_spec.json does not validate against "
                      f"this harness's spec schema: {first})")
    rows = evaluate_comparisons(spec, run.results)
    return [dict(r) for r in rows], "evaluated now by harness.compare (not in results.json)"


