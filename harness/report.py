"""`harness report RUN`: a run directory as `report.md` and a self-contained `report.html`.

Everything is derived from the run directory: `results.json` (cells, `arms`, `comparisons`),
`resolved_spec.json`, `environment.json` and each cell's `trace.jsonl` (the per-step eval
pass@1 curves). Plots are drawn with matplotlib's Agg renderer on `Figure` objects (no pyplot
state); the HTML embeds them as base64 PNG, the Markdown links the PNG files written beside it
in `report_figures/`.

A partial run (cells missing, unfinished or failed) is reported as far as it goes, and the
report says what is missing. A cell that `results.json` lists as finished but whose trace is
gone is an error: the run directory is incomplete, and a report from it would be silently wrong.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import __version__
from harness.errors import UserError
from harness.rundir import read_json_object

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ArmKey = tuple[str, str, str]   # (model, method, controller) labels
FIG_DIR = "report_figures"
ORACLE_KINDS = {"trace_oracle": "trace", "hindsight_oracle": "hindsight"}


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


def _read_trace(path: Path) -> list[dict[str, Any]]:
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith("\n"):
                    break  # a torn last line: the step in flight when the cell stopped
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{n}: not a JSON line; the trace is corrupt: "
                                    "delete the cell directory and re-run `harness bench`"
                                    ) from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return records


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; raise `UserError` naming the problem and the fix."""
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass the directory "
                        "`harness bench` wrote (runs/<spec>@<version>/<run-id>, or its --out)")
    rerun = "run `harness bench SPEC --out RUN_DIR` to (re)collect it"
    results = read_json_object(run_dir / "results.json", "the run's results",
                               "`harness bench` writes it when it ends: wait for a running "
                               "bench, or re-run `harness bench SPEC --out RUN_DIR` (finished "
                               "cells are skipped)")
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
        from harness.bench import arm_rows

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
        records = _read_trace(path)
        steps = [r for r in records if r.get("type") == "step"]
        camps = [r for r in records if r.get("type") == "campaign"]
        if status != "finished":
            missing.append(f"cell {cid}: {status}, {len(camps)} finished campaign(s) in its "
                           "trace (shown as far as it goes; no end-of-chain result)")
        cells.append(CellData(entry, steps, camps))
    return RunData(run_dir, results, resolved, env, cells, missing)


# --------------------------------------------------------------------------- statistics
def _ci(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) by the project's bootstrap (`harness.stats.bootstrap_ci`: seeded
    percentile bootstrap of the mean); None without values."""
    from harness.stats import bootstrap_ci

    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    import numpy as np

    lo, hi = bootstrap_ci(np.asarray(vals))
    return sum(vals) / len(vals), lo, hi


def _seed_values(run: RunData, row: dict[str, Any], split: str) -> list[tuple[int, float]]:
    """Per-seed end-of-chain values behind an `arms` row (an arm or an oracle row)."""
    out = []
    if row["kind"] == "arm":
        key = (row["model"], row["method"], row["controller"])
    else:
        key = (row["model"], row["method"], row["of"])
    for c in run.cells:
        if c.key != key or c.entry.get("status") != "finished":
            continue
        if row["kind"] == "arm":
            src = c.entry.get("end_of_chain") or {}
        else:
            src = (c.entry.get("oracles") or {}).get(ORACLE_KINDS[row["controller"]]) or {}
        v = src.get(f"pass1_{split}")
        if v is not None:
            out.append((c.seed, float(v)))
    return out


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


# --------------------------------------------------------------------------- figures
def _colours(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _grid(n: int, ncols: int = 3, w: float = 4.6, h: float = 3.2
          ) -> tuple[Figure, list[Any]]:
    from matplotlib.figure import Figure

    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    # at least 8 inches wide: one or two panels stay readable and the legend below fits
    fig = Figure(figsize=(max(8.0, w * ncols), h * nrows + 0.6), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _legend_cols(fig: Figure, handles: Sequence[Any]) -> int:
    """Columns for a legend below the panels: as many as fit the figure's width."""
    longest = max(len(str(h.get_label())) for h in handles)
    per = 0.45 + 0.065 * longest   # inches per entry at font size 8
    return max(1, min(len(handles), int(fig.get_figwidth() / per)))


