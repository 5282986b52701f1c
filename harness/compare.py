"""Comparisons of a run: the spec's declared comparisons and same-arm regression checks,
paired by seed (`harness.stats.paired`), as rows for tables, results.json and the gate.

A row (`results.json` `comparisons`, docs/comparisons-and-gate.md): `kind` (`declared`:
a comparison of the spec; `registered`: an arm vs the same arm of the registered baseline;
`same_arm`: an arm vs the same arm of another run), `model`, `candidate` and `baseline`
("method/controller"; "model/method/controller" when the baseline's model differs),
`source` (where the baseline values come from), `metric`, `expect`, `gate`, `note`, `n`,
`seeds`, `diffs`, `mean_diff`, `ci_low`, `ci_high`, `wins`, `losses`, `ties`, `p_value`,
`p_equivalence`, `verdict`, `outcome` (`pass` / `fail` / `inconclusive`, given `expect`),
`reason`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from harness.errors import UserError
from harness.rundir import read_json_object, read_results, require_run_dir
from harness.spec import Spec
from harness.stats import (
    ci_label,
    expectation_outcome,
    higher_is_better,
    metric_by_seed,
    paired_comparison,
)
from harness.stats.paired import ALPHA, MARGIN, RESAMPLES

REGRESSION_METRIC = "end_of_chain_pass1_test"  # docs/design.md: the gate is on the test split


# --------------------------------------------------------------------------- reading runs
def _missing(doc: dict[str, Any], keys: tuple[str, ...]) -> str:
    return ", ".join(k for k in keys if k not in doc)


def load_run_files(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results.json, resolved_spec.json) of a run directory, checked enough to compare:
    UserError (one line) when the directory, a file or a needed key is missing or broken."""
    require_run_dir(run_dir)
    fix = "re-run `harness bench` on its spec to rebuild it"
    results = read_results(run_dir, fix)
    resolved = read_json_object(run_dir / "resolved_spec.json", "the run's resolved spec", fix)
    bad = _missing(results, ("spec", "version", "spec_hash", "cells"))
    if not bad and not isinstance(results["cells"], list):
        bad = "cells (not a list)"
    for c in [] if bad else results["cells"]:
        bad = _missing(c, ("model", "method", "controller", "seed")) if isinstance(c, dict) \
            else "cells (an entry is not an object)"
        if not bad and not isinstance(c["seed"], int):
            bad = f"cells (seed {c['seed']!r} is not an integer)"
        if bad:
            break
    if bad:
        raise UserError(f"{run_dir / 'results.json'} is malformed (missing or bad {bad}); {fix}")
    if not isinstance(resolved.get("spec"), dict):
        raise UserError(f"{run_dir / 'resolved_spec.json'} is malformed (missing or bad spec); "
                        f"{fix}")
    return results, resolved


def load_run(run_dir: Path) -> tuple[Spec, dict[str, Any]]:
    """The resolved spec and results.json of a run directory."""
    from pydantic import ValidationError

    results, resolved = load_run_files(run_dir)
    try:
        spec = Spec.model_validate(resolved["spec"])
    except ValidationError as e:
        first = str(e).strip().splitlines()
        raise UserError(f"{run_dir / 'resolved_spec.json'}: the stored spec does not validate "
                        f"with this harness ({' '.join(first[:2])})") from None
    return spec, results


