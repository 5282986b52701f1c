"""`harness gate`, `compare` and `baseline register` on hand-made run directories
(results.json + resolved_spec.json, no model): exit 0 / 1 / 3, registered baselines and
their staleness, bad input in one line, and the comparisons `harness bench` stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.bench import collect_results
from harness.cli import main
from harness.compare import evaluate_comparisons, load_run
from harness.results import chain_aggregates
from harness.spec import Spec, expand_cells, resolved_dict, spec_hash
from harness.spec.grid import grid_hash

ES_VS_NAIVE = {"candidate": {"method": "reinforce", "controller": "es"},
               "baseline": {"method": "reinforce", "controller": "naive"},
               "expect": "improves", "gate": True, "note": "made up"}


def _spec(seeds: int, comparisons: list[dict[str, Any]] | None = None, version: int = 1
          ) -> Spec:
    return Spec.model_validate({
        "name": "gate-demo", "version": version, "models": [{"id": "tiny"}],
        "methods": ["reinforce"], "controllers": ["naive", "es"],
        "seeds": list(range(seeds)),
        "comparisons": [ES_VS_NAIVE] if comparisons is None else comparisons})


def _naive(seed: int) -> float:
    return 0.10 + 0.03 * (seed % 4)


def _make_run(path: Path, spec: Spec, es_shift: float, *, naive: Any = _naive,
              unfinished: tuple[int, ...] = ()) -> Path:
    """A run directory whose `es` cells score naive + es_shift (+ a little seed noise)."""
    cells = []
    for c in expand_cells(spec):
        k = c.keys()
        v = naive(c.seed)
        if k["controller"] == "es":
            v += es_shift + 0.004 * ((c.seed * 7) % 3 - 1)
        done = c.seed not in unfinished
        campaign = {"index": 0, "start": v, "peak": v + 0.1, "end": v, "gap": 0.1,
                    "collapsed": False}
        eoc = {"pass1_test": v, "pass1_eval": v + 0.05, "carried_from": "c0:last"}
        cells.append({**k, "controller_name": k["controller"],
                      "status": "finished" if done else "partial",
                      "end_of_chain": eoc if done else None, "campaigns": [campaign],
                      "aggregates": {**chain_aggregates([campaign]), "total_steps": 4}})
        # the trace results.json comes from (gate and compare check it)
        trace = path / "cells" / k["cell_id"] / "trace.jsonl"
        trace.parent.mkdir(parents=True)
        trace.write_text("".join(json.dumps(r) + "\n" for r in
                                 [{"type": "campaign", **campaign}]
                                 + ([{"type": "final", **eoc}] if done else [])))
    (path / "resolved_spec.json").write_text(json.dumps(
        {"spec_hash": spec_hash(spec), "grid_hash": grid_hash(expand_cells(spec)),
         "spec": resolved_dict(spec)}))
    (path / "environment.json").write_text(json.dumps(
        {"harness_version": "0.1.0", "git_commit": "abc123", "python": "3.11.7",
         "platform": "Linux", "packages": {"torch": "2.13.0"}, "cpu": {"count": 2},
         "gpu": None, "cuda": None}))
    (path / "results.json").write_text(json.dumps(
        {"schema_version": 2, "spec": spec.name, "version": spec.version,
         "spec_hash": spec_hash(spec), "harness_version": "0.1.0", "cells": cells}))
    return path


def _harness(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """An empty baselines directory (a named one that does not exist is an error)."""
    (tmp_path / "baselines").mkdir()
    return tmp_path / "baselines"


# --------------------------------------------------------------------------- gate exit codes
def test_gate_passes_when_the_candidate_clearly_improves_with_enough_seeds(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _make_run(tmp_path / "run", _spec(8), es_shift=0.1)
    rc, out, _ = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 0, out
    assert "improves" in out and "gate: pass (1 gated comparisons)" in out
    assert "no registered baseline" in out


def test_gate_fails_when_a_gated_comparison_regresses(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _make_run(tmp_path / "run", _spec(8), es_shift=-0.1)
    rc, out, _ = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 1, out
    assert "regresses" in out and "gate: FAIL" in out


def test_gate_is_inconclusive_with_too_few_seeds(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _make_run(tmp_path / "run", _spec(3), es_shift=0.1)
    rc, out, _ = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 3, out
    assert "3 seeds < 6 needed" in out and "gate: inconclusive" in out


def test_gate_ignores_comparisons_without_gate_and_unfinished_seeds(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ungated = [{**ES_VS_NAIVE, "gate": False}]
    run = _make_run(tmp_path / "run", _spec(8, ungated), es_shift=-0.1)
    rc, out, _ = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 0 and "nothing gated" in out
    # 8 seeds in the grid, 3 finished: too few to decide
    run2 = _make_run(tmp_path / "run2", _spec(8), es_shift=0.1, unfinished=(3, 4, 5, 6, 7))
    assert _harness(capsys, "gate", str(run2), "--baselines", str(store))[0] == 3


# --------------------------------------------------------------------------- registered
def test_register_round_trip_and_gate_against_it(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(8, comparisons=[])
    run = _make_run(tmp_path / "run", spec, es_shift=0.0)
    rc, out, _ = _harness(capsys, "baseline", "register", str(run), "--baselines", str(store))
    assert rc == 0 and "registered 2 arms of gate-demo@1" in out
    doc = json.loads((store / "gate-demo.json").read_text())
    assert doc["spec_hash"] == spec_hash(spec) and doc["format"] == 2
    assert doc["mode"] == "statistical"
    results = json.loads((run / "results.json").read_text())
    by_key = {(c["controller"], c["seed"]): c["end_of_chain"]["pass1_test"]
              for c in results["cells"]}
    for arm in doc["arms"]:
        prov = arm["provenance"]
        assert prov["spec_hash"] == spec_hash(spec) and prov["git_commit"] == "abc123"
        assert prov["harness_version"] == "0.1.0" and prov["registered_at"].endswith("Z")
        assert prov["environment"]["packages"] == {"torch": "2.13.0"}
        assert arm["seeds"] == list(range(8))
        for p in arm["per_seed"]:
            assert p["metrics"]["end_of_chain_pass1_test"] == by_key[(arm["controller"],
                                                                      p["seed"])]
    # the same run against its own baseline: no difference, the gate passes
    rc, out, _ = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 0 and out.count("(reg)") == 2, out
    # a later run whose es arm lost 0.1 on every seed fails against the registered baseline
    worse = _make_run(tmp_path / "worse", spec, es_shift=-0.1)
    rc, out, _ = _harness(capsys, "gate", str(worse), "--baselines", str(store))
    assert rc == 1 and "gate: FAIL (1 of 2" in out


def test_register_one_arm_keeps_the_others_of_the_same_spec_hash(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(6, comparisons=[])
    run = _make_run(tmp_path / "run", spec, es_shift=0.0)
    assert _harness(capsys, "baseline", "register", str(run), "--arm", "reinforce/naive",
                    "--baselines", str(store))[0] == 0
    assert _harness(capsys, "baseline", "register", str(run), "--arm", "tiny/reinforce/es",
                    "--baselines", str(store))[0] == 0
    doc = json.loads((store / "gate-demo.json").read_text())
    assert sorted(a["controller"] for a in doc["arms"]) == ["es", "naive"]
    rc, _, err = _harness(capsys, "baseline", "register", str(run), "--arm", "reinforce/care",
                          "--baselines", str(store))
    assert rc == 2 and err.count("error:") == 1 and "reinforce/care" in err


def test_stale_baseline_is_reported_and_not_used_for_gating(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _make_run(tmp_path / "old", _spec(8, comparisons=[]), es_shift=0.0)
    assert _harness(capsys, "baseline", "register", str(old), "--baselines", str(store))[0] == 0
    # version 2 of the spec (another spec_hash) with an es arm 0.1 worse on every seed
    new = _make_run(tmp_path / "new", _spec(8, comparisons=[], version=2), es_shift=-0.1)
    rc, out, err = _harness(capsys, "gate", str(new), "--baselines", str(store))
    stale = [ln for ln in err.splitlines() if "stale" in ln]
    assert rc == 0, out
    assert len(stale) == 1 and stale[0].startswith("warning: registered baseline")
    assert "gate-demo@1" in stale[0] and "not used for gating" in stale[0]
    assert "(reg)" not in out


# --------------------------------------------------------------------------- compare
def test_compare_prints_declared_rows_and_against_another_run(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _spec(8)
    run = _make_run(tmp_path / "run", spec, es_shift=0.1)
    rc, out, _ = _harness(capsys, "compare", str(run))
    assert rc == 0 and "reinforce/es" in out and "improves" in out
    other = _make_run(tmp_path / "other", spec, es_shift=0.2)
    rc, out, _ = _harness(capsys, "compare", str(run), "--against", str(other))
    # declared (es here vs naive there) + one same-arm row per arm
    assert rc == 0 and out.count("(other)") == 3, out
    rc, _, err = _harness(capsys, "compare", str(run), "--against", "registered",
                          "--baselines", str(store))
    assert rc == 2 and "no registered baseline for gate-demo" in err


def test_compare_against_a_run_with_no_finished_cell_cannot_evaluate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # exit 2 (could not evaluate), as for every other run compare cannot pair, not 1 (the
    # gate's "a gated check fails")
    run = _make_run(tmp_path / "run", _spec(6, comparisons=[]), es_shift=0.1)
    rc, out, _ = _harness(capsys, "compare", str(run))
    assert rc == 0 and "declares no comparisons" in out
    other = _make_run(tmp_path / "other", _spec(6, comparisons=[]), es_shift=0.1,
                      unfinished=tuple(range(6)))
    rc, _, err = _harness(capsys, "compare", str(run), "--against", str(other))
    assert rc == 2 and err.count("error:") == 1 and "nothing to compare" in err, err


def test_evaluate_comparisons_rows_and_per_model_pairs(tmp_path: Path) -> None:
    spec, results = load_run(_make_run(tmp_path / "run", _spec(8), es_shift=0.1))
    (row,) = evaluate_comparisons(spec, results)
    assert {k: row[k] for k in ("model", "candidate", "baseline", "metric", "expect", "gate",
                                "n", "wins", "verdict", "outcome")} == {
        "model": "tiny", "candidate": "reinforce/es", "baseline": "reinforce/naive",
        "metric": "end_of_chain_pass1_test", "expect": "improves", "gate": True, "n": 8,
        "wins": 8, "verdict": "improves", "outcome": "pass"}
    assert row["ci_low"] > 0 and row["p_value"] == pytest.approx(2 / 256)
    assert row["mean_diff"] == pytest.approx(0.1, abs=0.01) and row["note"] == "made up"


# --------------------------------------------------------------------------- bad input
def test_bad_run_directories_end_in_one_error_line(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _harness(capsys, "gate", str(tmp_path / "nowhere"))
    assert rc == 2 and err.count("error:") == 1 and "does not exist" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = _harness(capsys, "compare", str(empty))
    assert rc == 2 and err.count("error:") == 1 and "results.json (the run's results) does not " \
        "exist" in err
    run = _make_run(tmp_path / "run", _spec(3), es_shift=0.0)
    (run / "results.json").write_text("{not json")
    for cmd in ("gate", "compare"):
        rc, out, err = _harness(capsys, cmd, str(run), "--baselines", str(store))
        assert rc == 2 and err.count("error:") == 1 and "not valid JSON" in err
        assert "Traceback" not in out + err
    (run / "results.json").write_text(json.dumps({"spec": "gate-demo", "version": 1}))
    rc, _, err = _harness(capsys, "baseline", "register", str(run), "--baselines", str(store))
    assert rc == 2 and err.count("error:") == 1 and "malformed" in err and "spec_hash" in err


def test_malformed_baseline_file_is_one_error_line(
        tmp_path: Path, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _make_run(tmp_path / "run", _spec(3), es_shift=0.0)
    (store / "gate-demo.json").write_text(json.dumps({"format": 1, "spec": "gate-demo"}))
    rc, _, err = _harness(capsys, "gate", str(run), "--baselines", str(store))
    assert rc == 2 and err.count("error:") == 1 and "malformed" in err


# --------------------------------------------------------------------------- bench
def test_collect_results_stores_the_comparisons(tmp_path: Path) -> None:
    spec = _spec(3)
    cells = expand_cells(spec)
    for c in cells:
        v = 0.2 if c.controller.name == "es" else 0.1
        (tmp_path / "cells" / c.cell_id).mkdir(parents=True)
        (tmp_path / "cells" / c.cell_id / "result.json").write_text(json.dumps(
            {"campaigns": [], "decisions": [], "end_of_chain": {"pass1_test": v,
                                                                "pass1_eval": v},
             "aggregates": {"mean_peak": v, "collapsed_campaigns": 0}}))
    results = collect_results(spec, tmp_path, cells, {})
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["comparisons"] == results["comparisons"]
    (row,) = stored["comparisons"]
    assert row["n"] == 3 and row["wins"] == 3 and row["verdict"] == "inconclusive"
    assert stored["arms"] and stored["schema_version"] == 2
