"""`harness report`: from a hand-made run directory (three arms, three seeds, campaigns of
different lengths per seed), both files are written, the HTML is self-contained and embeds
every plot, and bad or partial run directories end in one clear line or a partial report."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.controllers import summarise
from harness.controllers.collapse_guard import guard_report
from harness.errors import UserError
from harness.report import mean_band, write_report
from harness.results import arm_rows, mean_ci
from harness.spec import Spec, load_spec, resolved_dict

SEEDS = (0, 1, 2)
ARMS = ("naive", "es", "care_v2")


def _curve(seed: int, k: int, steps: int, collapse: bool) -> list[float]:
    """A rise-and-collapse shaped eval pass@1 curve on a 1/64 grid."""
    out = []
    for s in range(steps + 1):
        rise = 0.25 + 0.04 * s if s <= 4 else 0.41 - (0.05 * (s - 4) if collapse else 0.005 * s)
        v = rise + 0.03 * math.sin(3 * seed + 2 * k + s)
        out.append(round(min(1.0, max(0.0, v)) * 64) / 64)
    return out


def _cell(controller: str, seed: int, campaigns: int = 3) -> tuple[dict[str, Any], list[dict]]:
    """A results.json cell entry and its trace records."""
    records: list[dict[str, Any]] = []
    summaries = []
    per_campaign = []
    g = 0
    for k in range(campaigns):
        # es shortens the next budget (peak_step + 3) differently per seed
        steps = 10 if controller != "es" or k == 0 else 5 + seed + k
        curve = _curve(seed, k, steps, collapse=controller == "naive")
        if controller == "es" and k > 0:  # restarts from the previous peak: carryover
            curve[0] = summaries[-1]["peak"]
        records.append({"type": "plan", "campaign": k, "start_from": "init", "budget": steps,
                        "lr": 1e-3, "reason": "", "numbers": {}})
        recs = []
        for s, v in enumerate(curve):
            recs.append({"type": "step", "campaign": k, "step": s, "global_step": g + s,
                         "eval_pass1": v})
        g += steps
        records += recs
        per_campaign.append(recs)
        summ = summarise(k, curve, budget=steps, start_from="init", lr=1e-3,
                         collapse_threshold=0.2).to_dict()
        summaries.append(summ)
        records.append({"type": "campaign", **summ})
    eoc = {"pass1_test": 0.2 + 0.05 * seed + (0.1 if controller != "naive" else 0),
           "pass1_eval": summaries[-1]["end"], "carried_from": f"c{campaigns - 1}:last"}
    records.append({"type": "final", **eoc})
    entry = {
        "cell_id": f"tiny_reinforce_{controller}_s{seed}_0123456789", "model": "tiny",
        "method": "reinforce", "controller": controller, "controller_name": controller,
        "seed": seed, "status": "finished", "campaigns": summaries, "decisions": [],
        "end_of_chain": eoc,
        "aggregates": {"mean_peak": sum(c["peak"] for c in summaries) / len(summaries),
                       "mean_gap": sum(c["gap"] for c in summaries) / len(summaries),
                       "collapsed_campaigns": sum(c["collapsed"] for c in summaries)},
        "oracles": {"trace": {"pass1_test": eoc["pass1_test"] + 0.1, "pass1_eval": 0.45},
                    "hindsight": {"pass1_test": eoc["pass1_test"] + 0.15, "pass1_eval": 0.5}},
        "guard": guard_report(per_campaign, threshold=0.2),
    }
    return entry, records


def _resolved_spec() -> dict[str, Any]:
    """tiny-smoke's resolved spec, turned into the fake study's grid (a valid spec)."""
    spec, _ = load_spec("tiny-smoke")
    d = resolved_dict(spec)
    d.update(name="fake-study", version=3, description="A fake study.", seeds=list(SEEDS),
             chain={"campaigns": 3, "steps": 10, "collapse_threshold": 0.2},
             controllers=[{"name": c} for c in ARMS],
             comparisons=[{"candidate": {"method": "reinforce", "controller": "care_v2"},
                           "baseline": {"method": "reinforce", "controller": "naive"},
                           "metric": "end_of_chain_pass1_test", "expect": "improves",
                           "gate": True}])
    return resolved_dict(Spec.model_validate(d))


def make_run(root: Path, *, comparisons: list[dict] | None = None) -> Path:
    """A finished run directory of three arms x three seeds, built without training."""
    cells = []
    for controller in ARMS:
        for seed in SEEDS:
            entry, records = _cell(controller, seed)
            cells.append(entry)
            cdir = root / "cells" / entry["cell_id"]
            cdir.mkdir(parents=True)
            (cdir / "trace.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    results: dict[str, Any] = {
        "schema_version": 2, "spec": "fake-study", "version": 3, "spec_hash": "ab" * 32,
        "harness_version": "0.1.0", "cells": cells, "arms": arm_rows(cells)}
    if comparisons is not None:
        results["comparisons"] = comparisons
    (root / "results.json").write_text(json.dumps(results))
    (root / "resolved_spec.json").write_text(json.dumps({
        "spec_hash": "ab" * 32, "grid_hash": "cd" * 32, "spec": _resolved_spec()}))
    (root / "environment.json").write_text(json.dumps({
        "harness_version": "0.1.0", "git_commit": "deadbeef", "python": "3.11.7",
        "platform": "Linux", "packages": {"torch": "2.13.0+cpu"},
        "cpu": {"model": "AMD EPYC", "count": 2}, "gpu": None, "cuda": None,
        "torch_threads": 2}))
    return root


COMPARISON = {"model": "tiny", "candidate": "reinforce/care_v2", "baseline": "reinforce/naive",
              "metric": "end_of_chain_pass1_test", "expect": "improves", "gate": True,
              "note": "", "n": 3, "seeds": [0, 1, 2], "mean_diff": 0.1, "ci_low": 0.1,
              "ci_high": 0.1, "wins": 3, "p_value": 0.25, "verdict": "inconclusive",
              "outcome": "inconclusive", "reason": "n=3 seeds: no test reaches p < 0.05"}


def _images(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_report_writes_md_and_self_contained_html_with_every_plot(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", comparisons=[COMPARISON])
    md, page, missing = write_report(run, tmp_path / "out")
    assert missing == []
    assert md == tmp_path / "out" / "report.md" and page.name == "report.html"
    text = page.read_text()
    imgs = _images(text)
    assert len(imgs) == text.count("<img ") == 4      # every plot, each embedded
    assert all(len(i) > 5000 for i in imgs)
    # no external asset: nothing is fetched from a URL or a file next to the page
    assert not re.search(r'(src|href)="(?!data:)', text) and "<link" not in text
    for needle in ("fake-study", "ab" * 32, "AMD EPYC", "reinforce/care_v2", "inconclusive",
                   "trace_oracle of naive", "hindsight_oracle of naive", "caught",
                   "median lead time", "harness guard score", "min-max over seeds"):
        assert needle in text, needle
    # arms, end of chain, guard lead time, comparisons, cells
    assert text.count("<table>") == 5 and text.count('<tr class="ref">') == 2 * 2
    figs = sorted(p.name for p in (tmp_path / "out" / "report_figures").iterdir())
    assert figs == ["end_of_chain.png", "mean_curves.png", "peak_vs_end.png", "seed_curves.png"]
    mdtext = md.read_text()
    assert all(f"(report_figures/{f})" in mdtext for f in figs)
    assert "* trace_oracle of naive" in mdtext and "ab" * 32 in mdtext
    assert not (run / "report.md").exists()


def test_report_defaults_to_the_run_directory_via_the_cli(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
    assert "wrote" in capsys.readouterr().out
    # no `comparisons` in results.json: the spec's comparisons are evaluated now
    text = (run / "report.html").read_text()
    assert "evaluated now by harness.compare" in text
    assert "<td>reinforce/care_v2</td><td>reinforce/naive</td>" in text


def test_partial_run_reports_what_exists_and_names_what_is_missing(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    results = json.loads((run / "results.json").read_text())
    gone = results["cells"][4]
    gone.update(status="missing", end_of_chain=None, campaigns=[])
    (run / "cells" / gone["cell_id"] / "trace.jsonl").unlink()
    unfinished = results["cells"][5]
    unfinished.update(status="partial", end_of_chain=None)
    results["arms"] = arm_rows(results["cells"])
    (run / "results.json").write_text(json.dumps(results))
    _, page, missing = write_report(run, tmp_path / "out")
    assert any(gone["cell_id"] in m and "no trace" in m for m in missing)
    assert any(unfinished["cell_id"] in m and "partial" in m for m in missing)
    text = page.read_text()
    assert "Missing from this report" in text and gone["cell_id"] in text
    assert len(_images(text)) == 4


@pytest.mark.parametrize("damage, expected", [
    ("no-dir", "does not exist; pass the directory `harness bench` wrote"),
    ("no-results", "results.json (the run's results) does not exist; "
                   "`harness bench` writes it when it ends"),
    ("no-trace", "is finished in results.json but"),
    ("bad-trace", "not a JSON line"),
])
def test_bad_run_directory_ends_in_one_clear_line(tmp_path: Path, damage: str, expected: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    run = make_run(tmp_path / "run")
    trace = next((run / "cells").glob("*/trace.jsonl"))
    if damage == "no-dir":
        run = tmp_path / "nowhere"
    elif damage == "no-results":
        (run / "results.json").unlink()
    elif damage == "no-trace":
        trace.unlink()
    else:
        trace.write_text("{not json\n")
    with pytest.raises(UserError, match=re.escape(expected)):
        write_report(run)
    assert main(["report", str(run)]) == 2  # could not evaluate (docs/comparisons-and-gate.md)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]


def test_mean_band_splits_campaign_boundaries_and_counts_seeds() -> None:
    # seed a: boundary at 2 with a rollback (0.1 -> 0.4); seed b: one campaign of 3 steps
    a = ([0.0, 1.0, 2.0, 2.0, 3.0], [0.2, 0.3, 0.1, 0.4, 0.5])
    b = ([0.0, 1.0, 2.0, 3.0, 4.0], [0.2, 0.5, 0.3, 0.1, 0.0])
    x, m, lo, hi, n = mean_band([a, b])
    assert x == [0.0, 1.0, 2.0, 2.0, 3.0, 4.0]
    assert m == pytest.approx([0.2, 0.4, 0.2, 0.35, 0.3, 0.0])
    assert (lo[2], hi[2], lo[3], hi[3]) == (0.1, 0.3, 0.3, 0.4)
    assert n == [2, 2, 2, 2, 2, 1]


def test_report_intervals_are_the_projects_bootstrap_over_the_values_given() -> None:
    import numpy as np

    from harness.stats import bootstrap_ci

    m, lo, hi = mean_ci([0.1, None, 0.2, 0.6])
    assert m == pytest.approx(0.3) and lo < m < hi and lo >= 0.1 and hi <= 0.6
    assert (lo, hi) == bootstrap_ci(np.asarray([0.1, 0.2, 0.6]))  # None left out
    assert mean_ci([]) is None and mean_ci([None]) is None


def test_the_report_tables_its_intervals_from_the_results_module(tmp_path: Path) -> None:
    from harness.report import end_rows, load_run
    from harness.results import seed_values

    run = load_run(make_run(tmp_path / "run"))
    rows = end_rows(run)
    arms = [r for r in run.results["arms"] if r["kind"] in ("arm", "oracle")]
    assert [r["oracle"] for r in rows] == [r["oracle"] for r in arms]
    for row, arm in zip(rows, arms, strict=True):
        test = seed_values(run.results["cells"], arm, "test")
        assert row["test"] == test and [s for s, _ in test] == list(SEEDS)
        assert row["test_ci"] == mean_ci([v for _, v in test])
        assert row["test_ci"][0] == pytest.approx(arm["pass1_test"])  # the arms row's mean
