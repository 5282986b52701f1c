"""MLflow tracking (`harness.tracking`): the bench process logs every cell from its trace, and
MLflow's history ends up equal to the traces — with cells running at once, a locked or failing
store, a cell resumed after a crash, and a re-run of the same run directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from harness.executors import local
from harness.runner.trace import read_trace
from harness.tracking import (
    SYNCED_TAG,
    Point,
    Tracker,
    expected_points,
    flat_params,
    missing_points,
    record_points,
    sync_run,
)

CAMPAIGNS, STEPS = 3, 6

# A stand-in for `harness run-cell`: writes a trace like the cell runner's (deterministic
# values, random timings), campaign checkpoints with the same naming and pruning, resumes
# from its last finished campaign, and can die once at a given (campaign, step).
PRODUCER = textwrap.dedent('''
    import json, os, random, sys, time
    from pathlib import Path
    from harness.runner.trace import Trace

    cell_dir = Path(sys.argv[1])
    cfg = json.loads((cell_dir / "config.json").read_text())
    C, B = cfg["config"]["chain"]["campaigns"], cfg["config"]["chain"]["steps"]
    die_at = cfg.get("die_at")
    delay = float(os.environ.get("FAKE_CELL_DELAY", "0.01"))
    trace = Trace(cell_dir / "trace.jsonl")
    done = trace.truncate_to_complete_campaigns()
    g = sum(r["steps_run"] for r in trace.of_type("campaign"))
    ck = cell_dir / "checkpoints"
    ck.mkdir(exist_ok=True)
    for k in range(done, C):
        start_from = "init" if k == 0 else f"c{k - 1}:last"
        trace.append({"type": "plan", "campaign": k, "start_from": start_from, "budget": B,
                      "lr": 1e-3, "reason": "fake", "numbers": {"posterior": 0.5 + k}})
        curve = []
        for s in range(B + 1):
            if die_at == [k, s] and not (cell_dir / "died").exists():
                (cell_dir / "died").write_text("")
                print("error: cell died on purpose", flush=True)
                sys.exit(1)
            g += s > 0
            r = random.Random(f"{cell_dir.name}:{k}:{s}")
            v = r.random()
            curve.append(v)
            trace.append({"type": "step", "campaign": k, "step": s, "global_step": g,
                          "eval_pass1": v, "eval_passes": r.randrange(100),
                          "train_reward": None if s == 0 else r.random(),
                          "entropy": None if s == 0 else r.random(),
                          "kl_to_ref": None if s == 0 else float("nan") if s == 2 else r.random(),
                          "grad_norm": None if s == 0 else r.random(),
                          "zero_var_groups": None if s == 0 else r.random(),
                          "time": {"step": random.random(), "generate": random.random()}})
            time.sleep(delay)
        for name in ("last", "peak"):
            (ck / f"c{k}_{name}.safetensors").write_bytes(os.urandom(64))
        for p in ck.glob("*.safetensors"):
            if not p.name.startswith(f"c{k}_"):
                p.unlink()
        peak = max(curve)
        trace.append({"type": "campaign", "index": k, "start": curve[0], "peak": peak,
                      "peak_step": curve.index(peak), "end": curve[-1],
                      "gap": peak - curve[-1], "collapsed": peak - curve[-1] > 0.2,
                      "onset": None, "budget": B, "steps_run": B, "start_from": start_from,
                      "lr": 1e-3, "stopped_early": None, "reason": "fake"})
    if not trace.of_type("final"):
        trace.append({"type": "final", "carried_from": f"c{C - 1}:last", "reason": "fake",
                      "pass1_test": 0.25, "test_passes": 16, "pass1_eval": 0.5,
                      "oracles": {"trace": {"pass1_test": 0.3, "pass1_eval": 0.6},
                                  "hindsight": {"pass1_test": 0.35, "pass1_eval": 0.7}}})
''')


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store, copied into each test's run directory (creating
    one runs every schema migration: ~10 s)."""
    from mlflow import MlflowClient

    d = tmp_path_factory.mktemp("mlflow-template")
    MlflowClient(f"sqlite:///{d / 'mlflow.db'}").search_experiments()
    return d / "mlflow.db"


