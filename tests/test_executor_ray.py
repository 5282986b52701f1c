"""The `ray` executor against real local Ray clusters: `harness bench tiny-smoke --executor
ray` gives the end-of-chain results of `--executor local`; a cell whose Ray worker is killed
is retried and resumes to the same results; a cluster without the GPUs a spec asks for, an
unreachable address and a missing Ray are one-line errors, before anything is submitted."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UserError
from harness.executors import ExecutorOptions
from harness.executors.ray import RayOptions, check_resources, forwarded_env, run_ray
from harness.runner.trace import read_trace, without_timing


def _bench(out: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke", "--out",
                           str(out), *extra], capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cell(run: Path) -> Path:
    (cell,) = sorted(p for p in (run / "cells").iterdir() if p.is_dir())
    return cell


def _stable_trace(cell: Path) -> list[dict[str, Any]]:
    return [without_timing(r) for r in read_trace(cell / "trace.jsonl")]


def _assert_same_results(run: Path, reference: Path) -> None:
    """End-of-chain results (results.json), per-step eval pass@1 and every other trace
    field apart from timings, and result.json are those of the reference run."""
    got, want = (json.loads((r / "results.json").read_text()) for r in (run, reference))
    assert [c["status"] for c in got["cells"]] == ["finished"]
    for key in ("end_of_chain", "campaigns", "oracles", "guard"):
        assert got["cells"][0][key] == want["cells"][0][key], key
    assert got["arms"] == want["arms"]
    a, b = _cell(run), _cell(reference)
    assert a.name == b.name
    steps = [[(s["global_step"], s["eval_pass1"]) for s in read_trace(c / "trace.jsonl")
              if s["type"] == "step"] for c in (a, b)]
    assert steps[0] == steps[1] and len(steps[0]) == 2 * (3 + 1)
    assert _stable_trace(a) == _stable_trace(b)
    assert json.loads((a / "result.json").read_text()) == \
        json.loads((b / "result.json").read_text())


@pytest.fixture(scope="module")
def local_run(tiny_smoke_local_run: Path) -> Path:
    return tiny_smoke_local_run


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A real one-node Ray cluster (`ray start --head`, 2 CPUs, no GPU) in its own session
    and temporary directory; its processes are ended by id at teardown."""
    from harness.executors.ray import _reap

    temp_dir = tempfile.mkdtemp(prefix="hr-test-", dir="/tmp")  # short: Ray's socket paths
    port = _free_port()
    out = Path(temp_dir) / "ray-start.txt"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
             "--num-cpus", "2", "--num-gpus", "0", "--port", str(port),
             "--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp_dir],
            stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while b"Ray runtime started" not in out.read_bytes():
            assert proc.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)  # `ray start` and everything it started
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        _reap(temp_dir)  # anything that left the session, then the directory


# --------------------------------------------------------------------------- fast checks
def test_missing_ray_is_one_line_with_the_install_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserError) as e:
        run_ray({}, 1, lambda *_: None, ExecutorOptions(run_dir=tmp_path))
    assert "pip install 'rl-collapse-harness[ray]'" in str(e.value)
    assert "\n" not in str(e.value)


def test_unreachable_address_fails_fast(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        run_ray({}, 1, lambda *_: None,
                ExecutorOptions(run_dir=tmp_path,
                                settings=RayOptions(address=f"127.0.0.1:{port}")))
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert f":{port}" in msg and "cannot connect to the Ray cluster" in msg and "\n" not in msg


def test_resource_check() -> None:
    cpu = {"Alive": True, "Resources": {"CPU": 8.0}}
    gpus = {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0}}
    dead = {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}
    opts = ExecutorOptions(run_dir=Path("."), gpus_per_cell=2, cpus_per_cell=4)
    check_resources([cpu, gpus], opts, "x")
    check_resources([cpu], ExecutorOptions(run_dir=Path("."), cpus_per_cell=8), "x")
    for nodes, o in (([cpu, dead], opts),  # a dead node does not count
                     ([gpus], ExecutorOptions(run_dir=Path("."), gpus_per_cell=3)),
                     # the GPUs and CPUs of one cell must be on one node
                     ([cpu, gpus], ExecutorOptions(run_dir=Path("."), gpus_per_cell=1,
                                                   cpus_per_cell=6))):
        with pytest.raises(UserError, match=r"resources\.gpus_per_cell"):
            check_resources(nodes, o, "x")


def test_forwarded_environment() -> None:
    env = forwarded_env({"HARNESS_CACHE": "rel/cache", "HF_HUB_OFFLINE": "1", "PATH": "/bin",
                         "CUDA_VISIBLE_DEVICES": "0", "PYTHONHASHSEED": "0"})
    assert env == {"HARNESS_CACHE": os.path.abspath("rel/cache"), "HF_HUB_OFFLINE": "1",
                   "PYTHONHASHSEED": "0"}


