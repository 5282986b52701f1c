"""A run's results checked against the traces they come from, and the exact figures of its
finished cells (docs/comparisons-and-gate.md "Exact baselines").

`harness gate`, `compare`, `report` and `baseline register` read results.json; the cells'
`trace.jsonl` files are the source of truth it is derived from. `finished_traces` reads the
trace of every finished cell and checks that results.json says what the trace says (the
end-of-chain result, the campaigns and the aggregates the comparisons read), so a corrupt,
cut-off or edited trace, or a results.json that no longer matches its traces, stops the
evaluation with one line naming the file (and line) instead of passing unnoticed.

`cell_figures` flattens everything a finished cell produced into named figures for the exact
gate: its results.json entry (`end_of_chain.pass1_test`, `campaigns[1].peak`,
`aggregates.verdicts.eval.passed`, ...) and every step record of its trace
(`trace.c1.s2.eval_pass1`, `trace.c1.s2.verdicts.train.wrong_answer`, ...), minus what
legitimately differs between identical runs: the timings (`time`) and the grading counts
(`grading`: how many verdicts came from the sandbox rather than the verdict cache, which
depends on what the cache held). The step diagnostics in `ROUNDING_FIGURES` are float
reductions whose last bits depend on the CPU's vector width (measured: AVX2 vs AVX-512 moves
them by up to 2e-5 relative with every count, reward and pass@1 identical); they are compared
to a relative `ROUNDING_TOLERANCE`, everything else exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.runner.trace import TIMING_KEYS, read_trace_checked
from harness.stats import METRIC_FIELDS

Record = dict[str, Any]

# results.json entry keys that name the cell (not figures) or say why it failed
ENTRY_KEYS = frozenset({"model", "method", "controller", "controller_name", "seed", "cell_id",
                        "status", "error"})
# float reductions (sums over tokens, norms) whose last bits depend on the CPU's SIMD width
ROUNDING_FIGURES = frozenset({"entropy", "grad_norm", "kl_to_ref", "loss", "pg_loss",
                              "kl_penalty", "ewc_penalty", "entropy_bonus"})
ROUNDING_TOLERANCE = 1e-4  # relative; the drift measured across vector widths is <= 2e-5
REBUILD = "re-run `harness bench SPEC --out RUN_DIR` to rebuild results.json from the traces"


# --------------------------------------------------------------------------- traces
def _same(a: Any, b: Any) -> bool:
    """JSON values equal (NaN equals NaN: a trace may hold one)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _disagree(run_dir: Path, entry: Mapping[str, Any], path: Path, what: str, said: Any,
              traced: Any) -> UserError:
    return UserError(f"{run_dir / 'results.json'}: cell {entry.get('cell_id')} has {what} "
                     f"{said!r} but its trace {path} says {traced!r}: results.json does not "
                     f"match the traces it comes from; {REBUILD}")


def check_finished(run_dir: Path, entry: Mapping[str, Any], path: Path,
                   records: list[Record]) -> None:
    """UserError unless a finished cell's results.json entry agrees with its trace: a
    `final` record with the same end-of-chain result, the same campaigns, and the chain
    aggregates the comparisons read."""
    from harness.results import chain_aggregates

    final = next((r for r in reversed(records) if r["type"] == "final"), None)
    if final is None:
        raise UserError(f"cell {entry.get('cell_id')} is finished in "
                        f"{run_dir / 'results.json'} but its trace {path} has no `final` "
                        f"record; {REBUILD}")
    if records[-1] is not final:  # a cell writes nothing after its final record
        raise UserError(f"{path}:{len(records)}: a `{records[-1]['type']}` record after the "
                        "cell's `final` record: the trace was appended to after the cell "
                        "finished; delete the cell directory and re-run `harness bench`")
    eoc = entry.get("end_of_chain") or {}
    for key in ("pass1_test", "pass1_eval", "carried_from"):
        if not _same(eoc.get(key), final.get(key)):
            raise _disagree(run_dir, entry, path, f"end_of_chain.{key}", eoc.get(key),
                            final.get(key))
    campaigns = [{k: v for k, v in r.items() if k != "type"} for r in records
                 if r["type"] == "campaign"]
    listed = [{k: v for k, v in c.items() if k != "verdicts"}
              for c in entry.get("campaigns") or []]
    if listed != campaigns:
        raise _disagree(run_dir, entry, path, "campaigns", f"{len(listed)} listed",
                        f"{len(campaigns)} campaign records that differ")
    agg, said = chain_aggregates(campaigns), entry.get("aggregates") or {}
    for section, key in METRIC_FIELDS.values():  # those results.json holds (older ones lack some)
        if section == "aggregates" and key in said and not _same(said[key], agg[key]):
            raise _disagree(run_dir, entry, path, f"aggregates.{key}", said[key], agg[key])