def load_against(run: Path, results: dict[str, Any], against: str, baselines: Path | None,
                 warn: Callable[[str], None]) -> tuple[dict[str, Any], str]:
    """The results `compare --against` pairs a run with, and their kind: `registered` (the
    spec's registered baseline; an exact one in the variant of the run's platform, as the gate
    reads it) or another run directory (`same_arm`; its traces checked). `warn` gets a line
    for a stale baseline, or for a run of another spec."""
    from harness.baselines import (
        baseline_results,
        for_platform,
        load_baseline,
        run_environment,
        stale_message,
    )
    from harness.runcheck import finished_traces

    if against == "registered":
        path, doc = load_baseline(results["spec"], baselines)
        if doc is None:
            raise UserError(f"no registered baseline for {results['spec']} ({path}); "
                            "register one with `harness baseline register RUN`")
        stale = stale_message(path, doc, results)
        if stale:
            warn(f"warning: {stale}")
        return baseline_results(for_platform(doc, run_environment(run))), "registered"
    other, _ = load_run_files(Path(against))
    finished_traces(Path(against), other)
    if other["spec_hash"] != results["spec_hash"]:
        warn(f"note: {against} ran {other['spec']}@{other['version']} (spec_hash "
             f"{str(other['spec_hash'])[:12]}), {run} ran {results['spec']}@"
             f"{results['version']} ({str(results['spec_hash'])[:12]})")
    return {**other, "source": str(against)}, "same_arm"


# --------------------------------------------------------------------------- rows
def _row(kind: str, model: str, candidate: str, baseline: str, metric: str, expect: str,
         gate: bool, note: str, source: str, cand: dict[int, float], base: dict[int, float],
         alpha: float, margin: float, resamples: int, seed: int) -> dict[str, Any]:
    r = paired_comparison(cand, base, higher_is_better=higher_is_better(metric), alpha=alpha,
                          margin=margin, resamples=resamples, seed=seed)
    outcome, why = expectation_outcome(r, expect)  # type: ignore[arg-type]
    reason = f"{why}; {r.reason}"
    if r.n == 0:
        reason = (f"{why}; no seed finished on both sides (candidate seeds {sorted(cand)}, "
                  f"baseline seeds {sorted(base)})")
    return {
        "kind": kind, "model": model, "candidate": candidate, "baseline": baseline,
        "source": source, "metric": metric, "expect": expect, "gate": gate, "note": note,
        "n": r.n, "seeds": list(r.seeds), "diffs": list(r.diffs), "mean_diff": r.mean_diff,
        "ci_low": None if r.ci is None else r.ci[0],
        "ci_high": None if r.ci is None else r.ci[1], "ci_level": 1 - alpha,
        "wins": r.wins, "losses": r.losses, "ties": r.ties, "p_value": r.p_value,
        "p_equivalence": r.p_equivalence, "verdict": r.verdict, "outcome": outcome,
        "reason": reason,
    }


def _source(results: dict[str, Any]) -> str:
    return results.get("source") or (f"{results['spec']}@{results['version']} "
                                     f"({str(results['spec_hash'])[:12]})")


def evaluate_comparisons(spec: Spec, results: dict[str, Any],
                         against: dict[str, Any] | None = None, *, alpha: float = ALPHA,
                         margin: float = MARGIN, resamples: int = RESAMPLES, seed: int = 0
                         ) -> list[dict[str, Any]]:
    """One row per declared comparison of `spec` (per model when an ArmRef omits the model):
    the candidate's per-seed values from `results`' finished cells, the baseline's from
    `against` (another run's results.json, or `baselines.baseline_results` of a registered
    baseline) or, by default, from `results` too; paired by seed."""
    other = results if against is None else against
    source = "this run" if against is None else _source(against)
    models = [m.name for m in spec.models]
    rows = []
    for comp in spec.comparisons:
        pairs: list[tuple[str, str]] = []
        for m in models:
            pair = (comp.candidate.model or m, comp.baseline.model or m)
            if pair not in pairs:
                pairs.append(pair)
        for cm, bm in pairs:
            c, b = comp.candidate, comp.baseline
            cand = metric_by_seed(results["cells"], comp.metric, model=cm, method=c.method,
                                  controller=c.controller)
            base = metric_by_seed(other["cells"], comp.metric, model=bm, method=b.method,
                                  controller=b.controller)
            base_name = f"{b.method}/{b.controller}" if bm == cm else \
                f"{bm}/{b.method}/{b.controller}"
            rows.append(_row("declared", cm, f"{c.method}/{c.controller}", base_name,
                             comp.metric, comp.expect, comp.gate, comp.note, source, cand,
                             base, alpha, margin, resamples, seed))
    return rows


