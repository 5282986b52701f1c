"""`harness bench`: prepare a run directory, run every unfinished cell, collect results.

The run directory layout is documented in `harness.rundir`. Cells whose `result.json` holds
an end-of-chain result are skipped; a cell killed mid-chain resumes from its last finished
campaign. `results.json` is (re)built from the cells' results at the end of every invocation
(`harness.results` builds it; this module writes it and prints its tables).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.errors import PreflightError, UserError
from harness.procutil import interrupt_signal
from harness.results import build_results
from harness.rundir import BenchLock, default_run_dir, environment, write_json
from harness.spec import Cell, Spec, expand_cells, resolved_dict, spec_hash
from harness.spec.grid import grid_hash


def prepare_run_dir(spec: Spec, out: Path | None, lock: BenchLock | None = None
                    ) -> tuple[Path, list[Cell]]:
    """The run directory of `spec` (`out`, else the default) with its resolved spec,
    environment and each cell's config.json written, and its cells. A directory that holds
    another grid's run is refused. With `lock`, it is taken before anything is written."""
    h = spec_hash(spec)
    cells = expand_cells(spec)
    g = grid_hash(cells)
    run_dir = out or default_run_dir(spec.name, spec.version, g)
    existing = run_dir / "resolved_spec.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file, not a directory; choose another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create run directory {run_dir}: {e.strerror or e}") from None
    if lock is not None:
        lock.acquire(run_dir)
    if existing.exists():
        try:
            old = json.loads(existing.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            # written atomically, so never half written by a bench: damaged since; what the
            # directory holds cannot be told, and writing into it could mix two runs
            why = getattr(e, "strerror", None) or getattr(e, "msg", None) or e
            raise UserError(f"{existing} cannot be read ({why}), so it is unknown which run "
                            f"{run_dir} holds; restore the file, or choose another --out") from None
        if isinstance(old, dict) and old.get("grid_hash") != g:
            raise UserError(
                f"{run_dir} holds a run of {old.get('spec', {}).get('name')}@"
                f"{old.get('spec', {}).get('version')} with another grid (spec hash "
                f"{str(old.get('spec_hash'))[:12]}); choose another --out")
    write_json(existing, {"spec_hash": h, "grid_hash": g, "spec": resolved_dict(spec)})
    write_json(run_dir / "environment.json", environment())
    for c in cells:
        cfg_path = run_dir / "cells" / c.cell_id / "config.json"
        if not cfg_path.exists():
            write_json(cfg_path, {"cell_id": c.cell_id, "spec": spec.name,
                                  "version": spec.version, "spec_hash": h, "config": c.config})
    return run_dir, cells


def record_executor(run_dir: Path, info: dict[str, Any]) -> None:
    """Add where this invocation runs the cells (the executor; for docker, the images by
    digest) to the run's environment.json (rewritten by every invocation)."""
    path = run_dir / "environment.json"
    try:
        env = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        env = {}
    write_json(path, {**env, "executor": info})


class Interrupted(UserError):
    """Ctrl-C (SIGINT), or SIGTERM or SIGHUP (`procutil.Terminated`), stopped `harness bench`:
    what was running, where the run is kept; the command line prints it with the command that
    resumes the run. Exit status 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM),
    as a shell reports a process the signal ended."""

    def __init__(self, run_dir: Path | None, running: dict[str, int], campaigns: int,
                 signum: int = signal.SIGINT, cells_done: bool = False) -> None:
        self.run_dir, self.running, self.campaigns = run_dir, running, campaigns
        self.signum, self.cells_done = signum, cells_done
        self.exit_code = 128 + int(signum)
        cells = "after every cell ran, while writing the results" if cells_done else ", ".join(
            f"cell {cid} " + (f"in campaign {k + 1} of {campaigns}" if k < campaigns
                              else "in its final test evaluation")
            for cid, k in running.items())
        how = ("interrupted" if signum == signal.SIGINT
               else f"stopped by {signal.Signals(signum).name}:")
        super().__init__(f"{how} {cells or 'before any cell started'}"
                         + (f"; {run_dir} keeps every finished campaign" if run_dir else ""))

    @classmethod
    def with_resume(cls, e: Interrupted, command: str) -> Interrupted:
        """`e` ending with the command that resumes the run."""
        out = cls(e.run_dir, e.running, e.campaigns, e.signum, e.cells_done)
        out.args = (f"{e}; resume with: {command}",)
        return out


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: what taskset, cgroups' cpusets and
    batch systems allow), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def oversubscribed(jobs: int, cpus_per_cell: float, cpus: int | None = None) -> str | None:
    """A warning when `jobs` cells of `cpus_per_cell` torch threads each (as `run-cell` sets
    them) outnumber the CPUs (`available_cpus`); None when they fit. Results do not change
    (a cell's thread count is part of its identity, not the number of cells beside it), but
    cells sharing cores each run at a fraction of their speed."""
    cpus = available_cpus() if cpus is None else cpus
    per_cell = max(1, int(cpus_per_cell))
    threads = jobs * per_cell
    if threads <= cpus:
        return None
    if per_cell > cpus:  # no --jobs fits: one cell alone has more threads than CPUs
        return (f"warning: each cell runs {per_cell} threads (resources.cpus_per_cell) on "
                f"{cpus} CPU(s){f' ({jobs} cells at once)' if jobs > 1 else ''}: its threads "
                "share cores and it runs slower than where it has its CPUs (results are the "
                "same: the thread count is part of the cell)")
    return (f"warning: {jobs} cells at once x {per_cell} thread(s) each "
            f"(resources.cpus_per_cell) = {threads} threads on {cpus} CPU(s): the cells share "
            f"cores and each runs slower; --jobs {cpus // per_cell} fits this machine (results "
            "are the same either way)")


