"""`harness report RUN`: a run directory as `report.md` and a self-contained `report.html`.

Everything is derived from the run directory: `results.json` (cells, `arms`, `comparisons`),
`resolved_spec.json`, `environment.json` and each cell's `trace.jsonl` (the per-step eval
pass@1 curves). Plots are drawn with matplotlib's Agg renderer on `Figure` objects (no pyplot
state); the HTML embeds them as base64 PNG, the Markdown links the PNG files written beside it
in `report_figures/`.

A partial run (cells missing, unfinished or failed) is reported as far as it goes, and the
report says what is missing. A cell that `results.json` lists as finished but whose trace is
gone is an error: the run directory is incomplete, and a report from it would be silently wrong.

The package, by job: `data` (loading a run directory, and the curves and rows drawn from it),
`figures` (the plots), `render` (the tables and the Markdown / HTML document), `write`
(`build_report`, and `write_report`, the entry point of `harness report`). The numbers come
from `harness.results`.
"""

from harness.report.data import (
    ArmKey,
    CellData,
    RunData,
    boundaries,
    comparison_rows,
    end_rows,
    load_run,
    mean_band,
    read_cell_trace,
    seed_curve,
    verdict_shares,
)
from harness.report.figures import (
    BOUNDARY_NOTE,
    KIND_COLOURS,
    fig_end_of_chain,
    fig_mean_curves,
    fig_peak_vs_end,
    fig_seed_curves,
    fig_verdict_kinds,
    png_bytes,
)
from harness.report.render import (
    CSS,
    FIG_DIR,
    Doc,
    arms_table,
    cells_table,
    comparison_table,
    end_table,
    guard_table,
)
from harness.report.write import build_report, write_report

__all__ = [
    "BOUNDARY_NOTE",
    "CSS",
    "FIG_DIR",
    "KIND_COLOURS",
    "ArmKey",
    "CellData",
    "Doc",
    "RunData",
    "arms_table",
    "boundaries",
    "build_report",
    "cells_table",
    "comparison_rows",
    "comparison_table",
    "end_rows",
    "end_table",
    "fig_end_of_chain",
    "fig_mean_curves",
    "fig_peak_vs_end",
    "fig_seed_curves",
    "fig_verdict_kinds",
    "guard_table",
    "load_run",
    "mean_band",
    "png_bytes",
    "read_cell_trace",
    "seed_curve",
    "verdict_shares",
    "write_report",
]
