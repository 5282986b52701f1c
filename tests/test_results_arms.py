"""Results beside the arms: the oracle rows and the offline collapse guard, in a cell's
`result.json` (from hand-made traces and a stub runner, no model) and in the `arms` rows of
`results.json` (from hand-made cell entries)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from harness.bench import arms_table
from harness.controllers import History, summarise
from harness.controllers.collapse_guard import GuardParams
from harness.results import arm_rows, build_result
from harness.runner.cell import CellConfig, CellRunner
from harness.runner.checkpoints import CheckpointStore
from harness.spec import expand_cells, load_spec


# --------------------------------------------------------------------------- result.json
def _cfg(controller: dict[str, Any] | None = None) -> CellConfig:
    spec, _ = load_spec("tiny-smoke")
    cell = expand_cells(spec)[0]
    raw = dict(cell.config)
    if controller is not None:
        raw["controller"] = controller
    return CellConfig.from_dict(cell.cell_id, raw)


def _trace(curves: list[list[float]], final: dict[str, Any] | None,
           covs: dict[int, list[float]] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k, curve in enumerate(curves):
        out.append({"type": "plan", "campaign": k, "start_from": "init", "budget": 5, "lr": 1.0,
                    "reason": "", "numbers": {}})
        cov = (covs or {}).get(k, [0.0] * len(curve))
        out += [{"type": "step", "campaign": k, "step": s, "eval_pass1": v,
                 "logp_adv_cov": c} for s, (v, c) in enumerate(zip(curve, cov, strict=True))]
        out.append({"type": "campaign", **summarise(k, curve, budget=5, start_from="init", lr=1.0,
                                                    collapse_threshold=0.2).to_dict()})
    if final is not None:
        out.append({"type": "final", **final})
    return out


# a rise to 0.6 at step 1 (arming the default guard) with a log-prob/advantage covariance
# above its threshold: it fires at step 1, one step before the onset (step 2)
COLLAPSE = [0.5, 0.6, 0.1, 0.1]
COLLAPSE_COV = [0.0, 0.01, 0.0, 0.0]
CLEAN = [0.2, 0.3, 0.4]


def test_result_has_guard_report_and_the_final_records_oracles() -> None:
    oracles = {"trace": {"kind": "trace", "checkpoint": "c1:peak", "pass1_test": 0.3},
               "hindsight": {"kind": "hindsight", "checkpoint": "c0:peak", "pass1_test": 0.4}}
    final = {"carried_from": "c1:last", "reason": "", "pass1_test": 0.1, "test_passes": 1,
             "pass1_eval": 0.4, "oracles": oracles}
    # an unfinished campaign's steps (no campaign record) are left out of the report
    records = [*_trace([COLLAPSE, CLEAN], final, {0: COLLAPSE_COV}),
               {"type": "step", "campaign": 2, "step": 0, "eval_pass1": 0.9}]
    res = build_result(_cfg(), records)
    assert res["oracles"] == oracles
    g = res["guard"]
    assert g["params"] == GuardParams().model_dump(mode="json") and g["threshold"] == 0.2
    assert [(c["campaign"], c["trigger_step"], c["collapsed"], c["onset"], c["lead_time"])
            for c in g["campaigns"]] == [(0, 1, True, 2, 1), (1, None, False, None, None)]
    assert g["summary"]["caught"] == 1 and g["summary"]["false_alarms"] == 0
    # scored by the study's signature as `harness guard score` does: one step of lead is not
    # the 2 a catch needs, so the collapse it caught at the onset's threshold is late here
    assert [c["by_signature"] for c in g["campaigns"]] == [
        {"signature": True, "peak_step": 1, "onset": 2, "trigger_step": 1, "lead_time": 1,
         "outcome": "late"},
        {"signature": False, "peak_step": 2, "onset": None, "trigger_step": None,
         "lead_time": None, "outcome": "quiet"}]
    b = g["summary"]["by_signature"]
    assert (b["signature"], b["caught"], b["late"], b["quiet"], b["stopped"], b["min_lead"]) \
        == (1, 0, 1, 1, 0, 2)
    # a trace written before oracles existed, and one without a final record
    del final["oracles"]
    assert build_result(_cfg(), _trace([CLEAN], final))["oracles"] is None
    assert build_result(_cfg(), _trace([CLEAN], None))["oracles"] is None


def test_the_guard_section_scores_a_campaign_its_controller_stopped_apart() -> None:
    records = _trace([COLLAPSE, COLLAPSE], None, {0: COLLAPSE_COV, 1: COLLAPSE_COV})
    for r in records:  # the guard stopped campaign 0 (its trace then ends at its stop)
        if r["type"] == "campaign" and r["index"] == 0:
            r["stopped_early"] = "collapse_guard at step 1"
    g = build_result(_cfg({"name": "collapse_guard"}), records)["guard"]
    assert [c["by_signature"]["outcome"] for c in g["campaigns"]] == ["stopped", "late"]
    b = g["summary"]["by_signature"]
    assert (b["campaigns"], b["late"], b["stopped"]) == (1, 1, 1)


def test_the_bench_row_of_the_offline_guard_is_what_guard_score_gives(tmp_path: Path) -> None:
    """The arms table's offline-guard row and `harness guard score` on the same campaigns
    count the same catches, false alarms and lead."""
    from harness.guard.score import Campaign, score

    # a rise to 0.8 at step 2 that the covariance flags at step 1, then a fall from step 4 on:
    # caught with 3 steps of lead; a campaign that rises and holds, flagged at step 1: a false
    # alarm; one that never rises 5 points: quiet
    curves = [[0.5, 0.6, 0.8, 0.75, 0.2, 0.1], [0.5, 0.6, 0.7, 0.72], [0.5, 0.52, 0.5, 0.51]]
    covs = {0: [0.0, 0.01, 0.0, 0.0, 0.0, 0.0], 1: [0.0, 0.01, 0.0, 0.0]}
    records = _trace(curves, None, covs)
    res = build_result(_cfg(), records)
    entry = {"cell_id": "c", "model": "tiny", "method": "reinforce", "controller": "naive",
             "controller_name": "naive", "seed": 0, "status": "finished", **res}
    row = next(r for r in arm_rows([entry]) if r["kind"] == "guard_lead_time")
    campaigns = [Campaign("c", k, 0, tuple(r for r in records if r["type"] == "step"
                                           and r["campaign"] == k)) for k in range(3)]
    want = score(campaigns)["totals"]
    assert row["by_signature"] == want
    assert (want["caught"], want["false_alarm"], want["quiet"], want["median_lead_time"]) \
        == (1, 1, 1, 3)
    console = Console(record=True, width=220)
    console.print(arms_table({"arms": [row]}))
    assert "caught 1/1, false alarms 1/2, median lead 3" in console.export_text()


def test_guard_report_of_a_guard_cell_uses_its_own_params() -> None:
    cfg = _cfg({"name": "collapse_guard", "params": {"drop_confidence": None}})
    g = build_result(cfg, _trace([COLLAPSE], None))["guard"]
    assert g["params"]["drop_confidence"] is None
    assert g["campaigns"][0]["trigger_step"] is None and g["summary"]["missed"] == 1


# --------------------------------------------------------------------------- the final oracles
class _Stub(CellRunner):
    """A runner whose policy is one weight and whose test pass@1 is that weight."""

    def __init__(self, tmp: Path) -> None:
        self.model = torch.nn.Linear(1, 1, bias=False)
        self.store = CheckpointStore(tmp / "checkpoints", self.model)
        self.evaluated: list[float] = []

    def set(self, w: float) -> None:
        with torch.no_grad():
            self.model.weight.fill_(w)

    def evaluate(self, split: str) -> tuple[float, int, dict[str, float]]:
        assert split == "test"
        w = round(float(self.model.weight.detach()), 6)
        self.evaluated.append(w)
        return w, int(w * 100), {}


def _chain(tmp: Path) -> tuple[_Stub, History]:
    """Campaign 0 peaks at 0.6 (its peak policy has weight 0.06), campaign 1 at 0.5 (0.05)."""
    r = _Stub(tmp)
    r.set(0.0)
    r.store.keep_init()
    curves = [[0.2, 0.6, 0.3], [0.3, 0.5, 0.1]]
    for k, (peak_w, last_w) in enumerate([(0.06, 0.01), (0.05, 0.02)]):
        r.set(peak_w)
        r.store.mark_peak(r.model)
        r.set(last_w)
        r.store.finish_campaign(k, r.model, max(curves[k]))
        r.store.prune()
    campaigns = tuple(tuple({"step": s, "eval_pass1": v} for s, v in enumerate(c))
                      for c in curves)
    summaries = tuple(summarise(k, c, budget=2, start_from="init", lr=1.0,
                                collapse_threshold=0.2) for k, c in enumerate(curves))
    return r, History(campaigns=campaigns, summaries=summaries,
                      checkpoints=tuple(r.store.names()), max_steps=2, base_lr=1.0)


def test_final_oracles_test_the_checkpoints_they_select(tmp_path: Path) -> None:
    r, history = _chain(tmp_path)
    o = r._oracles(history, {"c1:last": (0.02, 2)})
    assert (o["trace"]["checkpoint"], o["trace"]["pass1_eval"], o["trace"]["step"]) == (
        "c1:peak", 0.5, 1)
    assert o["trace"]["pass1_test"] == pytest.approx(0.05) and o["trace"]["test_passes"] == 5
    assert o["trace"]["per_campaign"][0]["value"] == 0.6 and o["trace"]["oracle"] is True
    assert (o["hindsight"]["checkpoint"], o["hindsight"]["pass1_eval"]) == ("c0:peak", 0.6)
    assert o["hindsight"]["pass1_test"] == pytest.approx(0.06)
    assert r.evaluated == [0.05, 0.06]


def test_final_oracles_reuse_the_carried_out_test_number(tmp_path: Path) -> None:
    r, history = _chain(tmp_path)
    o = r._oracles(history, {"c1:peak": (0.123, 7)})      # es carries c1:peak out
    assert (o["trace"]["pass1_test"], o["trace"]["test_passes"]) == (0.123, 7)
    assert r.evaluated == [0.06]                           # only the hindsight checkpoint
    assert r._oracles(History((), (), ("init",), 2, 1.0), {}) == {}


def test_final_oracles_report_a_checkpoint_that_is_not_kept(tmp_path: Path) -> None:
    r, history = _chain(tmp_path)
    del r.store._mem["c0:peak"]
    o = r._oracles(history, {})
    assert o["hindsight"]["pass1_test"] is None and "not kept" in o["hindsight"]["error"]
    assert o["trace"]["pass1_test"] == pytest.approx(0.05)


# --------------------------------------------------------------------------- results.json arms
def _cell(controller: str, seed: int, test: float, eval_: float, *, name: str | None = None,
          status: str = "finished", oracles: tuple[float, float] | None = None,
          guard: list[tuple[int | None, bool, int | None]] = ()) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "cell_id": f"{controller}_s{seed}", "model": "tiny", "method": "reinforce",
        "controller": controller, "controller_name": name or controller, "seed": seed,
        "status": status,
        "campaigns": [{}, {}],
        "end_of_chain": {"pass1_test": test, "pass1_eval": eval_, "carried_from": "c1:last"},
        "aggregates": {"mean_peak": eval_ + 0.1, "mean_gap": 0.1 * seed,
                       "collapsed_campaigns": seed},
        "guard": {"params": {"min_step": 1}, "campaigns": [
            {"campaign": k, "trigger_step": t, "reason": None, "collapsed": c, "onset": None,
             "lead_time": lead} for k, (t, c, lead) in enumerate(guard)]},
    }
    if oracles is not None:
        entry["oracles"] = {"trace": {"pass1_test": oracles[0], "pass1_eval": 0.5},
                            "hindsight": {"pass1_test": oracles[1], "pass1_eval": 0.7}}
    return entry


def test_arm_rows_mean_over_finished_seeds_with_oracle_and_guard_rows_from_naive() -> None:
    cells = [
        _cell("naive", 0, 0.1, 0.2, oracles=(0.3, 0.4),
              guard=[(3, True, 2), (None, True, None), (2, False, None)]),
        _cell("naive", 1, 0.3, 0.4, oracles=(0.5, 0.8), guard=[(9, True, -1), (None, False, None)]),
        _cell("es", 0, 0.4, 0.5, oracles=(0.9, 0.9), guard=[(1, False, None)]),
        _cell("es", 1, 0.6, 0.7, oracles=(0.9, 0.9)),
        _cell("es", 2, 0.0, 0.0, status="failed"),
        _cell("plain", 0, 0.2, 0.2, name="naive", oracles=(0.25, 0.35)),  # a labelled naive
    ]
    rows = arm_rows(cells)
    assert [(r["controller"], r["kind"], r.get("of")) for r in rows] == [
        ("naive", "arm", None), ("trace_oracle", "oracle", "naive"),
        ("hindsight_oracle", "oracle", "naive"), ("guard_lead_time", "guard_lead_time", "naive"),
        ("es", "arm", None),
        ("plain", "arm", None), ("trace_oracle", "oracle", "plain"),
        ("hindsight_oracle", "oracle", "plain"), ("guard_lead_time", "guard_lead_time", "plain")]
    naive, trace, hind, guard, es = rows[:5]
    assert naive == {
        "model": "tiny", "method": "reinforce", "controller": "naive", "kind": "arm",
        "oracle": False, "n": 2, "seeds": [0, 1], "n_cells": 2,
        "pass1_test": pytest.approx(0.2), "pass1_eval": pytest.approx(0.3),
        "mean_peak": pytest.approx(0.4), "mean_gap": pytest.approx(0.05),
        "collapsed_campaigns": 1, "signature_campaigns": 0, "campaigns": 4,
        "verdicts": {"train": None, "eval": None}}  # these cells' traces predate the kinds
    assert trace["oracle"] is True and trace["n"] == 2
    assert (trace["pass1_test"], trace["pass1_eval"]) == (pytest.approx(0.4), 0.5)
    assert (hind["pass1_test"], hind["pass1_eval"]) == (pytest.approx(0.6), 0.7)
    assert guard["oracle"] is False and guard["params"] == {"min_step": 1}
    assert {k: guard[k] for k in ("campaigns", "collapsed", "caught", "late", "missed",
                                  "false_alarms", "mean_lead_time")} == {
        "campaigns": 5, "collapsed": 3, "caught": 1, "late": 1, "missed": 2,
        "false_alarms": 1, "mean_lead_time": 0.5}
    # es: the failed seed is counted in n_cells only; no oracle rows from a non-naive arm
    assert (es["n"], es["seeds"], es["n_cells"]) == (2, [0, 1], 3)
    assert es["pass1_test"] == pytest.approx(0.5) and es["collapsed_campaigns"] == 1


def test_arm_rows_of_unfinished_or_pre_oracle_cells() -> None:
    old = _cell("naive", 0, 0.1, 0.2)
    del old["guard"]                                  # a result.json of schema 1
    rows = arm_rows([old, _cell("naive", 1, 0.0, 0.0, status="missing")])
    arm, trace, _, guard = rows
    assert (arm["n"], arm["n_cells"], arm["pass1_test"]) == (1, 2, 0.1)
    assert trace["pass1_test"] is None and trace["pass1_eval"] is None
    assert guard["campaigns"] == 0 and guard["mean_lead_time"] is None
    assert arm_rows([]) == []


def test_arms_table_marks_the_reference_rows() -> None:
    cells = [_cell("naive", 0, 0.1, 0.2, oracles=(0.3, 0.4), guard=[(3, True, 2)]),
             _cell("es", 0, 0.4, 0.5)]
    console = Console(record=True, width=200)
    console.print(arms_table({"arms": arm_rows(cells)}))
    text = console.export_text()
    assert "*trace_oracle of naive" in text and "*hindsight_oracle of naive" in text
    assert "*guard (offline) on naive" in text and "collapsed: caught 1/1, false alarms 0, lead 2.0" in text
    assert "0.400" in text and "0/2" in text


# --------------------------------------------------------------------------- declared by controllers
def test_the_controllers_declare_what_the_results_derive_from_them() -> None:
    from harness.controllers import CONTROLLERS
    from harness.controllers.collapse_guard import CollapseGuard, guard_report
    from harness.results import is_reference_arm, offline_guard

    assert [n for n in CONTROLLERS if CONTROLLERS.get(n).reference_arm] == ["naive"]
    assert is_reference_arm("naive") and not is_reference_arm("es")
    assert not is_reference_arm("not_registered_here") and not is_reference_arm(None)
    assert offline_guard() is CollapseGuard
    assert [n for n in CONTROLLERS if CONTROLLERS.get(n).offline_guard] == ["collapse_guard"]
    chain = [[{"step": s, "eval_pass1": v} for s, v in enumerate(COLLAPSE)]]
    assert CollapseGuard.offline_report(chain, {"min_step": 2}, 0.2) == guard_report(
        chain, {"min_step": 2}, 0.2)
    own = {"drop_confidence": None}
    assert CollapseGuard.offline_guard_params(own) == own
    assert CONTROLLERS.get("naive").offline_guard_params(own) == {}  # the guard's defaults
    with pytest.raises(NotImplementedError):
        CONTROLLERS.get("naive").offline_report(chain, None, 0.2)


def test_reference_rows_follow_the_declaration_not_the_name(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    from harness.controllers import CONTROLLERS

    cells = [_cell("naive", 0, 0.1, 0.2, oracles=(0.3, 0.4)), _cell("es", 0, 0.4, 0.5)]
    monkeypatch.setattr(CONTROLLERS.get("naive"), "reference_arm", False)
    monkeypatch.setattr(CONTROLLERS.get("es"), "reference_arm", True)
    assert [(r["controller"], r.get("of")) for r in arm_rows(cells)] == [
        ("naive", None), ("es", None), ("trace_oracle", "es"), ("hindsight_oracle", "es"),
        ("guard_lead_time", "es")]


def test_the_guard_section_uses_the_params_the_cells_controller_declares(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.controllers import CONTROLLERS
    from harness.results import offline_guard

    es = CONTROLLERS.get("es")
    monkeypatch.setattr(es, "offline_guard_params",
                        classmethod(lambda cls, params: {"drop_confidence": None}))
    g = build_result(_cfg({"name": "es"}), _trace([COLLAPSE], None))["guard"]
    assert g["params"]["drop_confidence"] is None and g["summary"]["missed"] == 1
    # exactly one controller is the offline guard
    monkeypatch.setattr(es, "offline_guard", True)
    with pytest.raises(RuntimeError, match="exactly one registered controller"):
        offline_guard()
