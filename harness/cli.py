"""The `harness` command line.

User errors (a bad spec, a missing model, a full disk) print one line per problem on stderr
and exit non-zero (2 for spec problems); tracebacks are kept for bugs.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table

from harness import __version__
from harness.errors import CannotEvaluate, SpecError, UserError
from harness.guard.cli import guard_app

app = typer.Typer(
    name="harness",
    help="Reproducible benchmark harness for RL post-training of code models: specs, grids, "
    "chains of campaigns, and the rise-and-collapse failure mode.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (logs, CI) gets room for the summary tables instead of rich's 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        out.print(f"harness {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    pass


# --------------------------------------------------------------------------- specs
@app.command("list")
def list_specs() -> None:
    """List registered specs (benchmarks/*.yaml) with version, grid size and spec hash
    (`harness plan NAME` shows one spec's grid and description)."""
    from harness.spec import expand_cells, load_spec, registered_specs, spec_hash

    table = Table()
    table.add_column("spec", no_wrap=True)
    for col in ("version", "cells", "campaigns x steps", "spec hash"):
        table.add_column(col, no_wrap=True)
    bad = 0
    for name in registered_specs():
        try:
            spec, _ = load_spec(name)
        except SpecError as e:
            bad += 1
            table.add_row(name, "-", "-", "-", "[red]invalid[/]")
            err.print(f"error: {e.problems[0]}", markup=False, highlight=False)
            continue
        table.add_row(spec.name, str(spec.version), str(len(expand_cells(spec))),
                      f"{spec.chain.campaigns} x {spec.chain.steps}", spec_hash(spec)[:12])
    out.print(table)
    if bad:
        raise typer.Exit(2)


@app.command()
def validate(
    specs: Annotated[list[str], typer.Argument(help="Spec files or registered names.")],
    offline: Annotated[bool, typer.Option(
        "--offline", help="Also check that every model and task source loads on this machine "
        "with no network (model files or the HF cache, dataset cache or local files).")
    ] = False,
) -> None:
    """Validate specs: every problem on one line ([cyan]file:line: key.path: message[/]);
    exit 2 if any spec is invalid (with --offline: or names a model or dataset that cannot
    be loaded here)."""
    from harness.spec import expand_cells, load_spec, name_clash, spec_hash

    failed = 0
    for ref in specs:
        try:
            spec, path = load_spec(ref)
        except SpecError as e:
            failed += 1
            for p in e.problems:
                err.print(f"error: {p}", markup=False, highlight=False)
            continue
        if clash := name_clash(spec, path):
            err.print(clash, markup=False, highlight=False)
        if offline:
            from harness.preflight import problems

            found = problems(spec, offline=True)
            for p in found:
                err.print(f"error: {path}: {p}", markup=False, highlight=False)
            if found:
                failed += 1
                continue
        out.print(f"ok {path}: {spec.name}@{spec.version}, {len(expand_cells(spec))} cells, "
                  f"spec_hash {spec_hash(spec)}", markup=False, highlight=False)
    if failed:
        raise typer.Exit(2)


@app.command()
def plan(
    spec: Annotated[str, typer.Argument(help="Registered spec name or file.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the grid as JSON.")] = False,
) -> None:
    """Show a spec's grid: one row per cell (cell_id, model, method, controller, seed,
    campaigns, steps), the spec hash, each method as resolved (its params and its policy
    loss's with their defaults, the aggregation, inner steps, options) and how the update
    runs."""
    from harness.spec import expand_cells, load_spec, spec_hash

    s, _ = load_spec(spec)
    cells = expand_cells(s)
    h = spec_hash(s)
    if as_json:
        doc = {
            "spec": s.name, "version": s.version, "spec_hash": h, "n_cells": len(cells),
            "distributed": s.resources.distributed, "gpus_per_cell": s.resources.gpus_per_cell,
            "methods": [m.resolved() for m in s.methods],
            "cells": [{**c.keys(), "campaigns": s.chain.campaigns, "steps": s.chain.steps}
                      for c in cells],
        }
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    if s.description:
        out.print(s.description.strip(), markup=False, highlight=False)
    table = Table(title=f"{s.name}@{s.version}  spec_hash {h}")
    table.add_column("cell_id", no_wrap=True)
    for col in ("model", "method", "controller", "seed", "campaigns", "steps"):
        table.add_column(col)
    for c in cells:
        k = c.keys()
        table.add_row(k["cell_id"], k["model"], k["method"], k["controller"], str(c.seed),
                      str(s.chain.campaigns), str(s.chain.steps))
    out.print(table)
    for m in s.methods:
        out.print(f"method {m.describe()}", markup=False, highlight=False)
    o, batch = s.optim, s.rollout.group_size * s.rollout.prompts_per_step
    passes = (f"micro-batches of {o.micro_batch_size} of the {batch} sequences a step"
              if o.micro_batch_size and o.micro_batch_size < batch
              else f"the whole batch ({batch} sequences) in one pass")
    masters = ("DeepSpeed's (float32)" if s.resources.distributed != "none"
               else f"{o.master_weights} (for 16-bit weights)")
    out.print(f"update: {passes}; gradient checkpointing "
              f"{'on' if o.gradient_checkpointing else 'off'}; master weights {masters}",
              markup=False, highlight=False)
    if s.resources.distributed != "none":
        from harness.distributed import load

        d = load(s.resources.distributed)
        out.print(f"training: {d.name} (DeepSpeed ZeRO-{d.zero_stage}, "
                  f"{d.deepspeed_config.relative_to(d.deepspeed_config.parents[2])}): "
                  f"{s.resources.gpus_per_cell:g} data-parallel processes per cell, one GPU "
                  "each, started by `harness run-cell`", markup=False, highlight=False)


@app.command("spec-schema")
def spec_schema() -> None:
    """Print the spec schema as JSON Schema (the reference for every field and default)."""
    from harness.spec import Spec

    sys.stdout.write(json.dumps(Spec.model_json_schema(), indent=2) + "\n")


@app.command()
def components(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False
               ) -> None:
    """List every registered component, one line each with what it is, and its parameters
    (docs/components.md: how to add one)."""
    from harness.components import all_components, component_lines

    found = all_components()
    sys.stdout.write((json.dumps(found, indent=2) if as_json else
                      "\n".join(component_lines(found))) + "\n")


# --------------------------------------------------------------------------- running
def _checkpoint_policy(value: str) -> str:
    from harness.tracking import CHECKPOINT_POLICIES

    if value not in CHECKPOINT_POLICIES:
        raise UserError(f"--log-checkpoints {value!r}: use one of "
                        f"{', '.join(CHECKPOINT_POLICIES)}")
    return value


LogCheckpoints = Annotated[str, typer.Option(
    "--log-checkpoints", callback=_checkpoint_policy, metavar="none|final|carried|all",
    help="Checkpoints logged to MLflow: the policy carried out of the chain (final), also "
    "each one a campaign carries into the next (carried), also every campaign's last and "
    "peak (all).")]


@app.command()
def bench(
    spec: Annotated[str, typer.Argument(help="Registered spec name or file.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (default: runs/<spec>@<version>/<grid hash[:12]>, the "
        "hash of the cell ids; $HARNESS_RUNS replaces runs).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help=(
        "Cells run in parallel processes, each with resources.cpus_per_cell threads (a "
        "warning says when they outnumber the CPUs)."))] = 1,
    log_checkpoints: LogCheckpoints = "carried",
    executor: Annotated[str, typer.Option(
        "--executor", help="Where cells run: local (processes here), docker (a trainer "
        "container per cell, one grader container), ray (Ray tasks on a cluster).")] = "local",
    address: Annotated[str | None, typer.Option(
        "--address", help="ray: the cluster to join (e.g. auto, ray://head:10001); default: "
        "start a local one.")] = None,
    trainer_image: Annotated[str | None, typer.Option(
        "--trainer-image", help="docker: trainer image (default $HARNESS_TRAINER_IMAGE, else "
        "harness-trainer:latest).")] = None,
    grader_image: Annotated[str | None, typer.Option(
        "--grader-image", help="docker: grader image (default $HARNESS_GRADER_IMAGE, else "
        "harness-grader:latest).")] = None,
    executor_option: Annotated[list[str] | None, typer.Option(
        "--executor-option", metavar="KEY=VALUE", help="A setting of the chosen executor "
        "(repeatable; `harness components` lists them), e.g. address=auto.")] = None,
) -> None:
    """Run every cell of a spec and print the summary table.

    Re-running the same command skips finished cells and resumes interrupted ones from their
    last finished campaign; Ctrl-C stops it (exit 130) with one line naming the command that
    resumes it, and so do SIGTERM (143) and SIGHUP (129). Progress: bars on a terminal, else
    (CI logs, a file) one line per finished campaign and per finished cell. Exit 1 if any cell
    failed (the others still finish). Everything is logged to MLflow ($MLFLOW_TRACKING_URI,
    else <run dir>/mlflow.db; `harness ui`).
    """
    from harness.bench import Interrupted
    from harness.bench import bench as run_bench
    from harness.executors import settings_from_command_line
    from harness.procutil import stop_signals_interrupt
    from harness.spec import load_spec, name_clash

    settings = settings_from_command_line(executor, executor_option or [], {
        "--address": ("address", address), "--trainer-image": ("trainer_image", trainer_image),
        "--grader-image": ("grader_image", grader_image)})
    s, path = load_spec(spec)
    if clash := name_clash(s, path):
        err.print(clash, markup=False, highlight=False)
    try:
        with stop_signals_interrupt():  # SIGTERM/SIGHUP stop it as Ctrl-C does
            _, results = run_bench(s, out, jobs, out_console(), log_checkpoints=log_checkpoints,
                                   executor=executor, executor_options={"settings": settings})
    except Interrupted as e:  # one line: what stopped, and the command that resumes it
        import shlex

        again = ["harness", "bench", spec, *(["--out", str(e.run_dir)] if e.run_dir else []),
                 *(["-j", str(jobs)] if jobs != 1 else []),
                 *(["--log-checkpoints", log_checkpoints] if log_checkpoints != "carried"
                   else []), *(["--executor", executor] if executor != "local" else []),
                 *(x for k, v in (("--address", address), ("--trainer-image", trainer_image),
                                  ("--grader-image", grader_image)) if v for x in (k, v)),
                 *(x for o in executor_option or [] for x in ("--executor-option", o))]
        raise Interrupted.with_resume(e, shlex.join(again)) from None
    if any(c["status"] != "finished" for c in results["cells"]):
        raise typer.Exit(1)


@app.command("run-cell", hidden=False)
def run_cell(
    cell_dir: Annotated[Path, typer.Argument(help="A cell directory holding config.json.")],
) -> None:
    """Run (or resume) one cell from its resolved config: the entry point every executor
    calls. Writes trace.jsonl and result.json beside config.json. A cell whose spec sets
    resources.distributed runs as resources.gpus_per_cell data-parallel processes (one GPU
    each; CPU processes where none is visible), started and awaited here."""
    from harness.runner.entry import run_cell_dir

    result = run_cell_dir(cell_dir)
    if result is None:  # a data-parallel rank other than the first
        return
    eoc = result["end_of_chain"]
    out.print(f"cell {result['cell_id']} finished: end-of-chain pass@1 test "
              f"{eoc['pass1_test']:.3f}, eval {eoc['pass1_eval']:.3f}", markup=False,
              highlight=False)


# --------------------------------------------------------------------------- MLflow
OptionalRun = Annotated[Path | None, typer.Argument(
    help="A run directory (default: the latest one under runs/).", show_default=False)]


@app.command()
def sync(run: OptionalRun = None, log_checkpoints: LogCheckpoints = "carried") -> None:
    """Log a run directory to MLflow from its traces: what `harness bench` logs as it runs,
    for a run whose logging failed or was interrupted. Idempotent: logs only what is missing."""
    from harness.tracking import resolve_run_dir, sync_run

    run_dir = resolve_run_dir(run)
    summary = sync_run(run_dir, checkpoints=log_checkpoints,
                       warn=lambda m: err.print(m, markup=False, highlight=False))
    if not summary.ok:
        raise UserError(f"MLflow logging of {run_dir} is incomplete (see the warnings above); "
                        "re-run `harness sync` when the store answers")
    out.print(f"MLflow: {len(summary.cell_runs)} cell runs of experiment {summary.experiment} "
              f"match their traces in {summary.uri}", markup=False, highlight=False)


@app.command()
def ui(
    run: OptionalRun = None,
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535)] = 5000,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (local only by "
                                      "default).")] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on a run's store (`mlflow server`, until Ctrl-C) and print the URL
    of its runs table: one row per cell with its controller, seed and end-of-chain metrics.
    A moved or unzipped run directory's store is re-pointed at its own artifacts first."""
    import socket

    from harness.tracking import resolve_run_dir, serve_ui, ui_command

    run_dir = resolve_run_dir(run)
    cmd, url = ui_command(run_dir, host, port)
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another "
                            "--port") from None
    out.print(f"MLflow UI for {run_dir}: {url}  (Ctrl-C stops it)", markup=False,
              highlight=False)
    sys.stdout.flush()
    rc = serve_ui(cmd)
    if rc:
        raise typer.Exit(rc)


# --------------------------------------------------------------------------- statistics
RunDir = Annotated[Path, typer.Argument(
    help="A run directory (holding results.json and resolved_spec.json).")]
BaselinesDir = Annotated[Path | None, typer.Option(
    "--baselines", help="Registered-baseline directory (default: $HARNESS_BASELINES, else "
    "benchmarks/baselines).")]
Alpha = Annotated[float, typer.Option(
    "--alpha", min=0.0001, max=0.5,
    help="Significance level; verdicts need n >= the smallest n with 2/2^n < alpha (6 at 0.05).")]
Margin = Annotated[float, typer.Option(
    "--margin", min=0.0, help="Equivalence margin of `no_difference`, in metric units.")]


@contextlib.contextmanager
def _evaluating() -> Iterator[None]:
    """A problem that stops `gate`, `compare`, `report` or `baseline register` from
    evaluating a run exits 2 (CannotEvaluate), never 1: the gate's "a gated check fails"."""
    try:
        yield
    except SpecError:
        raise
    except UserError as e:
        if isinstance(e, CannotEvaluate):
            raise
        raise CannotEvaluate(str(e)) from None


@app.command()
def compare(
    run: RunDir,
    against: Annotated[str | None, typer.Option(
        "--against", help="`registered` (the spec's registered baseline) or another run "
        "directory: baseline arms come from there, and every arm is also compared with the "
        "same arm there.")] = None,
    baselines: BaselinesDir = None,
    alpha: Alpha = 0.05,
    margin: Margin = 0.02,
) -> None:
    """Print a run's comparisons, paired by seed: mean difference, bootstrap 95% CI, wins,
    sign-flip p, verdict (improves / regresses / no_difference / inconclusive) and outcome
    against the spec's `expect`. The traces of the finished cells are checked against
    results.json first. Exit 2 if a run cannot be evaluated (missing, unreadable, a corrupt
    trace)."""
    from harness.compare import (
        comparisons_table,
        evaluate_comparisons,
        evaluate_same_arms,
        load_against,
        load_run,
    )
    from harness.runcheck import finished_traces

    with _evaluating():
        spec, results = load_run(run)
        finished_traces(run, results)
        kw = {"alpha": alpha, "margin": margin}
        if against is None:
            rows = evaluate_comparisons(spec, results, **kw)
        else:
            other, kind = load_against(run, results, against, baselines, lambda m: err.print(
                m, markup=False, highlight=False))
            rows = evaluate_comparisons(spec, results, other, **kw) + evaluate_same_arms(
                results, other, kind=kind, gate=False, **kw)
    if not rows:
        if against is not None:  # asked for a comparison and there is nothing to pair
            raise CannotEvaluate(f"{against} has no finished cell to pair with, and "
                                 f"{results['spec']}@{results['version']} declares no "
                                 "comparisons: nothing to compare; pass a run with finished "
                                 "cells to --against")
        out.print(f"{results['spec']}@{results['version']} declares no comparisons; add "
                  "`comparisons:` to the spec or use --against", markup=False, highlight=False)
        return
    out.print(comparisons_table(rows, f"comparisons of {results['spec']}@{results['version']} "
                                      f"({run}), paired by seed"))


@app.command()
def gate(
    run: RunDir,
    baselines: BaselinesDir = None,
    alpha: Alpha = 0.05,
    margin: Margin = 0.02,
) -> None:
    """Check a run: the spec's comparisons with `gate: true`, and its registered baseline:
    statistical (every arm vs the same arm, expect no_worse, end-of-chain test pass@1) or
    exact (every figure of every registered cell must be unchanged; the moved ones are
    listed). Exit 0: pass; 1: a gated check fails; 3: inconclusive (too few seeds or too
    noisy), none failing; 2: the run could not be evaluated (missing, unreadable, a corrupt
    trace, results that do not match their traces). A stale baseline (another spec_hash) is
    reported and not used."""
    from harness.gate import run_gate

    with _evaluating():
        rc = run_gate(run, baselines, alpha=alpha, margin=margin,
                      say=lambda m: out.print(m, markup=False, highlight=False),
                      warn=lambda m: err.print(m, markup=False, highlight=False),
                      table=out.print)
    if rc:
        raise typer.Exit(rc)


baseline_app = typer.Typer(
    help="Registered baselines (benchmarks/baselines/<spec>.json): per-seed metrics of a run's "
    "arms with provenance; `harness gate` checks runs against them.",
    no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")
app.add_typer(guard_app, name="guard")


@baseline_app.command("register")
def baseline_register(
    run: RunDir,
    arm: Annotated[list[str] | None, typer.Option(
        "--arm", help="An arm to register, method/controller or model/method/controller; "
        "repeatable (default: every arm with finished cells).")] = None,
    mode: Annotated[str | None, typer.Option(
        "--mode", metavar="statistical|exact", help="How `harness gate` checks runs against "
        "it: statistical (paired by seed) or exact (every figure of every cell unchanged; for "
        "deterministic CPU specs). Default: the registered file's mode, else statistical.")
    ] = None,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="Why it is (re-)registered, kept in the provenance (say it in the "
        "commit too).")] = None,
    baselines: BaselinesDir = None,
) -> None:
    """Register a run's finished arms as its spec's baseline, with provenance (spec hash,
    harness version, git commit, environment, reason). The traces are checked first. Arms
    registered before under the same spec_hash and mode are kept; another spec_hash or mode
    replaces the file. An exact arm is kept per platform (CPU capability or GPU): registered
    on another machine type it adds a variant, and the gate uses the run's own. Exit 2 if the
    run cannot be read."""
    from harness.baselines import register

    with _evaluating():
        path, doc, new = register(run, arm, baselines, mode=mode, reason=reason)
    arms = ", ".join(f"{a['model']}/{a['method']}/{a['controller']} (seeds "
                     f"{','.join(map(str, a['seeds']))})" for a in new)
    out.print(f"registered {len(new)} arm{'s' if len(new) != 1 else ''} of {doc['spec']}@"
              f"{doc['version']} (spec_hash {doc['spec_hash'][:12]}, {doc['mode']}) in {path}: "
              f"{arms}", markup=False, highlight=False)


# --------------------------------------------------------------------------- reports
@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run directory (what `harness bench` wrote).")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Directory for the report (default: the run directory).")] = None,
) -> None:
    """Write report.md (figures in report_figures/) and a self-contained report.html: curves,
    end-of-chain pass@1 with CIs, peak vs end, arms, guard lead time and comparisons. Exit 2
    if the run cannot be read (a corrupt trace, a finished cell's trace cut off); the cut-off
    last line of an unfinished cell's trace (the step in flight) is left out with a note."""
    from harness.report import write_report

    with _evaluating():
        md, page, missing = write_report(run, out)
    for m in missing:
        err.print(f"note: {m}", markup=False, highlight=False)
    out_console().print(f"wrote {md} and {page}", markup=False, highlight=False)


def out_console() -> Console:
    return out


# --------------------------------------------------------------------------- entry point
def _click_classes(name: str) -> tuple[type[BaseException], ...]:
    """click's exception class `name`, and typer's vendored copy of it (typer >= 0.2x raises
    its own `typer._click` exceptions, which are not click's)."""
    found: list[type[BaseException]] = [getattr(click.exceptions, name)]
    vendored = getattr(getattr(typer, "_click", None), "exceptions", None)
    if vendored is not None and hasattr(vendored, name):
        found.append(getattr(vendored, name))
    return tuple(found)


_NO_ARGS_HELP = _click_classes("NoArgsIsHelpError")
_CLICK_ERRORS = _click_classes("ClickException")
_ABORT = _click_classes("Abort")


def reflow(text: str | None) -> str | None:
    """A docstring as help text: the lines of each paragraph joined into one (the terminal
    wraps them), except list items and indented lines, which keep their own line."""
    if not text:
        return text
    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        lines: list[str] = []
        for ln in para.splitlines():
            if lines and not ln.startswith((" ", "-", "*", "|")):
                lines[-1] = f"{lines[-1]} {ln.strip()}"
            else:
                lines.append(ln)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _reflow_tree(command: Any) -> None:
    command.help = reflow(command.help)
    for sub in getattr(command, "commands", {}).values():
        _reflow_tree(sub)


def _say(text: str) -> None:
    """The last line(s) of a failed command, on stderr. A terminal that went away (SIGHUP:
    EIO) or a closed pipe cannot take them; the exit code still says what happened."""
    with contextlib.suppress(OSError):
        err.print(text, markup=False, highlight=False)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user errors end in one line each and a non-zero exit."""
    command = typer.main.get_command(app)
    _reflow_tree(command)
    try:
        rc = command.main(args=argv, prog_name="harness", standalone_mode=False)
    except SpecError as e:
        rc = e.exit_code
        _say("\n".join(f"error: {p}" for p in e.problems))
    except UserError as e:  # a signal (Ctrl-C: exit 130) is said in the command's own words
        rc = e.exit_code
        _say(str(e) if e.exit_code > 128 else f"error: {e}")
    except _NO_ARGS_HELP as e:
        e.show()
        rc = 0
    except _CLICK_ERRORS as e:
        e.show()
        rc = e.exit_code
    except _ABORT:
        err.print("aborted")
        rc = 130
    except KeyboardInterrupt:
        err.print("interrupted")
        rc = 130
    rc = rc if isinstance(rc, int) else 0
    if argv is None:
        sys.exit(rc)
    return rc


if __name__ == "__main__":
    main()
