"""The PR gate on a real run: `harness bench tiny-smoke` (a fresh build of the tiny policy, as
on a fresh CI clone) against the committed exact baseline benchmarks/baselines/tiny-smoke.json
passes; the same run with one result changed fails with exit 1 and names the moved figure;
a missing run, a corrupt trace and a cut-off trace exit 2 (could not evaluate) with one line
naming the file and line, in gate, compare and report alike; ci/gate.sh reports exit 2 as
"could not evaluate"."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "benchmarks" / "baselines" / "tiny-smoke.json"


def _harness(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture()
def run(tiny_smoke_local_run: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny-smoke run (the fixture is read-only)."""
    dest = tmp_path / "run"
    shutil.copytree(tiny_smoke_local_run, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return dest


def _trace(run: Path) -> Path:
    (path,) = run.glob("cells/*/trace.jsonl")
    return path


def test_committed_baseline_is_exact_with_provenance() -> None:
    doc = json.loads(BASELINE.read_text())
    assert doc["mode"] == "exact" and doc["format"] == 2
    # one variant of the arm per CPU vector width the project's CI machines have
    platforms = [a["provenance"]["environment"]["cpu"]["capability"] for a in doc["arms"]]
    assert sorted(platforms) == ["AVX2", "AVX512"]
    for arm in doc["arms"]:
        assert (arm["model"], arm["method"], arm["controller"]) == ("tiny", "reinforce", "naive")
        prov = arm["provenance"]
        assert prov["git_commit"] and prov["reason"] and prov["spec_hash"] == doc["spec_hash"]
        env = prov["environment"]
        assert env["packages"]["torch"] and env["gpu"] is None
        figures = arm["per_seed"][0]["figures"]
        assert "end_of_chain.pass1_test" in figures and "trace.c1.s3.eval_pass1" in figures
        assert not any(".time." in n or ".grading." in n for n in figures)


def _set_capability(run: Path, capability: str) -> None:
    env_path = run / "environment.json"
    env = json.loads(env_path.read_text())
    env["cpu"]["capability"] = capability
    env_path.write_text(json.dumps(env))


def test_exact_variants_per_platform_register_and_gate(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "baselines"
    shutil.copytree(BASELINE.parent, store)
    path = store / "tiny-smoke.json"
    doc = json.loads(path.read_text())
    mine = json.loads((run / "environment.json").read_text())["cpu"]["capability"]
    assert _harness(capsys, "baseline", "register", str(run), "--baselines", str(store))[0] == 0
    after = json.loads(path.read_text())
    # re-registering on a platform replaces that platform's variant only
    assert len(after["arms"]) == len({a["provenance"]["environment"]["cpu"]["capability"]
                                      for a in doc["arms"]} | {mine})
    # a variant for a made-up platform, whose figures differ: it gates only its own platform
    other = json.loads(json.dumps(next(
        a for a in after["arms"] if a["provenance"]["environment"]["cpu"]["capability"] == mine)))
    other["provenance"]["environment"]["cpu"]["capability"] = "SVE256"
    other["per_seed"][0]["figures"]["end_of_chain.pass1_test"] = -1.0
    after["arms"].append(other)
    path.write_text(json.dumps(after))
    rc, out, err = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 0 and "identical" in out and "warning" not in err, out + err
    _set_capability(run, "SVE256")
    rc, out, err = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 1 and "end_of_chain.pass1_test: -1.0 ->" in out, out + err
    # a platform with no variant: one warning, checked statistically against the first
    # variant's figures; with one seed `no_worse` passes when the run scores at least as
    # high, else it is inconclusive (exit 3): which one depends on this machine's CPU kind
    _set_capability(run, "NEON")
    rc, out, err = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert "this run's is NEON" in err and "checked statistically" in err, out + err
    assert "1 seed < 6 needed" in out, out
    diff = float(re.search(r"test p@1 \S ([+-]\d+\.\d+) ", out).group(1))
    assert rc == (0 if diff >= 0 else 3), out + err
    # registering there adds a third variant and keeps the other two
    assert _harness(capsys, "baseline", "register", str(run), "--baselines", str(store))[0] == 0
    caps = [a["provenance"]["environment"]["cpu"]["capability"]
            for a in json.loads(path.read_text())["arms"]]
    assert caps.count("NEON") == 1 and "SVE256" in caps and mine in caps
    rc, out, err = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 0, out + err


def test_tiny_smoke_passes_the_committed_exact_baseline(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _harness(capsys, "gate", str(run))
    assert rc == 0, out + err
    assert "identical" in out and "gate: pass (exact: 1 registered cell(s) identical)" in out


def test_one_changed_result_fails_the_gate_and_is_named(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # end-of-chain test pass@1 changed where it comes from (the trace's final record) and
    # where it is collected (result.json, results.json): a consistent run, another result
    trace = _trace(run)
    lines = trace.read_text().splitlines()
    final = json.loads(lines[-1])
    old = final["pass1_test"]
    final["pass1_test"] = old + 1 / 64
    trace.write_text("\n".join([*lines[:-1], json.dumps(final)]) + "\n")
    results = json.loads((run / "results.json").read_text())
    results["cells"][0]["end_of_chain"]["pass1_test"] = final["pass1_test"]
    (run / "results.json").write_text(json.dumps(results))
    rc, out, err = _harness(capsys, "gate", str(run))
    assert rc == 1, out + err
    assert "MOVED: 1 figure(s) differ" in out
    assert f"end_of_chain.pass1_test: {old} -> {final['pass1_test']}" in out
    assert "gate: FAIL (exact: 1 figure(s) moved in 1 of 1 registered cell(s))" in out
    assert "harness baseline register" in out


def test_a_changed_step_figure_fails_the_gate(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = _trace(run)
    records = [json.loads(ln) for ln in trace.read_text().splitlines()]
    step = next(r for r in records if r["type"] == "step" and r["step"] == 2)
    step["tokens_generated"] += 1
    step["time"] = {"step": 123.0}  # timings are not figures: this alone would pass
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    rc, out, _ = _harness(capsys, "gate", str(run))
    assert rc == 1 and f"trace.c{step['campaign']}.s2.tokens_generated" in out, out


def test_missing_run_and_corrupt_traces_exit_2_in_gate_compare_and_report(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("gate", "compare", "report"):
        rc, out, err = _harness(capsys, cmd, str(tmp_path / "nowhere"))
        assert rc == 2 and err.count("error:") == 1 and "does not exist" in err, cmd
    trace = _trace(run)
    lines = trace.read_text().splitlines(keepends=True)
    trace.write_text("".join([*lines[:3], "{garbage\n", *lines[3:]]))
    for cmd in ("gate", "compare", "report"):
        rc, out, err = _harness(capsys, cmd, str(run))
        assert rc == 2, (cmd, out, err)
        assert err.count("error:") == 1 and f"{trace}:4: not a JSON line" in err, (cmd, err)
        assert "Traceback" not in out + err
    # a finished cell's trace cut short (a partial copy): its last line has no newline
    trace.write_text("".join(lines)[:-20])
    for cmd in ("gate", "compare", "report"):
        rc, _, err = _harness(capsys, cmd, str(run))
        assert rc == 2 and f"{trace}:{len(lines)}: the last line is cut off" in err, (cmd, err)


def test_cut_off_line_of_an_unfinished_cell_is_a_note_in_the_report(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A cell still running (or stopped) has the step in flight as a cut-off last line: the
    report leaves it out and says so; it is not an error."""
    trace = _trace(run)
    lines = trace.read_text().splitlines(keepends=True)
    trace.write_text("".join(lines[:5]) + lines[5][:30])
    results = json.loads((run / "results.json").read_text())
    results["cells"][0].update(status="partial", end_of_chain=None)
    (run / "results.json").write_text(json.dumps(results))
    rc, _, err = _harness(capsys, "report", str(run), "--out", str(run / "rep"))
    assert rc == 0, err
    assert f"{trace}:6 is cut off" in err and "error:" not in err


def test_gate_script_says_could_not_evaluate_for_a_missing_directory(tmp_path: Path) -> None:
    """ci/gate.sh with the real harness (a shim running this checkout's CLI)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "harness"
    shim.write_text(f"#!/bin/sh\nexec {sys.executable} -m harness.cli \"$@\"\n")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO), "GITHUB_STEP_SUMMARY": ""}
    r = subprocess.run(["bash", str(REPO / "ci" / "gate.sh"), str(tmp_path / "nowhere")],
                       capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "does not exist" in r.stdout and "could not evaluate" in r.stdout
    assert "a gated comparison failed" not in r.stdout