def _tick_height(n_seeds: int) -> float:
    return min(0.035, 0.2 / n_seeds)


def _headroom(axes: Sequence[Any], n_seeds: int) -> None:
    """Raise the (shared) y limit so the per-seed tick rows sit above the curves."""
    frac = n_seeds * _tick_height(n_seeds) + 0.01
    lo, hi = axes[0].get_ylim()
    axes[0].set_ylim(lo, hi + (hi - lo) * frac / (1 - frac))


def _mark_boundaries(ax: Any, per_seed: Sequence[list[float]], colours: Sequence[Any]) -> str:
    """Campaign starts: dashed grey lines when every seed shares them; else, since seeds'
    campaigns differ in length, one row of short ticks per seed along the top edge, in the
    seed's colour (full-height lines for every seed turn into a haze). Returns which."""
    if not per_seed:
        return ""
    if all(b == per_seed[0] for b in per_seed):
        for x in per_seed[0]:
            ax.axvline(x, color="0.55", lw=0.9, ls="--", zorder=0)
        return "shared"
    h = _tick_height(len(per_seed))
    for i, bs in enumerate(per_seed):
        for x in bs:
            ax.axvline(x, ymin=1 - (i + 1) * h, ymax=1 - i * h, color=colours[i], lw=1.2,
                       zorder=1)
    return "per seed"


def _seed_colours(run: RunData) -> dict[int, Any]:
    """One colour per seed, the same in every figure."""
    seeds = sorted({c.seed for c in run.cells if c.steps})
    return dict(zip(seeds, _colours(len(seeds)), strict=True))


def _label_outer(axes: Sequence[Any], ylabel: str = "eval pass@1") -> None:
    for ax in axes:
        if ax.get_subplotspec().is_last_row():
            ax.set_xlabel("global step")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(ylabel)


BOUNDARY_NOTE = ("vertical lines mark campaign starts (dashed grey when all seeds of an arm "
                 "share them; where a controller gives seeds different budgets, each seed's "
                 "campaign starts are short ticks in its colour along the top edge)")