def finished_campaigns(cell_dir: Path) -> int:
    """Campaigns of a cell's trace that finished (a resumed cell starts after them)."""
    from harness.runner.trace import read_trace

    path = cell_dir / "trace.jsonl"
    if not path.exists():
        return 0
    return sum(1 for r in read_trace(path) if r.get("type") == "campaign")


def cell_finished(cell_dir: Path) -> bool:
    try:
        res = json.loads((cell_dir / "result.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return res.get("end_of_chain") is not None


def _read_executor(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "environment.json").read_text()).get("executor")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def collect_results(spec: Spec, run_dir: Path, cells: list[Cell],
                    failures: dict[str, str]) -> dict[str, Any]:
    """Build results.json from the cells' result.json files (`harness.results.build_results`)
    and write it into the run directory; `failures`: cell_id -> error of the cells that failed
    in this invocation."""
    results = build_results(spec, run_dir, cells, failures, _read_executor(run_dir))
    write_json(run_dir / "results.json", results)
    return results


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def signature_line(results: dict[str, Any], spec: Spec) -> str:
    """How many finished campaigns show the study's signature, per arm."""
    c = spec.chain
    parts = [f"{r['method']}/{r['controller']} {r.get('signature_campaigns', 0)}/"
             f"{r['campaigns']}" for r in results.get("arms") or []
             if r["kind"] == "arm" and r["campaigns"]]
    return (f"the study's signature (eval pass@1 peaks >= {100 * c.signature_rise:g} points "
            f"above the campaign's start and ends >= {100 * c.signature_fall:g} points below "
            f"its peak) in campaigns of: " + ("; ".join(parts) or "none finished"))


def summary_table(results: dict[str, Any]) -> Table:
    t = Table(title=f"{results['spec']}@{results['version']}  "
                    f"spec_hash {results['spec_hash'][:12]}")
    for col in ("model", "method", "controller", "seed", "status", "test p@1", "eval p@1",
                "mean peak", "mean gap", "collapsed", "signature"):
        t.add_column(col)
    for c in results["cells"]:
        eoc = c.get("end_of_chain") or {}
        agg = c.get("aggregates") or {}
        n = len(c.get("campaigns") or [])
        t.add_row(c["model"], c["method"], c["controller"], str(c["seed"]), c["status"],
                  _fmt(eoc.get("pass1_test")),
                  _fmt(eoc.get("pass1_eval")), _fmt(agg.get("mean_peak")),
                  _fmt(agg.get("mean_gap")),
                  f"{agg.get('collapsed_campaigns', 0)}/{n}" if n else "-",
                  f"{agg.get('signature_campaigns', 0)}/{n}" if n else "-")
    return t


def _guard_cell(r: dict[str, Any]) -> str:
    """The offline guard's scores in the arms table, as `harness guard score` gives them (the
    signature's campaigns caught at least 2 steps before the onset; false alarms of the
    others), or by the collapse threshold for results written before those existed."""
    b = r.get("by_signature")
    if b is None:
        lead = r["mean_lead_time"]
        return (f"collapsed: caught {r['caught']}/{r['collapsed']}, false alarms "
                f"{r['false_alarms']}, lead {'-' if lead is None else f'{lead:.1f}'}")
    lead = b["median_lead_time"]
    return (f"caught {b['caught']}/{b['signature']}, false alarms "
            f"{b['false_alarm']}/{b['no_signature']}, median lead "
            f"{'-' if lead is None else f'{lead:g}'}")


def arms_table(results: dict[str, Any]) -> Table:
    """The `arms` rows: means over finished seeds; oracle rows (eval = the selected value)
    and the offline guard row are references derived from the naive arms, not arms."""
    t = Table(title="arms (mean over finished seeds; * = reference row from naive traces)")
    for col in ("model", "method", "controller", "seeds", "test p@1", "eval p@1",
                "mean peak", "mean gap", "collapsed", "signature"):
        t.add_column(col)
    for r in results.get("arms") or []:
        seeds = f"{r['n']}/{r['n_cells']}"
        if r["kind"] == "arm":
            t.add_row(r["model"], r["method"], r["controller"], seeds, _fmt(r["pass1_test"]),
                      _fmt(r["pass1_eval"]), _fmt(r["mean_peak"]), _fmt(r["mean_gap"]),
                      f"{r['collapsed_campaigns']}/{r['campaigns']}" if r["campaigns"]
                      else "-",
                      f"{r.get('signature_campaigns', 0)}/{r['campaigns']}" if r["campaigns"]
                      else "-")
        elif r["kind"] == "oracle":
            t.add_row(r["model"], r["method"], f"*{r['controller']} of {r['of']}", seeds,
                      _fmt(r["pass1_test"]), _fmt(r["pass1_eval"]), "", "", "", "",
                      style="dim")
        else:
            t.add_row(r["model"], r["method"], f"*guard (offline) on {r['of']}", seeds,
                      "", "", "", "", "", _guard_cell(r), style="dim")
    return t


def bench(spec: Spec, out: Path | None, jobs: int, console: Console,
          log_checkpoints: str = "carried", executor: str = "local",
          executor_options: dict[str, Any] | None = None) -> tuple[Path, dict]:
    """Run every unfinished cell of `spec` with `executor` (`harness.executors`); return
    (run_dir, results). Everything is logged to MLflow as it runs (`harness.tracking`;
    `log_checkpoints`: its checkpoint policy)."""
    from harness.executors import get_executor

    run = get_executor(executor)
    running: dict[str, int] = {}  # cell id -> its finished campaigns (Ctrl-C says which)
    stage: list[str] = []  # "results" once every cell ran
    run_dir: Path | None = None
    lock = BenchLock()  # one bench per run directory
    try:
        run_dir, cells = prepare_run_dir(spec, out, lock)
        return _bench(spec, run_dir, cells, jobs, console, log_checkpoints, run, executor,
                      executor_options, running, stage)
    except KeyboardInterrupt as e:
        raise Interrupted(run_dir, running, spec.chain.campaigns, interrupt_signal(e),
                          cells_done="results" in stage) from None
    finally:
        lock.release()


def _bench(spec: Spec, run_dir: Path, cells: list[Cell], jobs: int, console: Console,
           log_checkpoints: str, run: Any, executor: str,
           executor_options: dict[str, Any] | None, running: dict[str, int],
           stage: list[str]) -> tuple[Path, dict]:
    from harness.executors import ExecutorOptions, describe
    from harness.tracking import Tracker

    options = ExecutorOptions(run_dir=run_dir, gpus_per_cell=spec.resources.gpus_per_cell,
                              cpus_per_cell=spec.resources.cpus_per_cell,
                              **(executor_options or {}))
    record_executor(run_dir, describe(executor, options))
    todo = {c.cell_id: run_dir / "cells" / c.cell_id for c in cells
            if not cell_finished(run_dir / "cells" / c.cell_id)}
    from harness.runner.trace import read_trace_checked

    for c in cells:  # a finished cell is kept as it is: its trace must be whole (as in gate)
        if c.cell_id not in todo:
            read_trace_checked(run_dir / "cells" / c.cell_id / "trace.jsonl", complete=True)
    if todo:
        _preflight(spec)  # before anything starts: no MLflow run for a bench that cannot
    console.print(f"run directory: {run_dir}  ({len(cells) - len(todo)} of {len(cells)} cells "
                  "already finished)", markup=False, highlight=False)
    resumed: dict[str, int] = {}
    for cid, cell_dir in todo.items():
        if done := finished_campaigns(cell_dir):
            resumed[cid] = done
            where = (f"from campaign {done + 1} of {spec.chain.campaigns}"
                     if done < spec.chain.campaigns else "at its final test evaluation")
            console.print(f"resuming cell {cid} {where} ({done} campaigns finished before)",
                          markup=False, highlight=False)
    # A terminal gets progress bars; a log (CI, `> log.txt`) a plain line per finished
    # campaign and per finished cell.
    plain = not console.is_terminal
    tracker = Tracker(run_dir, running=todo, checkpoints=log_checkpoints,
                      warn=lambda m: console.print(m, markup=False, highlight=False))
    tracker.start()  # the store opens in the background while policies build and cells run
    try:
        _prebuild_policies(spec, console)
    except KeyboardInterrupt:  # the MLflow runs end KILLED, not RUNNING
        tracker.close(timeout=15, interrupted=True)
        raise
    failures: dict[str, str] = {}
    if todo:
        jobs = max(1, min(jobs, len(todo)))
        if not run.places_by_cpus(options) and (
                line := oversubscribed(jobs, spec.resources.cpus_per_cell)):
            console.print(line, markup=False, highlight=False)
        steps_total = spec.chain.campaigns * (spec.chain.steps + 1)
        cells_done = len(cells) - len(todo)
        # campaigns already said, per cell (a resumed cell's earlier ones among them)
        said: dict[str, set[int]] = {cid: set(range(n)) for cid, n in resumed.items()}

        def say(line: str) -> None:
            console.print(line, markup=False, highlight=False)
            console.file.flush()

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=False,
                      disable=plain) as prog:
            overall = prog.add_task(f"cells of {spec.name}", total=len(cells),
                                    completed=len(cells) - len(todo))
            bars: dict[str, Any] = {}

            def on_event(cid: str, ev: dict[str, Any]) -> None:
                tracker.on_event(cid, ev)
                nonlocal cells_done
                if ev["event"] == "start":  # also when a resumed cell rewrites its trace
                    said.setdefault(cid, set()).update(
                        r["index"] for r in ev["records"] if r["type"] == "campaign")
                    running[cid] = len(said[cid])
                    done = sum(1 for r in ev["records"] if r["type"] == "step")
                    if cid in bars:
                        prog.update(bars[cid], completed=done)
                    else:
                        bars[cid] = prog.add_task(cid, total=steps_total, completed=done)
                elif ev["event"] == "record":
                    r = ev["record"]
                    if r["type"] == "step":
                        prog.update(bars[cid], advance=1, description=(
                            f"{cid}  c{r['campaign']} s{r['step']}  "
                            f"pass@1 {r['eval_pass1']:.3f}"))
                    elif r["type"] == "campaign":
                        running[cid] = r["index"] + 1
                        if plain and r["index"] not in said.setdefault(cid, set()):
                            said[cid].add(r["index"])
                            say(f"cell {cid}: campaign {r['index'] + 1} of "
                                f"{spec.chain.campaigns} finished ({r['steps_run']} steps; eval "
                                f"pass@1 start {r['start']:.3f}, peak {r['peak']:.3f}, end "
                                f"{r['end']:.3f})")
                    elif r["type"] == "final":
                        prog.update(bars[cid], completed=steps_total, description=(
                            f"{cid}  test pass@1 {r['pass1_test']:.3f}"))
                elif ev["event"] == "exit":
                    running.pop(cid, None)
                    cells_done += 1
                    prog.update(overall, advance=1)
                    if ev["returncode"]:
                        why = ev["error"]
                        failures[cid] = why.removeprefix(f"cell {cid}: ")
                        prog.update(bars[cid], description=f"{cid}  [red]failed[/]")
                    if plain:
                        say(f"cell {cid}: {'failed' if ev['returncode'] else 'finished'} "
                            f"({cells_done} of {len(cells)} cells done)")

            try:
                run(todo, jobs, on_event, options)
            except KeyboardInterrupt:  # the MLflow runs end KILLED, not RUNNING
                tracker.close(timeout=15, interrupted=True)
                raise
    stage.append("results")  # an interrupt from here on comes after every cell ran
    try:
        results = collect_results(spec, run_dir, cells, failures)
        tracking = tracker.close()
    except KeyboardInterrupt:  # the store finishes what it has (every cell ran)
        tracker.close(timeout=15)
        raise
    from harness.runcheck import finished_traces

    finished_traces(run_dir, results)  # results.json says what the traces say, as gate checks
    if tracking.ok:
        console.print(f"MLflow: experiment {tracking.experiment} in {tracking.uri} (parent run "
                      f"{tracking.parent_run_id}); `harness ui {run_dir}` opens it",
                      markup=False, highlight=False)
    console.print(summary_table(results))
    console.print(arms_table(results))
    console.print(signature_line(results, spec), markup=False, highlight=False)
    if results["comparisons"]:
        from harness.compare import comparisons_table

        console.print(comparisons_table(results["comparisons"]))
    for cid, why in failures.items():
        console.print(f"error: cell {cid} failed: {why} (log: {run_dir / 'cells' / cid / 'log.txt'})",
                      markup=False, highlight=False)
    return run_dir, results


