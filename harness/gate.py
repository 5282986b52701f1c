"""`harness gate RUN`: a run checked against its spec's gated comparisons and its registered
baseline (docs/comparisons-and-gate.md "The gate").

Exit codes: 0 every gated check passes (or nothing is gated); 1 a gated check fails (a
comparison's outcome is `fail`, or, against an exact baseline, a registered figure moved);
3 some gated comparison is inconclusive, none fails; 2 the run could not be evaluated (a
missing or unreadable run directory, a corrupt trace, results that do not match their
traces, a malformed baseline: `harness.errors.CannotEvaluate`, raised by the CLI).

A statistical baseline gives one `registered` row per arm (the same arm, paired by seed,
expect no_worse). An exact baseline compares every figure of every registered cell
(`harness.runcheck.cell_figures`) with the run's: any difference fails, and the gate prints
which cells and figures moved, and how the run's environment differs from the baseline's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import CannotEvaluate
from harness.runcheck import ROUNDING_TOLERANCE, diff_figures

MAX_MOVED_SHOWN = 20  # per cell; the count says how many more
Print = Callable[[str], None]


@dataclass
class ExactCheck:
    """A run against an exact baseline: per registered cell (`label`), the figures that moved
    (name, baseline value, run value) or why the cell could not be compared."""

    cells: int = 0
    figures: int = 0
    moved: dict[str, list[tuple[str, Any, Any]]] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)   # label -> status in the run
    new: set[str] = field(default_factory=set)              # figure names only the run has
    labels: dict[str, str] = field(default_factory=dict)    # label -> cell_id

    @property
    def failed(self) -> bool:
        return bool(self.moved or self.absent)


def exact_check(doc: Mapping[str, Any], results: Mapping[str, Any],
                traces: Mapping[str, list[dict[str, Any]]]) -> ExactCheck:
    """Every registered cell of an exact baseline against the run's cell of the same arm and
    seed (`traces`: the run's finished cells, `harness.runcheck.finished_traces`)."""
    from harness.runcheck import cell_figures

    cells = {(c["model"], c["method"], c["controller"], int(c["seed"])): c
             for c in results["cells"]}
    out = ExactCheck()
    for arm in doc["arms"]:
        for p in arm["per_seed"]:
            key = (arm["model"], arm["method"], arm["controller"], int(p["seed"]))
            label = f"{key[0]}/{key[1]}/{key[2]} seed {key[3]}"
            out.cells += 1
            out.figures += len(p["figures"])
            entry = cells.get(key)
            out.labels[label] = str((entry or p).get("cell_id"))
            if entry is None or entry.get("status") != "finished":
                out.absent[label] = "not in the run" if entry is None else entry.get("status")
                continue
            moved, new = diff_figures(p["figures"],
                                      cell_figures(entry, traces[str(entry["cell_id"])]))
            if moved:
                out.moved[label] = moved
            out.new.update(new)
    return out


def _v(x: Any) -> str:
    return repr(x) if isinstance(x, str) else str(x)


def environment_changes(doc: Mapping[str, Any], env: Mapping[str, Any]) -> list[str]:
    """How a run's environment.json differs from the provenance of a baseline's first arm:
    what to look at first when exact figures moved."""
    base = ((doc["arms"][0].get("provenance") or {}).get("environment") or {}) \
        if doc["arms"] else {}
    out = []
    for key in ("python", "cpu", "torch_threads", "gpu"):
        if key in base and base.get(key) != env.get(key):
            out.append(f"{key} {_v(base.get(key))} -> {_v(env.get(key))}")
    bp, rp = base.get("packages") or {}, env.get("packages") or {}
    out += [f"{k} {bp.get(k)} -> {rp.get(k)}" for k in sorted(set(bp) | set(rp))
            if bp.get(k) != rp.get(k)]
    return out


def print_exact(check: ExactCheck, doc: Mapping[str, Any], path: Path,
                env: Mapping[str, Any], say: Print) -> None:
    prov = (doc["arms"][0].get("provenance") or {}) if doc["arms"] else {}
    commit = str(prov.get("git_commit") or "?")[:12]
    why = f"; reason: {prov['reason']}" if prov.get("reason") else ""
    say(f"exact baseline {path} (registered {doc.get('updated_at', '?')} at commit {commit}"
        f"{why}): {check.cells} cell(s), {check.figures} figures, each compared exactly "
        f"(float reductions to {ROUNDING_TOLERANCE:g} relative)")
    for label, cid in check.labels.items():
        if label in check.absent:
            say(f"exact: {label} ({cid}): MOVED: registered, but {check.absent[label]}")
        elif label in check.moved:
            moved = check.moved[label]
            say(f"exact: {label} ({cid}): MOVED: {len(moved)} figure(s) differ "
                "(baseline -> run)")
            for name, b, r in moved[:MAX_MOVED_SHOWN]:
                say(f"  {name}: {_v(b)} -> {_v(r)}")
            if len(moved) > MAX_MOVED_SHOWN:
                say(f"  ... and {len(moved) - MAX_MOVED_SHOWN} more")
        else:
            say(f"exact: {label} ({cid}): identical")
    if check.new:
        say(f"note: {len(check.new)} figure(s) of the run are not in the baseline (new "
            f"fields, not gated): {', '.join(sorted(check.new)[:5])}"
            f"{', ...' if len(check.new) > 5 else ''}")
    if check.failed:
        changes = environment_changes(doc, env)
        if changes:
            say("note: the run's environment differs from the baseline's: "
                + "; ".join(changes))


def _unfinished(run: Path, results: dict[str, Any], warn: Print) -> str | None:
    """Why the gate fails a run none of whose cells finished (every cell crashed: nothing
    to hold to a baseline, and a pass would hide it), or None; a warning naming the cells
    that did not finish when some did: their seeds are missing from every comparison."""
    cells = results.get("cells") or []
    if not cells:  # every grid has a cell: a results file without one is broken (exit 2)
        raise CannotEvaluate(f"{run / 'results.json'} lists no cell: nothing to hold to a "
                             "baseline; re-run `harness bench` on its spec to rebuild it")
    unfinished = [c for c in cells if c.get("status") != "finished"]
    if not unfinished:
        return None
    first = unfinished[0]
    why = f"{first.get('cell_id')}: {first.get('status')}" + (
        f" ({first['error']})" if first.get("error") else "")
    if len(unfinished) == len(cells):
        return (f"no cell of {run} finished ({len(cells)} of {len(cells)} did not; first "
                f"{why}); fix the cause and re-run `harness bench`")
    warn(f"warning: {len(unfinished)} of {len(cells)} cells of {run} did not finish (first "
         f"{why}); their seeds are missing from every comparison")
    return None


def run_gate(run: Path, baselines: Path | None, *, alpha: float, margin: float,
             say: Print, warn: Print, table: Callable[[Any], None]) -> int:
    """Evaluate the gate of a run directory (module docstring); print the table and lines
    through `say` / `warn` / `table`; return the exit code. UserError when the run or the
    baseline cannot be read (the CLI exits 2)."""
    from harness.baselines import (
        baseline_results,
        for_platform,
        load_baseline,
        run_environment,
        stale_message,
    )
    from harness.compare import (
        comparisons_table,
        evaluate_comparisons,
        evaluate_same_arms,
        gate_exit_code,
        load_run,
    )
    from harness.runcheck import finished_traces
    spec, results = load_run(run)
    if broken := _unfinished(run, results, warn):
        say(f"gate: FAIL ({broken})")
        return 1
    traces = finished_traces(run, results)
    kw = {"alpha": alpha, "margin": margin}
    rows = [r for r in evaluate_comparisons(spec, results, **kw) if r["gate"]]
    path, doc = load_baseline(results["spec"], baselines)
    exact: ExactCheck | None = None
    env = run_environment(run)
    if doc is not None:
        doc = for_platform(doc, env)  # an exact baseline's variant for this run's machine
    if doc is None:
        say(f"no registered baseline for {results['spec']} ({path}); register one with "
            "`harness baseline register RUN`")
    elif stale := stale_message(path, doc, results):
        warn(f"warning: {stale}")
    elif doc["mode"] == "exact" and (why := not_comparable(doc, env)):
        warn(f"warning: exact baseline {path}: {why}; figures are not comparable bit for bit, "
             "checked statistically instead (docs/comparisons-and-gate.md \"Exact "
             "baselines\")")
        doc = {**doc, "mode": "statistical"}
    if doc is not None and not stale_message(path, doc, results):
        if doc["mode"] == "exact":
            exact = exact_check(doc, results, traces)
        else:
            rows += evaluate_same_arms(results, baseline_results(doc), kind="registered",
                                       gate=True, **kw)
    name = f"{results['spec']}@{results['version']}"
    if rows:
        table(comparisons_table(rows, f"gate of {name} ({run})"))
    if exact is not None:
        print_exact(exact, doc or {}, path, env, say)
    rc = gate_exit_code(rows)
    if exact is not None and exact.failed:
        rc = 1
    failed = sum(r["outcome"] == "fail" for r in rows)
    unsure = sum(r["outcome"] == "inconclusive" for r in rows)
    parts = []
    if exact is not None:
        n_moved = sum(len(m) for m in exact.moved.values())
        bad = len(exact.moved) + len(exact.absent)
        parts.append(f"exact: {n_moved} figure(s) moved in {bad} of {exact.cells} registered "
                     f"cell(s)" if exact.failed else
                     f"exact: {exact.cells} registered cell(s) identical")
    if rows:
        parts.append(f"{failed} of {len(rows)} gated comparisons fail" if failed else
                     f"{unsure} of {len(rows)} gated comparisons inconclusive" if unsure else
                     f"{len(rows)} gated comparisons")
    what = "; ".join(parts)
    if not parts:
        say(f"gate: pass ({name} has nothing gated: no `gate: true` comparison, no baseline)")
    elif rc == 1:
        say(f"gate: FAIL ({what})")
        if exact is not None and exact.failed:
            say(f"if the change is intended, re-register the baseline and commit it with the "
                f"change, saying why: `harness baseline register {run} --reason WHY`, then "
                f"`git commit ... {path}` (docs/comparisons-and-gate.md \"Re-registering\")")
    elif rc == 3:
        say(f"gate: inconclusive ({what}, none failing; more seeds would decide)")
    else:
        say(f"gate: pass ({what})")
    return rc


def not_comparable(doc: Mapping[str, Any], env: Mapping[str, Any]) -> str | None:
    """Why a run cannot be held to an exact baseline bit for bit, or None: it ran on a GPU,
    or on a CPU whose vector width (torch's CPU capability) differs from the registering
    machine's (of `doc` narrowed by `harness.baselines.for_platform`: no variant of the
    baseline was registered on the run's platform). Measured: the tiny policy's 800-step warm start, built on AVX2 instead of
    AVX-512, gives other weights and other results from step 0 on (the RL steps themselves
    agree to the last count, their float reductions to 2e-5 relative)."""
    base = ((doc["arms"][0].get("provenance") or {}).get("environment") or {}) \
        if doc["arms"] else {}
    if bool(env.get("gpu")) != bool(base.get("gpu")):
        return (f"registered on {'GPUs' if base.get('gpu') else 'the CPU'}, this run used "
                f"{'GPUs' if env.get('gpu') else 'the CPU'}")
    have = (env.get("cpu") or {}).get("capability")
    want = (base.get("cpu") or {}).get("capability")
    if want and have != want:
        return (f"registered on a CPU with torch capability {want}, this run's is {have} "
                "(another vector width rounds floats differently)")
    return None
