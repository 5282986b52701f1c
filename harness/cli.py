"""The `harness` command line.

User errors (a bad spec, a missing model, a full disk) print one line per problem on stderr
and exit non-zero (2 for spec problems); tracebacks are kept for bugs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Table

from harness import __version__
from harness.errors import SpecError, UserError

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
) -> None:
    """Validate specs: every problem on one line ([cyan]file:line: key.path: message[/]);
    exit 2 if any spec is invalid."""
    from harness.spec import expand_cells, load_spec, spec_hash

    failed = 0
    for ref in specs:
        try:
            spec, path = load_spec(ref)
        except SpecError as e:
            failed += 1
            for p in e.problems:
                err.print(f"error: {p}", markup=False, highlight=False)
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
    campaigns, steps) and the spec hash."""
    from harness.spec import expand_cells, load_spec, spec_hash

    s, _ = load_spec(spec)
    cells = expand_cells(s)
    h = spec_hash(s)
    if as_json:
        doc = {
            "spec": s.name, "version": s.version, "spec_hash": h, "n_cells": len(cells),
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


@app.command("spec-schema")
def spec_schema() -> None:
    """Print the spec schema as JSON Schema (the reference for every field and default)."""
    from harness.spec import Spec

    sys.stdout.write(json.dumps(Spec.model_json_schema(), indent=2) + "\n")


@app.command()
def components() -> None:
    """List registered methods, controllers and task sources."""
    from harness.controllers import CONTROLLERS
    from harness.methods import METHODS
    from harness.tasks import TASK_SOURCES

    for reg in (METHODS, CONTROLLERS, TASK_SOURCES):
        out.print(f"{reg.kind}s: {', '.join(reg.names())}", markup=False)


# --------------------------------------------------------------------------- running
@app.command()
def bench(
    spec: Annotated[str, typer.Argument(help="Registered spec name or file.")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run directory (default: runs/<spec>@<version>/<spec hash[:12]>).")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1,
                                      help="Cells run in parallel processes.")] = 1,
) -> None:
    """Run every cell of a spec on this machine and print the summary table.

    Re-running the same command skips finished cells and resumes interrupted ones from their
    last finished campaign. Exit 1 if any cell failed (the others still finish).
    """
    from harness.bench import bench as run_bench
    from harness.spec import load_spec

    s, _ = load_spec(spec)
    _, results = run_bench(s, out, jobs, out_console())
    if any(c["status"] != "finished" for c in results["cells"]):
        raise typer.Exit(1)


@app.command("run-cell", hidden=False)
def run_cell(
    cell_dir: Annotated[Path, typer.Argument(help="A cell directory holding config.json.")],
) -> None:
    """Run (or resume) one cell from its resolved config: the entry point every executor
    calls. Writes trace.jsonl and result.json beside config.json."""
    import fcntl
    import os

    cfg_path = cell_dir / "config.json"
    try:
        doc = json.loads(cfg_path.read_text())
        cid = doc["cell_id"]
        raw = doc["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise UserError(f"cannot read cell config {cfg_path}: {e}") from None
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers
    from pydantic import ValidationError

    from harness.runner.cell import CellConfig, CellRunner

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        cfg = CellConfig.from_dict(cid, raw)
    except (ValidationError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"cell {cid}: config {cfg_path} is not a valid cell config ({first}); "
                        "re-create it with `harness bench`") from None
    # Threads per cell come from the spec (resources.cpus_per_cell): the thread count changes
    # floating-point reduction order, so it is part of the cell's identity.
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_cell)))
    try:
        lock = open(cell_dir / ".lock", "w")  # noqa: SIM115 (held for the process's life)
    except OSError as e:
        raise UserError(f"cell {cid}: cannot write in {cell_dir}: {e.strerror or e}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise UserError(f"cell {cid} is already running in another process") from None
    try:
        result = CellRunner(cfg, cell_dir).run()
    except UserError as e:
        msg = str(e)
        raise UserError(msg if msg.startswith(f"cell {cid}") else f"cell {cid}: {msg}") from None
    eoc = result["end_of_chain"]
    out.print(f"cell {cid} finished: end-of-chain pass@1 test {eoc['pass1_test']:.3f}, "
              f"eval {eoc['pass1_eval']:.3f}", markup=False, highlight=False)


def out_console() -> Console:
    return out


# --------------------------------------------------------------------------- entry point
def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: user errors end in one line each and a non-zero exit."""
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=argv, prog_name="harness", standalone_mode=False)
    except SpecError as e:
        for p in e.problems:
            err.print(f"error: {p}", markup=False, highlight=False)
        rc = e.exit_code
    except UserError as e:
        err.print(f"error: {e}", markup=False, highlight=False)
        rc = e.exit_code
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()
        rc = 0
    except click.ClickException as e:
        e.show()
        rc = e.exit_code
    except click.exceptions.Abort:
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