def make_run(root: Path, n_cells: int, template: Path | None, die: dict[int, list[int]] | None
             = None) -> tuple[Path, dict[str, Path]]:
    """A run directory as `harness bench` prepares it, with `n_cells` fake cells."""
    run = root / "run"
    (run / "cells").mkdir(parents=True)
    (run / "resolved_spec.json").write_text(json.dumps(
        {"spec_hash": "ab" * 32, "grid_hash": "cd" * 32, "spec": {"name": "fake", "version": 3}}))
    (run / "environment.json").write_text(json.dumps({"harness_version": "0.1.0",
                                                      "git_commit": "0123abcd"}))
    if template is not None:
        shutil.copy(template, run / "mlflow.db")
    cells = {}
    for i in range(n_cells):
        cid = f"tiny_reinforce_naive_s{i}_{i:010d}"
        d = run / "cells" / cid
        d.mkdir()
        config = {"model": {"id": "tiny", "label": None, "tiny": {"hidden_size": 64}},
                  "method": {"name": "reinforce", "label": None, "kl": None},
                  "controller": {"name": "naive", "label": None, "params": {}},
                  "seed": i, "chain": {"campaigns": CAMPAIGNS, "steps": STEPS},
                  "optim": {"lr": 1e-3, "betas": [0.9, 0.999]}}
        doc: dict[str, Any] = {"cell_id": cid, "spec": "fake", "version": 3,
                               "spec_hash": "ab" * 32, "config": config}
        if die and i in die:
            doc["die_at"] = die[i]
        (d / "config.json").write_text(json.dumps(doc))
        cells[cid] = d
    return run, cells