def fig_mean_curves(run: RunData) -> tuple[Figure, str] | None:
    """Per arm: mean eval pass@1 over seeds against global step, min-max band."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    keys = [k for k in run.arm_keys() if run.arm_cells(k)]
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    colour_of = _seed_colours(run)
    drawn = set()
    for ax, key, colour in zip(axes, keys, _colours(len(keys)), strict=True):
        cells = run.arm_cells(key)
        x, m, lo, hi, n = mean_band([seed_curve(c.steps) for c in cells])
        ax.fill_between(x, lo, hi, color=colour, alpha=0.22, lw=0)
        ax.plot(x, m, color=colour, lw=1.8)
        drawn.add(_mark_boundaries(ax, [boundaries(c.steps) for c in cells],
                                   [colour_of[c.seed] for c in cells]))
        ax.set_title(f"{run.label(key)}  ({len(cells)} seed{'s' * (len(cells) != 1)})",
                     fontsize=10)
        ax.grid(alpha=0.3)
        if min(n) != max(n):
            ax.text(0.99, 0.02, f"seeds per point: {min(n)}-{max(n)}", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color="0.35")
    _label_outer(axes)
    if "per seed" in drawn:
        _headroom(axes, max(len(run.arm_cells(k)) for k in keys))
    handles: list[Any] = [Line2D([], [], color="0.25", lw=1.8, label="mean over seeds"),
                          Patch(color="0.25", alpha=0.22, label="min-max over seeds")]
    if "per seed" in drawn:
        handles += [Line2D([], [], color=c, lw=1.2, label=f"seed {s} campaign starts")
                    for s, c in colour_of.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=_legend_cols(fig, handles),
               fontsize=8, frameon=False)
    caption = ("Eval pass@1 after every step, per arm: line = mean over seeds, band = min-max "
               "over seeds (at each global step, over the seeds that reached it); "
               + BOUNDARY_NOTE + ". A campaign boundary holds two points (end of one campaign, "
               "start of the next): a vertical jump there is carryover, e.g. a rollback.")
    return fig, caption


# verdict kinds in plotting order (runner/verdicts.py), each with a fixed colour
KIND_COLOURS = {"passed": "#2ca02c", "wrong_answer": "#ff7f0e", "syntax_error": "#d62728",
                "runtime_error": "#9467bd", "timeout": "#8c564b", "memory": "#e377c2",
                "output_limit": "#bcbd22", "violation": "#000000", "no_code": "#7f7f7f",
                "truncated": "#17becf", "infra": "#c7c7c7"}


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


def fig_verdict_kinds(run: RunData) -> tuple[Figure, str] | None:
    """Per arm: the share of eval samples of each verdict kind against global step (stacked,
    all seeds pooled), with the arm's mean eval pass@1 over it."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    keys = [k for k in run.arm_keys() if verdict_shares(run.arm_cells(k))[0]]
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    seen: set[str] = set()
    for ax, key in zip(axes, keys, strict=True):
        cells = run.arm_cells(key)
        xs, shares = verdict_shares(cells)
        ax.stackplot(xs, *shares.values(), colors=[KIND_COLOURS[k] for k in shares],
                     alpha=0.85, lw=0)
        seen.update(shares)
        x, m, _, _, _ = mean_band([seed_curve(c.steps) for c in cells])
        ax.plot(x, m, color="white", lw=2.6)
        ax.plot(x, m, color="black", lw=1.2)
        ax.set_ylim(0, 1)
        ax.set_xlim(min(xs), max(xs))
        ax.set_title(f"{run.label(key)}  ({len(cells)} seed{'s' * (len(cells) != 1)})",
                     fontsize=10)
    _label_outer(axes, "share of eval samples")
    handles: list[Any] = [Patch(color=KIND_COLOURS[k], label=k.replace("_", " "))
                          for k in KIND_COLOURS if k in seen]
    handles.append(Line2D([], [], color="black", lw=1.2, label="mean eval pass@1"))
    fig.legend(handles=handles, loc="outside lower center", ncol=_legend_cols(fig, handles),
               fontsize=8, frameon=False)
    caption = ("What the eval samples were, per arm, against global step: the share of each "
               "verdict kind (all seeds pooled; stacked, so the bands add up to 1), with the "
               "mean eval pass@1 over it. When pass@1 falls, the band that grows is what the "
               "policy collapsed into: wrong answers (it still writes code that runs), syntax "
               "errors or truncated completions (it stopped writing code), timeouts. `infra` "
               "samples (the grader failed) are not in pass@1.")
    return fig, caption


def _signature(run: RunData, cell: Any, campaign: dict[str, Any]) -> bool:
    """The campaign record's `signature`, or (traces written before it was recorded) the
    signature of its eval curve under the spec's thresholds."""
    if "signature" in campaign:
        return bool(campaign["signature"])
    from harness.controllers.base import has_signature

    chain = run.spec.get("chain") or {}
    curve = [float(s["eval_pass1"]) for s in cell.steps if s["campaign"] == campaign["index"]]
    return bool(curve) and has_signature(curve, float(chain.get("signature_rise", 0.05)),
                                         float(chain.get("signature_fall", 0.10)))


