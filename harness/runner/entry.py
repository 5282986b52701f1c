"""`harness run-cell CELL_DIR`: what every executor runs for a cell.

Reads the cell's config.json, sets the cell's thread count, holds the cell's lock (one process
per cell), and runs the cell in this process or, when its spec sets `resources.distributed`,
as data-parallel ranks: the cell's own process starts them (`harness.distributed.runtime`)
and each rank runs this same entry point.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any

from harness.errors import UserError


def read_cell(cell_dir: Path) -> Any:
    """The cell of `cell_dir/config.json` (a `harness.spec.grid.Cell`); UserError naming the
    file and the fix when it is missing or not a valid cell config."""
    from pydantic import ValidationError

    from harness.rundir import read_json_object
    from harness.spec.grid import Cell

    cfg_path = cell_dir / "config.json"
    fix = "delete it and re-run `harness bench` on its spec, which writes it again"
    if cell_dir.exists() and not cell_dir.is_dir():
        raise UserError(f"{cell_dir} is a file, not a cell directory (one holding config.json); "
                        "pass a directory under a run's cells/")
    doc = read_json_object(cfg_path, "the cell's config", fix)
    cid, raw = doc.get("cell_id"), doc.get("config")
    if not isinstance(cid, str) or not isinstance(raw, dict):
        bad = "cell_id (a string)" if not isinstance(cid, str) else "config (an object)"
        raise UserError(f"{cfg_path} (the cell's config) has no {bad}; {fix}")
    try:
        return Cell.from_dict(cid, raw)
    except (ValidationError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0]
        if isinstance(e, ValidationError) and e.errors():
            err = e.errors()[0]
            first = f"{'.'.join(str(x) for x in err['loc']) or 'config'}: {err['msg']}"
        raise UserError(f"cell {cid}: config {cfg_path} is not a valid cell config ({first}); "
                        f"{fix}") from None


def run_cell_dir(cell_dir: Path) -> dict[str, Any] | None:
    """Run (or resume) the cell in `cell_dir`; its result (result.json's content), or None in
    a data-parallel rank other than the first (which writes the cell's files). Errors are
    UserErrors whose message starts with `cell CELL_ID:`."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    import transformers

    from harness.distributed import runtime
    from harness.runner.cell import CellRunner

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    cell = read_cell(cell_dir)
    cid = cell.cell_id
    distributed = cell.resources.distributed != "none"
    rank = os.environ.get(runtime.RANK_ENV)  # set in the processes `runtime.launch` starts
    world = runtime.world_size(cell.resources) if distributed else 1
    # Threads per cell come from the spec (resources.cpus_per_cell), split over its ranks: the
    # thread count changes floating-point reduction order, so it is part of the cell's identity.
    torch.set_num_threads(max(1, int(cell.resources.cpus_per_cell) // world))
    if rank is None:  # the cell's own process (not one of its ranks): one at a time
        try:
            lock = open(cell_dir / ".lock", "w")  # noqa: SIM115 (held for the process's life)
        except OSError as e:
            raise UserError(f"cell {cid}: cannot write in {cell_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"cell {cid} is already running in another process") from None
    try:
        if distributed and rank is None:  # start the ranks, each runs this command
            runtime.check_supported(cell.resources.distributed, cell.model.dtype)
            if cell.model.id == "tiny":  # built once here, not by every rank at once
                from harness.policy.tiny import TinyRecipe, ensure_tiny

                ensure_tiny(cell.model.tiny or TinyRecipe())
            code = runtime.launch([sys.executable, "-m", "harness.cli", "run-cell",
                                   str(cell_dir)], world, cell_dir)
            if code:  # the failed rank's error line is printed already (runtime.launch)
                raise SystemExit(code)
            return json.loads((cell_dir / "result.json").read_text())
        if distributed:
            ranks = runtime.Ranks.join()
            result = CellRunner(cell, cell_dir, ranks=ranks).run()
            torch.distributed.destroy_process_group()
            return result if ranks.main else None
        return CellRunner(cell, cell_dir).run()
    except UserError as e:
        msg = str(e)
        raise UserError(msg if msg.startswith(f"cell {cid}") else f"cell {cid}: {msg}") from None
