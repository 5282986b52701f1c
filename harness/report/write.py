"""The report of a run: `build_report` assembles the document and its figures from the run's
data, `write_report` (what `harness report RUN` runs) writes report.md, report_figures/*.png
and report.html."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from harness import __version__
from harness.errors import UserError
from harness.report.data import RunData, comparison_rows, end_rows, load_run
from harness.report.figures import (
    fig_end_of_chain,
    fig_mean_curves,
    fig_peak_vs_end,
    fig_seed_curves,
    fig_verdict_kinds,
    png_bytes,
)
from harness.report.render import (
    FIG_DIR,
    Doc,
    _environment_lines,
    arms_table,
    cells_table,
    comparison_table,
    end_table,
    guard_table,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
        if g_head[5] == "signature":
            doc.p("The online collapse guard replayed on every finished campaign, scored as "
                  "`harness guard score` scores it: signature = eval pass@1 peaked at least "
                  "chain.signature_rise above its start and ended at least chain.signature_fall "
                  "below the peak (5 and 10 points by default); caught = fired "
                  "at least 2 steps before the onset (the first step after the peak below peak "
                  "- (peak - end)/2), late = with less lead or after it, missed = never fired; "
                  "false alarms = fired in a campaign without the signature (of those "
                  "campaigns); lead time = onset - trigger step.")
        else:
            doc.p("The online collapse guard replayed on every finished campaign: caught = "
                  "fired at or before the collapse onset, late = after it, missed = collapsed "
                  "and not caught, lead time = onset - trigger step.")
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