def fig_seed_curves(run: RunData) -> tuple[Figure, str] | None:
    """Small multiples: per arm, one line per seed."""
    from matplotlib.lines import Line2D

    keys = [k for k in run.arm_keys() if run.arm_cells(k)]
    if not keys:
        return None
    colour_of = _seed_colours(run)
    seeds = list(colour_of)
    fig, axes = _grid(len(keys))
    drawn = set()
    for ax, key in zip(axes, keys, strict=True):
        cells = run.arm_cells(key)
        for c in cells:
            xs, ys = seed_curve(c.steps)
            ax.plot(xs, ys, color=colour_of[c.seed], lw=1.2)
            peaks = [(r, s) for r in c.campaigns for s in c.steps
                     if s["campaign"] == r["index"] and s["step"] == r["peak_step"]]
            for sig, marker, ms in ((False, "^", 4), (True, "*", 8)):
                sel = [(r, s) for r, s in peaks if _signature(run, c, r) is sig]
                ax.plot([s["global_step"] for _, s in sel], [r["peak"] for r, _ in sel],
                        ls="none", marker=marker, ms=ms, color=colour_of[c.seed])
        drawn.add(_mark_boundaries(ax, [boundaries(c.steps) for c in cells],
                                   [colour_of[c.seed] for c in cells]))
        n_camps = sum(len(c.campaigns) for c in cells)
        n_sig = sum(_signature(run, c, r) for c in cells for r in c.campaigns)
        ax.set_title(f"{run.label(key)}  (signature {n_sig}/{n_camps})", fontsize=10)
        ax.grid(alpha=0.3)
    _label_outer(axes)
    if "per seed" in drawn:
        _headroom(axes, max(len(run.arm_cells(k)) for k in keys))
    handles = [Line2D([], [], color=colour_of[s], lw=1.5, label=f"seed {s}") for s in seeds]
    handles.append(Line2D([], [], color="0.3", ls="none", marker="^", ms=5,
                          label="campaign peak"))
    handles.append(Line2D([], [], color="0.3", ls="none", marker="*", ms=8,
                          label="peak of a campaign with the study's signature"))
    fig.legend(handles=handles, loc="outside lower center", ncol=_legend_cols(fig, handles),
               fontsize=8, frameon=False)
    chain = run.spec.get("chain") or {}
    rise = 100 * float(chain.get("signature_rise", 0.05))
    fall = 100 * float(chain.get("signature_fall", 0.10))
    caption = ("Each seed's eval pass@1 trajectory, one panel per arm (same colour = same seed "
               "in every figure); triangles mark each campaign's peak, stars the peak of a "
               f"campaign with the study's signature (a peak >= {rise:g} points above its "
               f"start, an end >= {fall:g} points below its peak; the panel title counts "
               "them); " + BOUNDARY_NOTE + ".")
    return fig, caption


def end_rows(run: RunData) -> list[dict[str, Any]]:
    """The arm and oracle rows of `arms` with per-seed values and bootstrap CIs."""
    rows = []
    for r in run.results.get("arms") or []:
        if r.get("kind") not in ("arm", "oracle"):
            continue
        test = _seed_values(run, r, "test")
        ev = _seed_values(run, r, "eval")
        if r["kind"] == "arm":
            label = run.label((r["model"], r["method"], r["controller"]))
        else:
            label = "* " + run.label((r["model"], r["method"], r["of"])) + \
                f" ({r['controller'].replace('_', ' ')})"
        rows.append({"label": label, "oracle": r["kind"] == "oracle", "n": len(test),
                     "n_cells": r.get("n_cells"), "test": test, "eval": ev,
                     "test_ci": _ci([v for _, v in test]), "eval_ci": _ci([v for _, v in ev])})
    return rows


