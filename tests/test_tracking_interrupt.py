"""Ctrl-C on a real `harness bench tiny-smoke`: a real SIGINT to the bench's process group (what
a terminal sends) while its cell runs leaves the MLflow parent and child runs KILLED, as
docs/mlflow.md says, not RUNNING."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ctrl_c_leaves_the_mlflow_runs_killed(tiny_smoke_local_run: Path, tmp_path: Path
                                              ) -> None:
    # tiny_smoke_local_run: the tiny policy is built, so the cell starts at once
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke",
                             "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            # a suite started in the background inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        traces = list(out.glob("cells/*/trace.jsonl"))
        if traces and traces[0].read_text().count('"type": "step"') >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the bench ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output
    con = sqlite3.connect(out / "mlflow.db")
    statuses = dict(con.execute("SELECT name, status FROM runs").fetchall())
    con.close()
    assert len(statuses) == 2 and set(statuses.values()) == {"KILLED"}, (statuses, output)