# --------------------------------------------------------------------------- real clusters
@pytest.mark.slow
def test_cluster_without_the_gpus_fails_before_submitting(ray_cluster: str,
                                                          tmp_path: Path) -> None:
    cell = tmp_path / "cells" / "c"
    cell.mkdir(parents=True)
    events: list[Any] = []
    t0 = time.monotonic()
    with pytest.raises(UserError) as e:
        run_ray({"c": cell}, 1, lambda *a: events.append(a),
                ExecutorOptions(run_dir=tmp_path, gpus_per_cell=1,
                                settings=RayOptions(address=ray_cluster)))
    assert time.monotonic() - t0 < 120
    msg = str(e.value)
    assert "no node with 1 GPU(s)" in msg and "at most 0 GPU(s) and 2 CPU(s)" in msg, msg
    assert "resources.gpus_per_cell" in msg and "\n" not in msg
    assert events == [] and not (cell / "log.txt").exists()


@pytest.mark.slow
def test_failing_cells_are_reported_not_retried(ray_cluster: str, tmp_path: Path) -> None:
    broken = tmp_path / "cells" / "broken"  # run-cell exits non-zero on its own
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")
    missing = tmp_path / "cells" / "missing"  # not visible to the node: no config.json
    missing.mkdir()
    events: list[tuple[str, dict[str, Any]]] = []
    codes = run_ray({"broken": broken, "missing": missing}, 2,
                    lambda cid, ev: events.append((cid, ev)),
                    ExecutorOptions(run_dir=tmp_path, settings=RayOptions(address=ray_cluster)))
    assert codes["broken"] != 0 and codes["missing"] != 0
    exits = {cid: ev for cid, ev in events if ev["event"] == "exit"}
    assert [ev["event"] for cid, ev in events if cid == "broken"] == ["start", "exit"]
    assert "(the cell's config) has no cell_id" in exits["broken"]["error"]
    assert "must be on a filesystem that every node mounts" in exits["missing"]["error"]
    for cell in (broken, missing):  # one attempt each
        assert "retrying" not in (cell / "log.txt").read_text()


@pytest.mark.slow
def test_ray_executor_gives_the_results_of_local(local_run: Path, tmp_path: Path) -> None:
    """The acceptance command: no --address, so the bench starts (and ends) a private local
    Ray cluster."""
    out = tmp_path / "ray"
    r = _bench(out, "--executor", "ray")
    assert r.returncode == 0, r.stdout + r.stderr
    _assert_same_results(out, local_run)
    assert json.loads((out / "results.json").read_text())["executor"]["name"] == "ray"
    assert "warning: " not in r.stderr  # no retry happened


def _run_cell_pid(cell: Path) -> int | None:
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                argv = (p / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"run-cell" in argv and str(cell).encode() in argv:
                return int(p.name)
    return None


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_last_campaign(local_run: Path, ray_cluster: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "killed"
    with open(tmp_path / "stdout.txt", "w") as so, open(tmp_path / "stderr.txt", "w") as se:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke",
                                 "--out", str(out), "--executor", "ray", "--address",
                                 ray_cluster], stdout=so, stderr=se)
    try:
        deadline = time.monotonic() + 600
        while True:  # until the first campaign is complete in the trace
            assert proc.poll() is None, "bench finished before its worker could be killed"
            assert time.monotonic() < deadline
            traces = list((out / "cells").glob("*/trace.jsonl")) if out.exists() else []
            if traces and any(r["type"] == "campaign" for r in read_trace(traces[0])):
                break
            time.sleep(0.05)
        cell = traces[0].parent
        child = _run_cell_pid(cell)
        assert child is not None
        worker = _parent(child)
        assert Path(f"/proc/{worker}/cmdline").read_bytes().startswith(b"ray::")
        os.kill(worker, signal.SIGKILL)
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 0, (tmp_path / "stdout.txt").read_text() + stderr
    # the lost attempt's run-cell died with its worker (none is left); the retry is said
    assert _run_cell_pid(cell) is None
    retry = "its Ray worker was lost (WorkerCrashedError"
    assert stderr.count(retry) == 1 and "attempt 2 of 3" in stderr, stderr
    log = (cell / "log.txt").read_text()
    assert f"ray executor: cell {cell.name}: {retry}" in log
    assert log.count(f"cell {cell.name} finished: end-of-chain pass@1") == 1
    # run-cell's resume reruns the unfinished campaign from its start checkpoint: the cell
    # ends exactly where the uninterrupted local run did
    _assert_same_results(out, local_run)


@pytest.mark.slow
def test_sigterm_stops_a_ray_bench_as_ctrl_c_does(tmp_path: Path, wait_for_steps: Any
                                                   ) -> None:
    """`kill PID` of a bench on a private Ray cluster while its cell runs: exit 143 and the
    resume line, its run-cell stopped. ray.init installs a SIGTERM handler that exits at once
    (no resume line, MLflow runs left RUNNING); the executor puts the bench's own back."""
    import sqlite3

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke",
                             "--out", str(out), "--executor", "ray"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_steps(out, proc)
    os.kill(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 143, output
    assert "stopped by SIGTERM: cell " in output and "resume with: harness bench tiny-smoke" \
        in output and "--executor ray" in output, output
    assert _run_cell_pid(_cell(out)) is None
    con = sqlite3.connect(out / "mlflow.db")
    statuses = set(dict(con.execute("SELECT name, status FROM runs").fetchall()).values())
    con.close()
    assert statuses == {"KILLED"}, (statuses, output)