def fig_end_of_chain(run: RunData, rows: list[dict[str, Any]]) -> tuple[Figure, str] | None:
    """End-of-chain pass@1: test mean with 95% CI per row, eval beside it; oracles marked."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = [r for r in rows if r["test"] or r["eval"]]
    if not rows:
        return None
    fig = Figure(figsize=(9, 0.55 * len(rows) + 1.6), layout="constrained")
    ax = fig.subplots()
    arm_c, ref_c = "tab:blue", "0.45"
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        c = ref_c if r["oracle"] else arm_c
        if r["oracle"]:
            ax.axhspan(y - 0.5, y + 0.5, color="0.93", zorder=0)
        for off, split, filled in ((0.12, "test", True), (-0.18, "eval", False)):
            ci = r[f"{split}_ci"]
            if ci is None:
                continue
            m, lo, hi = ci
            ax.errorbar([m], [y + off], xerr=[[m - lo], [hi - m]], fmt="D" if r["oracle"] else "o",
                        ms=7 if filled else 6, color=c, mfc=c if filled else "white", mew=1.5,
                        capsize=3, lw=1.4 if filled else 1.0, zorder=3)
            ax.plot([v for _, v in r[split]], [y + off] * len(r[split]), ls="none", marker="|",
                    ms=13, mew=1.0, color="0.15", alpha=0.6, zorder=4)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["label"] for r in reversed(rows)], fontsize=9)
    for tick, r in zip(ax.get_yticklabels(), reversed(rows), strict=True):
        if r["oracle"]:
            tick.set_color("0.35")
            tick.set_fontstyle("italic")
    ax.set_ylim(-0.6, len(rows) - 0.4)
    top = max(max(r[f"{sp}_ci"][2], *(v for _, v in r[sp])) for r in rows
              for sp in ("test", "eval") if r[f"{sp}_ci"] is not None)
    ax.set_xlim(0, min(1.02, top + 0.04))
    ax.set_xlabel("end-of-chain pass@1")
    ax.grid(axis="x", alpha=0.3)
    handles = [
        Line2D([], [], color=arm_c, marker="o", label="test split: mean, 95% CI"),
        Line2D([], [], color=arm_c, marker="o", mfc="white", lw=1.0,
               label="eval split (selection): mean, 95% CI"),
        Line2D([], [], color="0.15", marker="|", ls="none", ms=13, alpha=0.6,
               label="one seed")]
    if any(r["oracle"] for r in rows):
        handles.append(Line2D([], [], color=ref_c, marker="D",
                              label="* oracle reference row (not an arm)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    caption = ("End-of-chain pass@1 per arm on the test split (filled: mean over seeds, 95% "
               "percentile-bootstrap CI over seeds) with the eval-split selection value beside "
               "it (hollow); ticks are single seeds. Grey rows marked * are oracle references "
               "computed from the naive traces (upper references, not arms; their eval value "
               "is the maximum of noisy estimates, so optimistic). With few seeds a bootstrap "
               "CI is too narrow.")
    return fig, caption


def fig_peak_vs_end(run: RunData) -> tuple[Figure, str] | None:
    """Scatter of every campaign's peak against its end, coloured by arm."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    keys = [k for k in run.arm_keys() if any(c.campaigns for c in run.arm_cells(k))]
    if not keys:
        return None
    thr = float((run.spec.get("chain") or {}).get("collapse_threshold", 0.2))
    fig = Figure(figsize=(6.8, 5.6), layout="constrained")
    ax = fig.subplots()
    colours = _colours(len(keys))
    hi = 0.0
    handles = []
    for key, colour in zip(keys, colours, strict=True):
        pts = [(r["peak"], r["end"], bool(r["collapsed"]))
               for c in run.arm_cells(key) for r in c.campaigns]
        hi = max(hi, *(p for p, _, _ in pts))
        for collapsed in (True, False):
            sel = [(p, e) for p, e, k in pts if k is collapsed]
            if sel:
                ax.scatter([p for p, _ in sel], [e for _, e in sel], s=36, color=colour,
                           facecolors=colour if collapsed else "none", lw=1.3, alpha=0.8,
                           zorder=3)
        n_col = sum(1 for *_, k in pts if k)
        n_sig = sum(_signature(run, c, r) for c in run.arm_cells(key) for r in c.campaigns)
        handles.append(Line2D([], [], ls="none", marker="o", color=colour,
                              label=f"{run.label(key)}  ({n_col}/{len(pts)} collapsed, "
                                    f"{n_sig} signature)"))
    top = min(1.0, hi + 0.05) if hi > 0 else 1.0
    ax.plot([0, top], [0, top], color="0.3", lw=1, label="end = peak")
    ax.plot([thr, top], [0, top - thr], color="tab:red", lw=1, ls="--")
    ax.fill_between([thr, top], [0, 0], [0, top - thr], color="tab:red", alpha=0.07, lw=0)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("campaign peak (eval pass@1)")
    ax.set_ylabel("campaign end (eval pass@1)")
    ax.grid(alpha=0.3)
    handles += [Line2D([], [], color="0.3", lw=1, label="end = peak (no drop)"),
                Line2D([], [], color="tab:red", lw=1, ls="--",
                       label=f"end = peak - {thr:g}: below it collapsed"),
                Line2D([], [], ls="none", marker="o", color="0.3", label="filled: collapsed"),
                Line2D([], [], ls="none", marker="o", mfc="none", color="0.3",
                       label="hollow: not collapsed")]
    ax.legend(handles=handles, loc="upper left", fontsize=7.5, framealpha=0.9)
    caption = (f"Peak against end of every finished campaign, coloured by arm. Every point lies "
               f"on or below the diagonal (the end cannot exceed the peak); points below the "
               f"dashed red line (gap > {thr:g}, shaded) collapsed.")
    return fig, caption


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


