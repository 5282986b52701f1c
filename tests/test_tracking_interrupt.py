"""Ctrl-C on a real `harness bench tiny-smoke`: a real SIGINT to the bench's process group (what
a terminal sends) while its cell runs leaves the MLflow parent and child runs KILLED, as
docs/mlflow.md says, not RUNNING. So does SIGTERM to the bench process alone (what `kill` or a
batch system's time limit sends), which also stops the cell it started."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]



@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_leaves_the_mlflow_runs_killed(tiny_smoke_local_run: Path,
                                                     tmp_path: Path, signum: int,
                                                     wait_for_steps: Any) -> None:
    # tiny_smoke_local_run: the tiny policy is built, so the cell starts at once
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke",
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            # a suite started in the background inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_steps(out, proc, steps=2, timeout=300)
    if signum == signal.SIGINT:
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    else:
        os.kill(proc.pid, signal.SIGTERM)  # `kill PID`: the bench alone
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signum, output
    assert "Traceback" not in output
    how = "interrupted" if signum == signal.SIGINT else "stopped by SIGTERM:"
    assert f"{how} cell " in output and "resume with: harness bench tiny-smoke" in output
    (cell,) = (out / "cells").iterdir()
    with open(cell / ".lock", "w") as lock:  # no cell process is left holding it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    con = sqlite3.connect(out / "mlflow.db")
    statuses = dict(con.execute("SELECT name, status FROM runs").fetchall())
    con.close()
    assert len(statuses) == 2 and set(statuses.values()) == {"KILLED"}, (statuses, output)