@pytest.fixture
def fake_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_local starts the fake producer instead of `harness run-cell`."""
    producer = tmp_path / "producer.py"
    producer.write_text(PRODUCER)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # this checkout
    monkeypatch.setattr(local, "cell_command",
                        lambda cell_dir: [sys.executable, str(producer), str(cell_dir)])


def run_bench_like(run: Path, cells: dict[str, Path], jobs: int, **kw: Any
                   ) -> tuple[Tracker, dict[str, int], list[str]]:
    """What `harness bench` does with a tracker: start, forward every event, close."""
    warnings: list[str] = []
    close_timeout = kw.pop("close_timeout", 60.0)
    connected_first = kw.pop("connected_first", False)
    tracker = Tracker(run, running=cells, warn=warnings.append, **kw)
    assert tracker.start()
    if connected_first:  # else a slow start may see every record at once
        assert tracker.flush(300)
    codes = local.run_local(cells, jobs, tracker.on_event)
    tracker.close(timeout=close_timeout)
    return tracker, codes, warnings


def client_for(run: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(json.loads((run / "mlflow.json").read_text())["tracking_uri"])


def history_by_key(client: Any, run_id: str, keys: set[str]) -> dict[str, list[tuple[int, Any]]]:
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def assert_history_equals_trace(run: Path, *, exact: bool = True) -> None:
    """For every cell: MLflow holds each point of the trace exactly once (same key, step and
    value; with exact=False timings may differ, as after a resumed campaign), and no other."""
    client = client_for(run)
    state = json.loads((run / "mlflow.json").read_text())
    for cid, run_id in state["cells"].items():
        records = read_trace(run / "cells" / cid / "trace.jsonl")
        pts = expected_points(records)
        keys = {p.key for p in pts}
        hist = history_by_key(client, run_id, keys)
        logged = client.get_run(run_id).data.metrics
        assert set(logged) == keys, cid
        for key in keys:
            want = [(p.step, p.value) for p in pts if p.key == key]
            got = hist[key]
            if exact or not key.startswith("time."):
                assert Counter(_n(x) for x in got) == Counter(_n(x) for x in want), (cid, key)
            else:
                assert Counter(s for s, _ in got) == Counter(s for s, _ in want), (cid, key)
        assert missing_points(pts, hist) == []


def _n(sv: tuple[int, float]) -> tuple[int, Any]:
    s, v = sv
    return s, ("nan" if v != v else v)


# --------------------------------------------------------------------------- pure parts
def test_step_record_points_are_its_numbers_at_the_global_step() -> None:
    rec = {"type": "step", "campaign": 1, "step": 0, "global_step": 20, "eval_pass1": 0.25,
           "train_reward": None, "collapsed": True, "time": {"step": 1.5, "eval": 0.5}}
    pts = {p.key: p for p in record_points([rec], 0)}
    assert set(pts) == {"campaign", "campaign_step", "eval_pass1", "collapsed", "time.step",
                        "time.eval"}
    assert all(p.step == 20 and p.index == 0 for p in pts.values())
    assert pts["campaign"].value == 1.0 and pts["collapsed"].value == 1.0


def test_campaign_plan_and_final_points() -> None:
    records = [
        {"type": "plan", "campaign": 1, "start_from": "c0:last", "budget": 20, "lr": 1e-3,
         "reason": "x", "numbers": {"mu": 0.5, "why": "text"}},
        {"type": "campaign", "index": 1, "start": 0.1, "peak": 0.5, "peak_step": 3, "end": 0.2,
         "gap": 0.3, "collapsed": True, "onset": None, "start_from": "c0:last"},
        {"type": "final", "carried_from": "c1:last", "pass1_test": 0.25, "pass1_eval": 0.5,
         "test_passes": 8, "oracles": {"trace": {"pass1_test": 0.3, "pass1_eval": 0.5}}},
    ]
    plan = {p.key: (p.step, p.value) for p in record_points(records, 0)}
    assert plan == {"plan/budget": (1, 20.0), "plan/lr": (1, 1e-3), "plan/numbers.mu": (1, 0.5)}
    camp = {p.key: (p.step, p.value) for p in record_points(records, 1)}
    assert camp["campaign/peak"] == (1, 0.5) and camp["campaign/collapsed"] == (1, 1.0)
    assert "campaign/onset" not in camp
    final = {p.key: p.value for p in record_points(records, 2)}
    assert final["end_of_chain_pass1_test"] == 0.25 and final["end_of_chain_pass1_eval"] == 0.5
    assert final["oracle_trace_pass1_test"] == 0.3 and final["mean_peak"] == 0.5
    assert final["collapsed_campaigns"] == 1.0


def test_missing_points_counts_each_logged_point_once() -> None:
    pts = [Point(0, "eval_pass1", 0.5, 3), Point(1, "eval_pass1", 0.5, 3),  # campaign boundary
           Point(2, "eval_pass1", 0.7, 4), Point(2, "time.step", 1.0, 4),
           Point(3, "kl_to_ref", float("nan"), 5)]
    assert missing_points(pts, {}) == pts
    hist = {"eval_pass1": [(3, 0.5)], "time.step": [(4, 9.9)], "kl_to_ref": [(5, float("nan"))]}
    # one of the two equal boundary points and the 0.7 are missing; a timing logged by an
    # earlier run of the same step counts as logged
    assert missing_points(pts, hist) == [Point(1, "eval_pass1", 0.5, 3),
                                         Point(2, "eval_pass1", 0.7, 4)]


def test_config_flattens_to_params() -> None:
    params = flat_params({"model": {"id": "tiny", "tiny": {"h": 64}}, "seed": 0,
                          "optim": {"betas": [0.9, 0.999]}, "method": {"kl": None},
                          "controller": {"params": {}}})
    assert params == {"model.id": "tiny", "model.tiny.h": "64", "seed": "0",
                      "optim.betas": "[0.9, 0.999]", "method.kl": "null",
                      "controller.params": "{}"}


# --------------------------------------------------------------------------- with a store
def test_concurrent_cells_lose_nothing(tmp_path: Path, fake_cells: None,
                                       store_template: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CELL_DELAY", "0.05")
    run, cells = make_run(tmp_path, 4, store_template)
    tracker, codes, warnings = run_bench_like(run, cells, jobs=4)
    assert set(codes.values()) == {0} and warnings == []
    assert tracker.summary.ok
    assert_history_equals_trace(run)
    client = client_for(run)
    state = json.loads((run / "mlflow.json").read_text())
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["spec"] == "fake"
    for i, (cid, d) in enumerate(cells.items()):
        r = client.get_run(state["cells"][cid])
        tags = r.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert {k: tags[k] for k in ("cell_id", "model", "method", "controller", "seed", "spec",
                                     "version", "spec_hash", "git_commit",
                                     "harness_version")} == {
            "cell_id": cid, "model": "tiny", "method": "reinforce", "controller": "naive",
            "seed": str(i), "spec": "fake", "version": "3", "spec_hash": "ab" * 32,
            "git_commit": "0123abcd", "harness_version": "0.1.0"}
        assert tags[SYNCED_TAG].startswith(f"{len(read_trace(d / 'trace.jsonl'))}:")
        assert r.data.params["chain.steps"] == str(STEPS)
        assert r.data.params["optim.betas"] == "[0.9, 0.999]"
        assert r.info.status == "FINISHED"
        arts = {f.path for f in client.list_artifacts(r.info.run_id)}
        assert {"decisions.json", "trace.jsonl", "config.json", "checkpoints"} <= arts
        # default policy: the checkpoint each campaign carries on, and the final one; one the
        # cell pruned before the tracker saw its plan is listed as such
        ckpts = {f.path for f in client.list_artifacts(r.info.run_id, "checkpoints")}
        gone = []
        if "checkpoints/missing.json" in ckpts:
            gone = json.loads(Path(client.download_artifacts(
                r.info.run_id, "checkpoints/missing.json", str(tmp_path / cid))).read_text()
            )["pruned_before_logging"]
        logged = {Path(c).stem.replace("_", ":") for c in ckpts if c.endswith(".safetensors")}
        assert logged | set(gone) == {f"c{k}:last" for k in range(CAMPAIGNS)}
        assert f"c{CAMPAIGNS - 1}:last" in logged
        assert (d / "checkpoints" / f"c{CAMPAIGNS - 1}_last.safetensors").read_bytes() == \
            Path(client.download_artifacts(r.info.run_id, f"checkpoints/c{CAMPAIGNS - 1}_last"
                                           ".safetensors", str(tmp_path / cid))).read_bytes()
        got = Path(client.download_artifacts(r.info.run_id, "decisions.json", str(tmp_path)))
        assert [x["campaign"] for x in json.loads(got.read_text())] == list(range(CAMPAIGNS))


def test_rerun_reuses_the_runs_and_a_resumed_cell_logs_nothing_twice(
        tmp_path: Path, fake_cells: None, store_template: Path) -> None:
    run, cells = make_run(tmp_path, 3, store_template, die={1: [1, 3]})
    _, codes, _ = run_bench_like(run, cells, jobs=3)
    died = next(c for c in cells if c.startswith("tiny_reinforce_naive_s1"))
    assert codes[died] == 1
    client = client_for(run)
    first = json.loads((run / "mlflow.json").read_text())
    assert client.get_run(first["cells"][died]).info.status == "FAILED"
    # re-run: the finished cells are skipped, the failed one resumes (its unfinished
    # campaign is re-run and logged again with the same steps and values)
    todo = {died: cells[died]}
    tracker, codes, warnings = run_bench_like(run, todo, jobs=1)
    assert codes == {died: 0} and warnings == [] and tracker.summary.ok
    again = json.loads((run / "mlflow.json").read_text())
    assert again == first
    exp = client.get_experiment_by_name("fake@3")
    assert len(client.search_runs([exp.experiment_id])) == 1 + len(cells)
    assert client.get_run(first["cells"][died]).info.status == "FINISHED"
    assert_history_equals_trace(run, exact=False)


def test_resume_after_logging_stopped_midway_logs_nothing_twice(
        tmp_path: Path, fake_cells: None, store_template: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """As when the bench process is killed: part of a cell is logged, nothing marks it
    synced, and the re-run's cell rewrites its trace and re-sends its records."""
    monkeypatch.setenv("FAKE_CELL_DELAY", "0.05")
    run, cells = make_run(tmp_path, 2, store_template, die={0: [1, 3]})
    batches = Counter[str]()

    def down(name: str, kw: dict[str, Any]) -> bool:  # stops answering after 2 metric batches
        batches[name] += bool(kw.get("metrics"))
        return batches["log_batch"] > 2 and name != "log_text"

    _, codes, warnings = run_bench_like(
        run, cells, jobs=2, client_factory=lambda uri: FlakyClient(uri, down),
        retry_base_s=0.01, retry_cap_s=0.05, close_timeout=1.0, connected_first=True)
    died = next(iter(cells))
    assert codes[died] == 1 and any("harness sync" in w for w in warnings), warnings
    client = client_for(run)
    state = json.loads((run / "mlflow.json").read_text())
    partial = client.get_run(state["cells"][died])
    assert SYNCED_TAG not in partial.data.tags  # so the re-run reads its history
    tracker, codes, warnings = run_bench_like(run, {died: cells[died]}, jobs=1)
    assert codes == {died: 0} and tracker.summary.ok and warnings == []
    assert sync_run(run).ok  # the other cell, not re-run, is logged in full
    assert_history_equals_trace(run, exact=False)