# --------------------------------------------------------------------------- tables
def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci_txt(ci: tuple[float, float, float] | None) -> tuple[str, str]:
    if ci is None:
        return "-", "-"
    return _f(ci[0]), f"[{_f(ci[1])}, {_f(ci[2])}]"


def arms_table(run: RunData) -> tuple[list[str], list[list[str]], list[int]]:
    """The `arm` and `oracle` rows of `arms` (and the indices of the oracle rows)."""
    head = ["model", "method", "controller", "seeds", "test p@1", "eval p@1", "mean peak",
            "mean gap", "collapsed", "signature"]
    rows: list[list[str]] = []
    refs = []
    for r in run.results.get("arms") or []:
        seeds = f"{r['n']}/{r['n_cells']}"
        if r["kind"] == "arm":
            rows.append([r["model"], r["method"], r["controller"], seeds, _f(r["pass1_test"]),
                         _f(r["pass1_eval"]), _f(r.get("mean_peak")), _f(r.get("mean_gap")),
                         f"{r['collapsed_campaigns']}/{r['campaigns']}" if r.get("campaigns")
                         else "-",
                         f"{r.get('signature_campaigns', 0)}/{r['campaigns']}"
                         if r.get("campaigns") else "-"])
        elif r["kind"] == "oracle":
            refs.append(len(rows))
            rows.append([r["model"], r["method"], f"* {r['controller']} of {r['of']}", seeds,
                         _f(r["pass1_test"]), _f(r["pass1_eval"]), "", "", "", ""])
    return head, rows, refs


def guard_table(run: RunData) -> tuple[list[str], list[list[str]]]:
    head = ["model", "method", "on", "seeds", "campaigns", "collapsed", "caught", "late",
            "missed", "false alarms", "mean lead time (steps)"]
    rows = []
    for r in run.results.get("arms") or []:
        if r["kind"] != "guard_lead_time":
            continue
        rows.append([r["model"], r["method"], r["of"], f"{r['n']}/{r['n_cells']}",
                     str(r["campaigns"]), str(r["collapsed"]), str(r["caught"]), str(r["late"]),
                     str(r["missed"]), str(r["false_alarms"]), _f(r["mean_lead_time"], 1)])
    return head, rows


def end_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]], list[int]]:
    head = ["arm", "seeds", "test p@1", "test 95% CI", "eval p@1", "eval 95% CI"]
    out = [[r["label"], f"{r['n']}/{r['n_cells']}", *_ci_txt(r["test_ci"]),
            *_ci_txt(r["eval_ci"])] for r in rows]
    return head, out, [i for i, r in enumerate(rows) if r["oracle"]]


def cells_table(run: RunData) -> tuple[list[str], list[list[str]]]:
    head = ["cell", "seed", "status", "test p@1", "eval p@1", "campaigns", "collapsed",
            "signature"]
    rows = []
    for c in run.cells:
        eoc = c.entry.get("end_of_chain") or {}
        camps = c.campaigns or c.entry.get("campaigns") or []
        rows.append([c.entry.get("cell_id", "?"), str(c.seed), c.entry.get("status", "?"),
                     _f(eoc.get("pass1_test")), _f(eoc.get("pass1_eval")), str(len(camps)),
                     str(sum(1 for k in camps if k.get("collapsed"))),
                     str(sum(1 for k in camps if k.get("signature")))])
    return head, rows


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


def comparison_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    out = []
    for r in rows:
        ci = "-" if r.get("ci_low") is None else f"[{_f(r['ci_low'])}, {_f(r.get('ci_high'))}]"
        wins = "-" if r.get("wins") is None else f"{r['wins']}/{r.get('n', '?')}"
        p = r.get("p_value")
        out.append([str(r.get("model", "")), str(r.get("candidate", "")),
                    str(r.get("baseline", "")), str(r.get("metric", "")),
                    str(r.get("expect", "")), "yes" if r.get("gate") else "no",
                    str(r.get("n", "-")), _f(r.get("mean_diff")), ci, wins,
                    "-" if p is None else f"{p:.3g}", str(r.get("verdict", "")),
                    str(r.get("outcome", "")), str(r.get("reason", ""))])
    return ["model", "candidate", "baseline", "metric", "expect", "gate", "n", "mean diff",
            "95% CI", "wins", "p", "verdict", "outcome", "reason"], out


