"""`harness ui` on a real run directory that was moved (as an unzipped CI artifact is): a real
`mlflow server` starts quietly (only the harness's own line), the URL opens the experiment's
runs table (training kind, the cells view), and the cell runs' artifacts are found in the
moved directory. The same check in a real browser: scripts/ui_screenshot.sh."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness.procutil import session_members
from harness.tracking.lookup import EXPERIMENT_KIND, VIEW_KEY, VIEW_TAG_PREFIX

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(base: str) -> None:
    """Until the MLflow server at `base` answers /health (up to about 3 minutes)."""
    for _ in range(180):
        try:
            urllib.request.urlopen(f"{base}/health", timeout=2)
            return
        except OSError:
            time.sleep(1)


def test_ui_on_a_moved_run_opens_the_cells_with_their_artifacts(
        tiny_smoke_local_run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "downloaded" / "tiny-smoke-report"
    shutil.copytree(tiny_smoke_local_run, moved)
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", str(moved), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            # a suite started in the background inherits SIGINT ignored
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    servers: list[int] = []
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(base)
        servers = _children(proc.pid)
        con = sqlite3.connect(moved / "mlflow.db")
        (exp_id,) = con.execute("SELECT experiment_id FROM experiments WHERE name = "
                                "'tiny-smoke@2'").fetchone()
        tags = dict(con.execute("SELECT key, value FROM experiment_tags WHERE experiment_id "
                                "= ?", (exp_id,)).fetchall())
        (run_id,) = con.execute("SELECT run_uuid FROM tags WHERE key = 'cell_id'").fetchone()
        con.close()
        assert tags[EXPERIMENT_KIND[0]] == EXPERIMENT_KIND[1]
        assert "tags.cell_id" in json.loads(tags[VIEW_TAG_PREFIX + VIEW_KEY])["searchFilter"]
        listed = json.load(urllib.request.urlopen(
            f"{base}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}", timeout=10))
        assert listed["root_uri"].startswith((moved / "mlartifacts").as_uri())
        assert {"trace.jsonl", "result.json"} <= {f["path"] for f in listed["files"]}
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=30)[0]
    lines = output.splitlines()
    assert lines[0] == (f"MLflow UI for {moved}: http://127.0.0.1:{port}/#/experiments/"
                        f"{exp_id}/runs?workflowType=machine_learning&viewStateShareKey="
                        f"{VIEW_KEY}&compareRunsMode=TABLE  (Ctrl-C stops it)")
    assert len(lines) == 1, output  # no registry notice, middleware notice, INFO, warnings
    assert proc.returncode == 0
    # a SIGINT to `harness ui` alone also stops the server's workers (they were left running)
    assert len(servers) == 1 and session_members(servers[0]) == []


def test_sigterm_to_ui_stops_its_server(tiny_smoke_local_run: Path, tmp_path: Path) -> None:
    """`kill PID` of `harness ui`: it ends (exit 0) and takes its MLflow server and every
    process the server started with it; the port is free again (before, the server was left
    running, holding it)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui",
                             str(tiny_smoke_local_run), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        _wait_healthy(f"http://127.0.0.1:{port}")
        (server,) = _children(proc.pid)
        assert len(session_members(server)) > 1, "the server and its workers"
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "Traceback" not in output
    assert session_members(server) == []
    with socket.socket() as s:
        # nobody listens on the port (SO_REUSEADDR: the health checks' closed connections may
        # linger in TIME_WAIT; a listener would still make the bind fail)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def _children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(p.name))
    return out
