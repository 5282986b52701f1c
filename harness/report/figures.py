"""The report's figures, drawn with matplotlib's Agg renderer on `Figure` objects (no pyplot
state): the mean and per-seed eval pass@1 curves, the verdict kinds over the chain, the
end-of-chain pass@1 with intervals and every campaign's peak against its end; each with its
caption. `png_bytes` renders one."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from harness.report.data import (
    RunData,
    boundaries,
    mean_band,
    seed_curve,
    signature,
    verdict_shares,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
                sel = [(r, s) for r, s in peaks if signature(run, c, r) is sig]
                ax.plot([s["global_step"] for _, s in sel], [r["peak"] for r, _ in sel],
                        ls="none", marker=marker, ms=ms, color=colour_of[c.seed])
        drawn.add(_mark_boundaries(ax, [boundaries(c.steps) for c in cells],
                                   [colour_of[c.seed] for c in cells]))
        n_camps = sum(len(c.campaigns) for c in cells)
        n_sig = sum(signature(run, c, r) for c in cells for r in c.campaigns)
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
        n_sig = sum(signature(run, c, r) for c in run.arm_cells(key) for r in c.campaigns)
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