def evaluate_same_arms(results: dict[str, Any], against: dict[str, Any], *,
                       kind: str = "registered", gate: bool = True,
                       metric: str = REGRESSION_METRIC, alpha: float = ALPHA,
                       margin: float = MARGIN, resamples: int = RESAMPLES, seed: int = 0
                       ) -> list[dict[str, Any]]:
    """Regression checks: every arm `against` has finished cells for, in this run vs there
    (expect no_worse), paired by seed."""
    arms: list[tuple[str, str, str]] = []
    for c in against["cells"]:
        key = (c["model"], c["method"], c["controller"])
        if c.get("status") == "finished" and key not in arms:
            arms.append(key)
    source = _source(against)
    note = "same arm vs " + source
    rows = []
    for model, method, controller in arms:
        kw = {"model": model, "method": method, "controller": controller}
        cand = metric_by_seed(results["cells"], metric, **kw)
        base = metric_by_seed(against["cells"], metric, **kw)
        rows.append(_row(kind, model, f"{method}/{controller}", f"{method}/{controller}",
                         metric, "no_worse", gate, note, source, cand, base, alpha, margin,
                         resamples, seed))
    return rows


def gate_exit_code(rows: list[dict[str, Any]]) -> int:
    """Exit code of `harness gate` over the rows with `gate` true: 1 if any fails, else 3 if
    any is inconclusive, else 0 (also when nothing is gated)."""
    gated = [r for r in rows if r["gate"]]
    if any(r["outcome"] == "fail" for r in gated):
        return 1
    if any(r["outcome"] == "inconclusive" for r in gated):
        return 3
    return 0


# --------------------------------------------------------------------------- table
def _f(x: float | None, fmt: str = "+.3f") -> str:
    return "-" if x is None else format(x, fmt)


METRIC_LABELS = {"end_of_chain_pass1_test": "test p@1", "end_of_chain_pass1_eval": "eval p@1",
                 "mean_peak": "mean peak", "mean_end": "mean end", "mean_gap": "mean gap",
                 "collapse_rate": "collapse rate"}
OUTCOME_STYLE = {"pass": "green", "fail": "bold red", "inconclusive": "yellow"}


def comparisons_table(rows: list[dict[str, Any]], title: str = "comparisons (paired by seed)"
                      ) -> Table:
    """The rows as a rich table, one line each; the reasons are listed under it by `#`.
    Baselines not from this run are marked (reg) for the registered baseline and (other) for
    another run, with the sources under the table; `*` marks gated comparisons."""
    t = Table(title=title)
    level = ci_label(rows)
    for col in ("#", "model", "candidate", "baseline", "metric", "diff", level, "wins", "p",
                "verdict", "outcome"):
        t.add_column(col, no_wrap=col not in ("model", "candidate", "baseline"),
                     overflow="fold")
    sources: list[str] = []
    for i, r in enumerate(rows, 1):
        ci = "-" if r["ci_low"] is None else f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        base = r["baseline"]
        if r["source"] != "this run":
            base += " (reg)" if r["kind"] == "registered" else " (other)"
            if r["source"] not in sources:
                sources.append(r["source"])
        outcome = Text(r["outcome"], style=OUTCOME_STYLE[r["outcome"]])
        if r["gate"]:
            outcome.append("*")
        t.add_row(str(i), Text(r["model"]), Text(r["candidate"]), Text(base),
                  METRIC_LABELS.get(r["metric"], r["metric"]), _f(r["mean_diff"]), ci,
                  f"{r['wins']}/{r['n']}", _f(r["p_value"], ".3g"), r["verdict"], outcome)
    lines = [f"baselines from: {', '.join(sources)}"] if sources else []
    if any(r["gate"] for r in rows):
        lines.append("* gated (`harness gate` fails on fail, exits 3 on inconclusive)")
    lines += [f"{i}. {r['reason']}" for i, r in enumerate(rows, 1)]
    t.caption = Text("\n".join(lines), justify="left")
    return t