class FlakyClient:
    """An MlflowClient whose writes fail (store unavailable) while `down()` says so."""

    def __init__(self, uri: str, down: Any) -> None:
        from mlflow import MlflowClient

        self._c = MlflowClient(uri)
        self._down = down
        self.failures = 0
        self.durations: list[float] = []  # of every write that reached the store

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._c, name)
        if name not in ("log_batch", "set_tag", "log_artifact", "log_text", "update_run",
                        "set_terminated"):
            return fn

        def call(*a: Any, **kw: Any) -> Any:
            if self._down(name, kw):
                from mlflow.exceptions import MlflowException

                self.failures += 1
                raise MlflowException("store unavailable", error_code="TEMPORARILY_UNAVAILABLE")
            t0 = time.monotonic()
            try:
                return fn(*a, **kw)
            finally:
                self.durations.append(time.monotonic() - t0)
        return call


def test_store_failing_now_and_then_loses_nothing(tmp_path: Path, fake_cells: None,
                                                  store_template: Path) -> None:
    run, cells = make_run(tmp_path, 3, store_template)
    calls = Counter[str]()

    def down(name: str, kw: dict[str, Any]) -> bool:
        calls[name] += 1
        return calls[name] % 3 != 0  # two of three writes fail

    clients: list[FlakyClient] = []

    def factory(uri: str) -> FlakyClient:
        clients.append(FlakyClient(uri, down))
        return clients[-1]

    tracker, codes, warnings = run_bench_like(run, cells, jobs=3, client_factory=factory,
                                              retry_base_s=0.01, retry_cap_s=0.05)
    assert set(codes.values()) == {0} and tracker.summary.ok
    assert clients[0].failures > 20
    assert len(warnings) == 1 and "retrying" in warnings[0]  # warned once
    assert_history_equals_trace(run)


