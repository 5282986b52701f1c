"""End to end on the built-in tiny policy: `harness bench tiny-smoke` writes the documented
files, is reproducible apart from timing fields, and resumes a killed run to the same result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.runner.trace import read_trace, without_timing

pytestmark = pytest.mark.slow


def _bench(out: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke", "--out",
                           str(out), *extra], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "run1"
    r = _bench(out)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _cell_dirs(run: Path) -> list[Path]:
    return sorted(p for p in (run / "cells").iterdir() if p.is_dir())


def _stable_trace(cell: Path) -> list[dict]:
    return [without_timing(r) for r in read_trace(cell / "trace.jsonl")]


def test_bench_writes_documented_files(first_run: Path) -> None:
    resolved = json.loads((first_run / "resolved_spec.json").read_text())
    assert len(resolved["spec_hash"]) == 64 and resolved["spec"]["name"] == "tiny-smoke"
    env = json.loads((first_run / "environment.json").read_text())
    assert env["harness_version"] and env["packages"]["torch"].startswith("2.")
    results = json.loads((first_run / "results.json").read_text())
    assert results["spec"] == "tiny-smoke" and results["spec_hash"] == resolved["spec_hash"]
    (cell,) = results["cells"]
    assert cell["status"] == "finished"
    assert 0.0 <= cell["end_of_chain"]["pass1_test"] <= 1.0
    assert len(cell["campaigns"]) == 2
    for c in cell["campaigns"]:
        assert {"start", "peak", "peak_step", "end", "gap", "collapsed", "onset", "budget",
                "start_from", "lr"} <= set(c)
    # reference rows beside the arm: both oracles tested on the test split, the offline guard
    for kind, ckpt in (("trace", "c1:peak"), ("hindsight", None)):
        o = cell["oracles"][kind]
        assert o["checkpoint"] == (ckpt or f"c{o['campaign']}:peak")
        assert 0.0 <= o["pass1_test"] <= 1.0
        assert o["pass1_eval"] == cell["campaigns"][o["campaign"]]["peak"]
    assert cell["oracles"]["hindsight"]["pass1_eval"] == max(c["peak"] for c in cell["campaigns"])
    assert [g["campaign"] for g in cell["guard"]["campaigns"]] == [0, 1]
    assert cell["guard"]["summary"]["campaigns"] == 2
    assert [(a["controller"], a["kind"], a["n"]) for a in results["arms"]] == [
        ("naive", "arm", 1), ("trace_oracle", "oracle", 1), ("hindsight_oracle", "oracle", 1),
        ("guard_lead_time", "guard_lead_time", 1)]
    assert results["arms"][0]["pass1_test"] == cell["end_of_chain"]["pass1_test"]
    (cdir,) = _cell_dirs(first_run)
    for name in ("config.json", "trace.jsonl", "result.json"):
        assert (cdir / name).is_file()
    result = json.loads((cdir / "result.json").read_text())
    assert result["oracles"] == cell["oracles"] and result["guard"] == cell["guard"]
    steps = [r for r in read_trace(cdir / "trace.jsonl") if r["type"] == "step"]
    assert len(steps) == 2 * (3 + 1)
    trained = [s for s in steps if s["step"] > 0]
    for key in ("eval_pass1", "train_reward", "entropy", "kl_to_ref", "grad_norm",
                "completion_len", "zero_var_groups"):
        assert all(isinstance(s[key], float) for s in trained), key
    assert all(set(s["time"]) >= {"generate", "grade", "update", "eval"} for s in trained)
    assert [s["global_step"] for s in steps] == [0, 1, 2, 3, 3, 4, 5, 6]
    # The warm-started policy solves some eval tasks before any update (a policy that sees
    # mangled prompts, e.g. through a wrong tokenizer class, scores exactly 0 here).
    assert steps[0]["eval_pass1"] > 0


def _mlflow_cell_runs(run: Path) -> tuple[Any, list[Any]]:
    """The client of a run's MLflow store and the child runs of its parent run."""
    from mlflow import MlflowClient

    state = json.loads((run / "mlflow.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    runs = client.search_runs(
        [state["experiment_id"]],
        filter_string=f"tags.`mlflow.parentRunId` = '{state['parent_run_id']}'")
    return client, list(runs)


def _assert_mlflow_history_is_the_trace(run: Path, *, timings_may_differ: bool = False) -> None:
    """Every child run's metric history holds each point of its cell's trace once, and
    nothing else (timings and verdict-cache counts of a resumed campaign's re-run steps may
    differ)."""
    from collections import Counter

    from harness.tracking import expected_points

    client, runs = _mlflow_cell_runs(run)
    for r in runs:
        pts = expected_points(read_trace(run / "cells" / r.data.tags["cell_id"] / "trace.jsonl"))
        assert set(r.data.metrics) == {p.key for p in pts}
        for key in {p.key for p in pts}:
            got = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)]
            want = [(p.step, p.value) for p in pts if p.key == key]
            if timings_may_differ and key.startswith(("time.", "grading.")):
                got, want = [s for s, _ in got], [s for s, _ in want]
            assert Counter(got) == Counter(want), key


