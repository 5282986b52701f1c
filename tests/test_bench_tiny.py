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