def test_store_down_never_stops_the_cells_and_sync_logs_everything_later(
        tmp_path: Path, fake_cells: None, store_template: Path) -> None:
    run, cells = make_run(tmp_path, 2, store_template)
    tracker, codes, warnings = run_bench_like(
        run, cells, jobs=2, client_factory=lambda uri: FlakyClient(uri, lambda name, kw: True),
        retry_base_s=0.01, retry_cap_s=0.05, close_timeout=1.0)
    assert set(codes.values()) == {0}  # every cell finished: tracking never blocks them
    assert not tracker.summary.ok
    assert any("harness sync" in w for w in warnings)
    from harness.cli import main

    assert main(["sync", str(run)]) == 0
    assert_history_equals_trace(run)
    client = client_for(run)  # the runs the failing start created were reused, not duplicated
    exp = client.get_experiment_by_name("fake@3")
    assert len(client.search_runs([exp.experiment_id])) == 1 + len(cells)
    for run_id in json.loads((run / "mlflow.json").read_text())["cells"].values():
        assert client.get_run(run_id).data.params["chain.campaigns"] == str(CAMPAIGNS)


def test_locked_sqlite_store_loses_nothing(tmp_path: Path, fake_cells: None,
                                           store_template: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_CELL_DELAY", "0.1")  # each cell writes for about 2 s
    run, cells = make_run(tmp_path, 3, store_template)
    clients: list[FlakyClient] = []

    def factory(uri: str) -> FlakyClient:
        clients.append(FlakyClient(uri, lambda name, kw: False))
        return clients[-1]

    tracker = Tracker(run, running=cells, client_factory=factory)
    assert tracker.start()
    assert tracker.flush(120)  # connected and caught up
    locked = threading.Event()

    def hold_lock() -> None:
        while not any(len(read_trace(d / "trace.jsonl")) >= 3 for d in cells.values()):
            time.sleep(0.05)  # lock while the cells write steps
        con = sqlite3.connect(run / "mlflow.db", isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(1.0)
        con.execute("ROLLBACK")
        con.close()

    t = threading.Thread(target=hold_lock)
    t.start()
    codes = local.run_local(cells, 3, tracker.on_event)
    t.join()
    summary = tracker.close()
    assert locked.is_set() and set(codes.values()) == {0}, codes
    assert summary.ok, summary
    assert_history_equals_trace(run)


@pytest.mark.slow
def test_ui_serves_the_run_store(tmp_path: Path, fake_cells: None, store_template: Path) -> None:
    run, cells = make_run(tmp_path, 1, store_template)
    run_bench_like(run, cells, jobs=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", str(run), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in first
        url = (f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name"
               "?experiment_name=fake%403")
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.time() < deadline, "the UI did not answer in 120 s"
                time.sleep(0.5)
        assert body["experiment"]["name"] == "fake@3"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
            assert r.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_tracking_off_when_the_run_dir_is_already_being_logged(tmp_path: Path) -> None:
    run, _ = make_run(tmp_path, 1, None)
    warnings: list[str] = []
    first = Tracker(run, warn=warnings.append, client_factory=lambda uri: None)
    first._lock_file = open(run / ".mlflow.lock", "a")  # noqa: SIM115
    import fcntl

    fcntl.flock(first._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    second = Tracker(run, warn=warnings.append)
    assert second.start() is False
    assert "another harness process" in warnings[0] and "harness sync" in warnings[0]
    first._release()


def test_ui_and_sync_default_to_the_latest_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    from harness.errors import UserError
    from harness.tracking import resolve_run_dir, ui_command

    monkeypatch.setenv("HARNESS_RUNS", str(tmp_path / "runs"))
    with pytest.raises(UserError, match="no run directory"):
        resolve_run_dir(None)
    for i, name in enumerate(("a@1/old", "b@2/new")):
        d = tmp_path / "runs" / name
        d.mkdir(parents=True)
        (d / "resolved_spec.json").write_text("{}")
        os.utime(d / "resolved_spec.json", (1000 + i, 1000 + i))
    assert resolve_run_dir(None) == tmp_path / "runs" / "b@2" / "new"
    with pytest.raises(UserError, match="harness sync"):  # no store yet
        ui_command(tmp_path / "runs" / "b@2" / "new", "127.0.0.1", 5000)
