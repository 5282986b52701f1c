"""The `local` executor: each cell in its own process on this machine, up to `jobs` at once.

Every executor calls the same cell entry point (`harness run-cell CELL_DIR`, which reads
`CELL_DIR/config.json`); they differ only in where that process runs. Progress is read back
from each cell's trace (the source of truth), so it needs no channel of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.executors.base import EXECUTORS, Executor, ExecutorOptions, OnEvent
from harness.procutil import die_with_parent


@dataclass
class CellProcess:
    cell_id: str
    cell_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    offset: int = 0
    inode: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    returncode: int | None = None
    log_start: int = 0  # the size of log.txt when this attempt started (earlier ones above)


def cell_command(cell_dir: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run-cell", str(cell_dir)]


def ending_signal(returncode: int | None) -> signal.Signals | None:
    """The signal that ended a cell's process: a negative return code (a local process), or
    128 + SIGKILL or SIGTERM (what a container's init, `docker run --init`, exits with); None
    for an exit of its own."""
    if returncode is None:
        return None
    number = -returncode if returncode < 0 else (
        returncode - 128 if returncode in (128 + signal.SIGKILL, 128 + signal.SIGTERM) else 0)
    try:
        return signal.Signals(number) if number > 0 else None
    except ValueError:
        return None


def log_size(cell_dir: Path) -> int:
    """The size of a cell's log.txt now (0 when there is none): where an attempt's lines
    start."""
    try:
        return (cell_dir / "log.txt").stat().st_size
    except OSError:
        return 0


def last_error(cell_dir: Path, returncode: int | None = None, since: int = 0) -> str:
    """Why a cell's attempt failed, from what it wrote to log.txt after byte `since` (earlier
    attempts' lines are not its reasons): when a signal ended its process (`ending_signal`),
    which one and what to do; else its last `error:` line; else its last line."""
    if (sig := ending_signal(returncode)) is not None:
        why = (" (what the kernel's out-of-memory killer sends: check the machine's free "
               "memory, e.g. run fewer cells at once)" if sig == signal.SIGKILL else "")
        return (f"its process was killed by {sig.name}{why}; re-run the same command to "
                "resume it from its last finished campaign")
    try:
        with open(cell_dir / "log.txt", "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return "no log written"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    if errors:
        return errors[-1][len("error:"):].strip()
    return lines[-1] if lines else "exited without output"


def poll_trace(cp: CellProcess) -> list[dict[str, Any]] | None:
    """New complete records of a cell's trace; None when the trace was rewritten (a resumed
    cell drops its unfinished campaign), after which all records are new again."""
    path = cp.cell_dir / "trace.jsonl"
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if cp.inode is not None and (st.st_ino != cp.inode or st.st_size < cp.offset):
                cp.inode, cp.offset, cp.records = None, 0, []
                return None
            cp.inode = st.st_ino
            f.seek(cp.offset)
            data = f.read()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n")
    if end < 0:
        return []
    cp.offset += end + 1
    new = [json.loads(line) for line in data[: end + 1].splitlines() if line.strip()]
    cp.records.extend(new)
    return new


def forward_records(cp: CellProcess, on_event: Callable[[str, dict[str, Any]], None]) -> None:
    """Report a cell's new trace records through `on_event` (a `start` event first when the
    trace was rewritten). Shared by the executors that tail a cell's trace."""
    new = poll_trace(cp)
    if new is None:
        on_event(cp.cell_id, {"event": "start", "records": []})
        new = poll_trace(cp) or []
    for rec in new:
        on_event(cp.cell_id, {"event": "record", "record": rec})


def run_local(cell_dirs: dict[str, Path], jobs: int,
              on_event: Callable[[str, dict[str, Any]], None],
              command: Callable[[CellProcess], list[str]] | None = None,
              release: Callable[[CellProcess], None] | None = None) -> dict[str, int]:
    """Run cells with at most `jobs` processes; return {cell_id: exit code}.

    `command(cell)` is the process that runs a cell (default: `harness run-cell` here; the
    docker executor's `docker run ...`); `release(cell)` is called once that process has
    ended, however it ended (the docker executor frees the cell's GPUs and container)."""
    pending = [CellProcess(cid, d) for cid, d in cell_dirs.items()]
    running: list[CellProcess] = []
    codes: dict[str, int] = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cp = pending.pop(0)
                log = open(cp.cell_dir / "log.txt", "ab")  # noqa: SIM115 (owned by the child)
                cp.log_start = os.fstat(log.fileno()).st_size
                argv = command(cp) if command else cell_command(cp.cell_dir)
                cp.proc = subprocess.Popen(argv, stdout=log,
                                           stderr=subprocess.STDOUT, env=env,
                                           preexec_fn=die_with_parent)
                running.append(cp)  # from here on an interrupt stops it (the finally below)
                log.close()
                # progress starts after the records a resumed cell already has
                poll_trace(cp)
                on_event(cp.cell_id, {"event": "start", "records": cp.records})
            time.sleep(0.25)
            for cp in list(running):
                forward_records(cp, on_event)
                assert cp.proc is not None
                rc = cp.proc.poll()
                if rc is not None:
                    forward_records(cp, on_event)
                    codes[cp.cell_id] = rc
                    if release:
                        release(cp)
                    on_event(cp.cell_id, {"event": "exit", "returncode": rc,
                                          "error": last_error(cp.cell_dir, rc, cp.log_start)
                                          if rc else None})
                    running.remove(cp)
    finally:
        for cp in running:
            if cp.proc is not None and cp.proc.poll() is None:
                cp.proc.send_signal(signal.SIGTERM)
        for cp in running:
            if cp.proc is not None:
                try:
                    cp.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    cp.proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        cp.proc.wait(timeout=10)  # its cell lock goes with it
            if release:
                release(cp)
    return codes


class LocalExecutor(Executor):
    name = "local"
    description = "each cell in its own process on this machine, up to --jobs at once."

    def run(self, cells: dict[str, Path], jobs: int, on_event: OnEvent,
            options: ExecutorOptions) -> dict[str, int]:
        return run_local(cells, jobs, on_event)


EXECUTORS.add(LocalExecutor.name, LocalExecutor())