def trace_path(run_dir: Path, entry: Mapping[str, Any]) -> Path:
    return run_dir / "cells" / str(entry.get("cell_id")) / "trace.jsonl"


def finished_traces(run_dir: Path, results: Mapping[str, Any]) -> dict[str, list[Record]]:
    """{cell_id: trace records} of every finished cell of results.json, each read strictly
    (`read_trace_checked`: a corrupt or cut-off line is an error naming file and line) and
    checked against its entry (`check_finished`). UserError (one line) on the first
    problem; a missing trace of a finished cell is one too (copy the whole run directory)."""
    out: dict[str, list[Record]] = {}
    for entry in results.get("cells") or []:
        if entry.get("status") != "finished":
            continue
        path = trace_path(run_dir, entry)
        if not path.is_file():
            raise UserError(f"cell {entry.get('cell_id')} is finished in "
                            f"{run_dir / 'results.json'} but {path} is missing; copy the whole "
                            "run directory (cells/*/trace.jsonl are the source of truth)")
        records, _ = read_trace_checked(path, complete=True)
        check_finished(run_dir, entry, path, records)
        out[str(entry["cell_id"])] = records
    return out


# --------------------------------------------------------------------------- figures
def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for k in sorted(value):
            yield from _flatten(f"{prefix}.{k}" if prefix else str(k), value[k])
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            yield from _flatten(f"{prefix}[{i}]", v)
    else:
        yield prefix, value


def cell_figures(entry: Mapping[str, Any], records: list[Record]) -> dict[str, Any]:
    """Every figure of a finished cell, by name (module docstring): its results.json entry,
    the metric figures first, then its trace's step records, without timings."""
    figures: dict[str, Any] = {}
    for section, key in METRIC_FIELDS.values():
        figures[f"{section}.{key}"] = (entry.get(section) or {}).get(key)
    for k in sorted(set(entry) - ENTRY_KEYS):
        for name, v in _flatten(k, entry[k]):
            figures.setdefault(name, v)
    steps = [r for r in records if r["type"] == "step"]
    figures["trace.steps"] = len(steps)
    for r in steps:
        rec = {k: v for k, v in r.items() if k not in TIMING_KEYS and k != "type"}
        figures.update(_flatten(f"trace.c{r.get('campaign')}.s{r.get('step')}", rec))
    return figures


def figure_moved(name: str, base: Any, run: Any) -> bool:
    """Whether a figure differs from its baseline value: exactly, except the float
    reductions of `ROUNDING_FIGURES`, to `ROUNDING_TOLERANCE` relative."""
    if _same(base, run):
        return False
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ROUNDING_FIGURES and isinstance(base, float) and isinstance(run, float):
        return not math.isclose(base, run, rel_tol=ROUNDING_TOLERANCE, abs_tol=1e-12)
    return True


def diff_figures(base: Mapping[str, Any], run: Mapping[str, Any]
                 ) -> tuple[list[tuple[str, Any, Any]], list[str]]:
    """(moved: (name, baseline value, run value) in the baseline's order, a figure missing
    from the run included as `<missing>`; new: names only the run has)."""
    moved = [(n, v, run.get(n, "<missing>")) for n, v in base.items()
             if n not in run or figure_moved(n, v, run[n])]
    return moved, [n for n in run if n not in base]