# --------------------------------------------------------------------------- document
@dataclass
class Doc:
    """A report as a list of blocks, rendered to Markdown and to HTML."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str) -> None:
        self.blocks.append(("h", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, lines: list[str]) -> None:
        self.blocks.append(("ul", lines))

    def table(self, head: list[str], rows: list[list[str]], refs: Sequence[int] = ()) -> None:
        """`refs`: indices of reference rows (oracles), set apart in the HTML."""
        self.blocks.append(("table", (head, rows, set(refs))))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.blocks.append(("fig", (name, png, caption)))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, b in self.blocks:
            if kind == "h":
                out += [f"## {b}", ""]
            elif kind == "p":
                out += [b, ""]
            elif kind == "ul":
                out += [f"- {x}" for x in b] + [""]
            elif kind == "table":
                head, rows, _ = b
                cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                out.append("| " + " | ".join(cell(h) for h in head) + " |")
                out.append("|" + "|".join(" --- " for _ in head) + "|")
                out += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
                out.append("")
            else:
                name, _, caption = b
                out += [f"![{name}]({FIG_DIR}/{name}.png)", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, b in self.blocks:
            if kind == "h":
                body.append(f"<h2>{e(b)}</h2>")
            elif kind == "p":
                body.append(f"<p>{e(b)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b) + "</ul>")
            elif kind == "table":
                head, rows, refs = b
                trs = "".join(
                    ('<tr class="ref">' if i in refs else "<tr>")
                    + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>"
                    for i, r in enumerate(rows))
                body.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head)
                            + f"</tr></thead><tbody>{trs}</tbody></table>")
            else:
                name, png, caption = b
                data = base64.b64encode(png).decode("ascii")
                body.append(f'<figure id="{e(name)}"><img alt="{e(name)}" '
                            f'src="data:image/png;base64,{data}">'
                            f"<figcaption>{e(caption)}</figcaption></figure>")
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(self.title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;"
    "margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}"
    "table{border-collapse:collapse;font-size:.86em;margin:.6em 0}"
    "th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left}"
    "th{background:#f2f2f2}tr.ref td{color:#666;font-style:italic;background:#fafafa}"
    "figure{margin:1em 0}img{max-width:100%;height:auto}"
    "figcaption{font-size:.88em;color:#444;max-width:62em}"
)


def _environment_lines(env: dict[str, Any]) -> list[str]:
    if not env:
        return ["environment.json is missing"]
    pk = env.get("packages") or {}
    cpu = env.get("cpu") or {}
    lines = [
        f"harness {env.get('harness_version', '?')}, git commit {env.get('git_commit') or '?'}",
        f"Python {env.get('python', '?')} on {env.get('platform', '?')}",
        f"CPU: {cpu.get('model', '?')} x {cpu.get('count', '?')}; torch threads "
        f"{env.get('torch_threads', '?')}; GPU: "
        + (", ".join(env["gpu"]) + f" (CUDA {env.get('cuda')})" if env.get("gpu") else "none"),
    ]
    if pk:
        lines.append("packages: " + ", ".join(f"{k} {v}" for k, v in sorted(pk.items())))
    return lines


def build_report(run: RunData) -> tuple[Doc, dict[str, bytes]]:
    """The report document and its figures (name -> PNG bytes)."""
    r = run.results
    doc = Doc(f"{r.get('spec', '?')}@{r.get('version', '?')}: rise-and-collapse report")
    figures: dict[str, bytes] = {}

    def add_figure(name: str, made: tuple[Figure, str] | None, none: str) -> None:
        if made is None:
            doc.p(none)
            return
        figures[name] = png_bytes(made[0])
        doc.figure(name, figures[name], made[1])

    spec = run.spec
    chain = spec.get("chain") or {}
    head = [
        f"spec: {r.get('spec')} version {r.get('version')}, spec_hash {r.get('spec_hash')}",
        f"grid_hash: {run.resolved.get('grid_hash', '?')}",
        f"results written by harness {r.get('harness_version', '?')} (results schema "
        f"{r.get('schema_version', '?')}); report by harness {__version__}",
        f"run directory: {run.run_dir}",
    ]
    if chain:
        head.append(f"chain: campaigns {chain.get('campaigns')}, steps per campaign up to "
                    f"{chain.get('steps')}; collapsed = peak - end > "
                    f"{chain.get('collapse_threshold')}")
    status: dict[str, int] = {}
    for c in run.cells:
        s = c.entry.get("status", "missing")
        status[s] = status.get(s, 0) + 1
    head.append(f"cells: {len(run.cells)} (" + ", ".join(f"{n} {s}" for s, n in status.items())
                + ")")
    doc.items(head)
    if spec.get("description"):
        doc.p(" ".join(str(spec["description"]).split()))
    doc.h("Environment")
    doc.items(_environment_lines(run.environment))
    if run.missing:
        doc.h("Missing from this report")
        doc.items(run.missing)

    doc.h("Arms")
    doc.p("Means over finished seeds (seeds = finished / cells in the grid). Rows marked * are "
          "oracle references computed from the naive traces, not arms.")
    doc.table(*arms_table(run))

    doc.h("Eval pass@1 over the chain (mean over seeds)")
    add_figure("mean_curves", fig_mean_curves(run), "No step records in any trace.")
    doc.h("Eval pass@1 per seed")
    add_figure("seed_curves", fig_seed_curves(run), "No step records in any trace.")
    doc.h("What the samples were: verdict kinds over the chain")
    add_figure("verdict_kinds", fig_verdict_kinds(run),
               "No verdict kinds in the traces (written before they were recorded).")

    doc.h("End-of-chain pass@1")
    rows = end_rows(run)
    add_figure("end_of_chain", fig_end_of_chain(run, rows),
               "No finished cell: no end-of-chain result yet.")
    doc.table(*end_table(rows))

    doc.h("Peak against end, per campaign")
    add_figure("peak_vs_end", fig_peak_vs_end(run), "No finished campaign in any trace.")

    doc.h("Collapse guard lead time (offline, on the naive traces)")
    g_head, g_rows = guard_table(run)
    if g_rows:
        doc.p("The online collapse guard replayed on every finished campaign: caught = fired at "
              "or before the collapse onset, late = after it, missed = collapsed and not "
              "caught, lead time = onset - trigger step.")
        doc.table(g_head, g_rows)
        params = [r.get("params") for r in run.results.get("arms") or []
                  if r["kind"] == "guard_lead_time" and r.get("params")]
        if params:
            doc.p("Guard parameters: " + ", ".join(f"{k}={v}" for k, v in params[0].items()))
    else:
        doc.p("No guard lead-time rows (they are computed for naive arms only).")

    doc.h("Comparisons")
    comps, source = comparison_rows(run)
    if comps is None:
        doc.p(source[0].upper() + source[1:] + ".")
    elif not comps:
        doc.p("The spec declares no comparisons.")
    else:
        doc.p(f"Paired by seed (candidate - baseline); source: {source}.")
        doc.table(*comparison_table(comps))

    doc.h("Cells")
    doc.table(*cells_table(run))
    return doc, figures


def write_report(run_dir: Path, out: Path | None = None) -> tuple[Path, Path, list[str]]:
    """Write report.md (with report_figures/*.png) and a self-contained report.html into
    `out` (default: the run directory). Returns (md path, html path, what is missing)."""
    run = load_run(run_dir)
    doc, figures = build_report(run)
    out = out or run_dir
    try:
        (out / FIG_DIR).mkdir(parents=True, exist_ok=True)
        for name, png in figures.items():
            (out / FIG_DIR / f"{name}.png").write_bytes(png)
        (out / "report.md").write_text(doc.markdown(), encoding="utf-8")
        (out / "report.html").write_text(doc.html(), encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write the report into {out}: {e.strerror or e}; choose another "
                        "--out") from None
    return out / "report.md", out / "report.html", run.missing