def _preflight(spec: Spec) -> None:
    """Every model and task source must load here before the first cell starts (the hub is
    reached unless HF_HUB_OFFLINE): one error line each, exit 2, no cell started."""
    from harness.preflight import hub_offline, problems

    found = problems(spec, offline=hub_offline())
    if found:
        raise PreflightError("\nerror: ".join(found))


def _prebuild_policies(spec: Spec, console: Console) -> None:
    """Build the tiny policy once, before cells start in parallel (cached afterwards)."""
    from harness.policy.tiny import ensure_tiny, tiny_dir

    for m in spec.models:
        if m.id != "tiny" or m.tiny is None:
            continue
        if (tiny_dir(m.tiny) / "recipe.json").exists():
            continue
        what = (f"building the tiny policy in {tiny_dir(m.tiny)} (first use, about a minute; "
                "cached afterwards)")
        if not console.is_terminal:  # a log has no spinner: say why nothing moves for a while
            console.print(what, markup=False, highlight=False)
        t0 = time.monotonic()
        with console.status(what):
            try:
                ensure_tiny(m.tiny)
            except OSError as e:
                raise UserError(f"cannot build the tiny policy in {tiny_dir(m.tiny)}: "
                                f"{e.strerror or e}; set HARNESS_CACHE to a writable "
                                "directory with free space") from None
        console.print(f"built the tiny policy in {time.monotonic() - t0:.0f} s", markup=False,
                      highlight=False)