def test_bench_logs_every_cell_to_mlflow(first_run: Path) -> None:
    client, runs = _mlflow_cell_runs(first_run)
    (cell,) = _cell_dirs(first_run)
    assert [r.data.tags["cell_id"] for r in runs] == [cell.name]  # one child run per cell
    (r,) = runs
    results = json.loads((first_run / "results.json").read_text())
    keys = {k: v for k, v in results["cells"][0].items()
            if k in ("cell_id", "model", "method", "controller", "seed")}
    assert {k: r.data.tags[k] for k in keys} == {k: str(v) for k, v in keys.items()}
    assert r.data.tags["spec"] == "tiny-smoke" and r.data.tags["spec_hash"] == results["spec_hash"]
    assert r.data.tags["git_commit"] and r.data.tags["harness_version"]
    assert r.info.status == "FINISHED"
    assert r.data.params["chain.steps"] == "3" and r.data.params["model.id"] == "tiny"
    eoc = results["cells"][0]["end_of_chain"]
    assert r.data.metrics["end_of_chain_pass1_test"] == eoc["pass1_test"]
    assert r.data.metrics["end_of_chain_pass1_eval"] == eoc["pass1_eval"]
    assert "oracle_hindsight_pass1_test" in r.data.metrics
    # per-step history at the global step, the campaign summaries at the campaign index
    steps = [s for s in read_trace(cell / "trace.jsonl") if s["type"] == "step"]
    hist = client.get_metric_history(r.info.run_id, "eval_pass1")
    assert sorted((m.step, m.value) for m in hist) == \
        sorted((s["global_step"], s["eval_pass1"]) for s in steps)
    assert [m.step for m in client.get_metric_history(r.info.run_id, "campaign/peak")] == [0, 1]
    _assert_mlflow_history_is_the_trace(first_run)
    arts = {f.path for f in client.list_artifacts(r.info.run_id)}
    assert {"decisions.json", "trace.jsonl", "result.json", "checkpoints"} <= arts
    ckpts = {f.path for f in client.list_artifacts(r.info.run_id, "checkpoints")}
    assert {"checkpoints/c0_last.safetensors", "checkpoints/c1_last.safetensors"} <= ckpts


def test_second_run_identical_apart_from_timing(first_run: Path, tmp_path: Path) -> None:
    r = _bench(tmp_path / "run2")
    assert r.returncode == 0, r.stderr
    (a,) = _cell_dirs(first_run)
    (b,) = _cell_dirs(tmp_path / "run2")
    assert a.name == b.name
    assert _stable_trace(a) == _stable_trace(b)


def test_rerun_skips_finished_cells(first_run: Path) -> None:
    (cdir,) = _cell_dirs(first_run)
    before = (cdir / "trace.jsonl").read_bytes()
    r = _bench(first_run)
    assert r.returncode == 0, r.stderr
    assert "1 of 1 cells already finished" in r.stdout
    assert (cdir / "trace.jsonl").read_bytes() == before


def test_killed_run_resumes_to_identical_results(first_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke",
                             "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    trace = None
    try:
        while time.time() < deadline:
            cells = list((out / "cells").glob("*/trace.jsonl")) if out.exists() else []
            if cells:
                trace = cells[0]
                recs = read_trace(trace)
                # kill inside the second campaign, after it has made progress
                if any(r["type"] == "campaign" for r in recs) and recs[-1]["type"] == "step" \
                        and recs[-1]["campaign"] == 1 and recs[-1]["step"] >= 1:
                    break
            assert proc.poll() is None, "bench finished before it could be killed"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert trace is not None
    assert not any(r["type"] == "final" for r in read_trace(trace))
    r = _bench(out)
    assert r.returncode == 0, r.stderr
    (a,) = _cell_dirs(first_run)
    assert _stable_trace(a) == _stable_trace(trace.parent)
    ra = json.loads((a / "result.json").read_text())
    rb = json.loads((trace.parent / "result.json").read_text())
    assert ra == rb
    # the killed bench had logged part of the cell; the resumed one logged the rest, once
    _, runs = _mlflow_cell_runs(out)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    _assert_mlflow_history_is_the_trace(out, timings_may_differ=True)


def test_report_of_a_real_run(first_run: Path, tmp_path: Path) -> None:
    from harness.report import write_report

    md, page, missing = write_report(first_run, tmp_path)
    assert missing == [] and md.is_file()
    text = page.read_text()
    assert text.count('src="data:image/png;base64,') == 5
    for fig in ("mean_curves", "seed_curves", "verdict_kinds", "end_of_chain", "peak_vs_end"):
        assert f'<figure id="{fig}"><img' in text, fig
    for needle in ("tiny-smoke", "trace_oracle of naive", "hindsight_oracle of naive",
                   "median lead time", "reinforce/naive"):
        assert needle in text, needle


def test_every_step_records_the_verdict_kinds_of_its_samples(first_run: Path) -> None:
    from harness.runner.verdicts import KINDS

    (cell,) = _cell_dirs(first_run)
    steps = [r for r in read_trace(cell / "trace.jsonl") if r["type"] == "step"]
    assert steps
    for s in steps:
        ev = s["verdicts"]["eval"]
        assert sum(ev[k] for k in KINDS) == s["eval_samples"]
        assert ev["passed"] == s["eval_passes"]
        if s["step"] == 0:
            assert "train" not in s["verdicts"]
        else:
            tr = s["verdicts"]["train"]
            assert sum(tr[k] for k in KINDS) == s["grading"]["train_samples"]
            assert sum(tr[k] for k in KINDS if k != "passed") > 0 or s["train_reward"] == 1
    results = json.loads((first_run / "results.json").read_text())
    (arm,) = [a for a in results["arms"] if a["kind"] == "arm"]
    total = sum(s["verdicts"]["eval"]["passed"] for s in steps)
    assert arm["verdicts"]["eval"]["passed"] == total
