"""The calibrated CPU testbed's parts: the study's signature, the warm start's defect, the
learning-rate warm-up, and identities that must change when results do."""

from __future__ import annotations

import pytest

from harness.controllers.base import has_signature, summarise
from harness.policy.tiny import _encode_examples, recipe_hash, warm_solution
from harness.policy.tokenizer import build_char_tokenizer
from harness.runner.cell import warmed_lr
from harness.spec import expand_cells, load_spec
from harness.spec.schema import TinyRecipe
from harness.tasks.synthetic import warm_start_tasks


@pytest.mark.parametrize(("curve", "expected"), [
    ([0.50, 0.60, 0.80, 0.40, 0.10], True),    # rise, then a fall that stays down
    ([0.50, 0.56, 0.44, 0.46], True),          # just over both thresholds
    ([0.50, 0.54, 0.20, 0.10], False),         # falls without rising 5 points
    ([0.50, 0.80, 0.30, 0.75], False),         # falls, then climbs back by the end
    ([0.50, 0.60, 0.70, 0.80], False),         # only rises
    ([0.50, 0.40, 0.30], False),               # only falls
])
def test_the_signature(curve: list[float], expected: bool) -> None:
    assert has_signature(curve) is expected


def test_campaign_summaries_carry_the_signature_with_the_chain_thresholds() -> None:
    curve = [0.5, 0.6, 0.45]
    kw = {"budget": 2, "start_from": "init", "lr": 1e-3, "collapse_threshold": 0.2}
    assert summarise(0, curve, **kw).signature is True
    assert summarise(0, curve, **kw, signature_fall=0.2).signature is False
    assert summarise(0, curve, **kw, signature_rise=0.2).signature is False
    assert summarise(0, curve, **kw).to_dict()["signature"] is True


def test_a_defective_solution_lacks_its_last_line() -> None:
    call, stdio = warm_start_tasks(2, 0)[0], next(
        t for t in warm_start_tasks(64, 0) if t.style == "stdio")
    for task, last in ((call, "    return x\n"), (stdio, "print(x)\n")):
        assert task.reference.endswith(last)
        assert warm_solution(task, False) == task.reference
        assert warm_solution(task, True) == task.reference[: -len(last)]


def test_the_share_of_defective_warm_start_solutions() -> None:
    tok = build_char_tokenizer()
    eos = tok.eos_token_id
    ends = {tuple(tok("    return x\n", add_special_tokens=False)["input_ids"]),
            tuple(tok("print(x)\n", add_special_tokens=False)["input_ids"])}

    def defective_share(defect: float) -> float:
        recipe = TinyRecipe(warm_tasks=2000, warm_defect=defect)
        ex = _encode_examples(tok, recipe)
        return sum(not any(tuple(ids[-1 - len(e):-1]) == e for e in ends)
                   for ids, _ in ex if ids[-1] == eos) / len(ex)

    assert defective_share(0.0) == 0.0
    assert 0.46 < defective_share(0.5) < 0.54
    # the draw is seeded: the same recipe gives the same examples
    recipe = TinyRecipe(warm_tasks=200, warm_defect=0.5)
    assert _encode_examples(tok, recipe) == _encode_examples(tok, recipe)


def test_the_recipe_hash_and_cell_ids_follow_the_defect(tmp_path) -> None:
    assert recipe_hash(TinyRecipe()) != recipe_hash(TinyRecipe(warm_defect=0.0))
    ids = []
    for defect in (0.5, 0.25):
        path = tmp_path / f"d{defect}.yaml"
        path.write_text(f"name: d\nversion: 1\nmodels: [{{id: tiny, tiny: {{warm_defect: "
                        f"{defect}}}}}]\n")
        spec, _ = load_spec(str(path))
        ids.append(expand_cells(spec)[0].cell_id)
    assert ids[0] != ids[1]
    spec, _ = load_spec("tiny-collapse")
    assert expand_cells(spec)[0].config["versions"]["tiny_policy"] >= 3


def test_the_warm_up() -> None:
    assert [warmed_lr(1e-3, s, 0) for s in (1, 5)] == [1e-3, 1e-3]
    assert [round(warmed_lr(1e-3, s, 4), 12) for s in (1, 2, 4, 9)] == \
        [2.5e-4, 5e-4, 1e-3, 1e-3]


def test_the_registered_tiny_specs_use_the_calibrated_testbed() -> None:
    spec, _ = load_spec("tiny-collapse")
    assert len(spec.seeds) >= 6 and spec.chain.steps == 20
    assert spec.rollout.backend == "lean" and spec.optim.warmup_steps > 0
    # eval standard error <= 2.5 points at any pass@1: n >= 400 samples
    assert spec.tasks.eval * spec.eval.samples_per_task >= 400
    study, _ = load_spec("tiny-study")
    assert len(study.seeds) >= 6 and study.chain.campaigns >= 5
    arms = {(c.method.arm, c.controller.arm) for c in expand_cells(study)}
    assert {("reinforce", "naive"), ("reinforce", "es"), ("reinforce", "care_v1"),
            ("reinforce", "care_v2"), ("reinforce", "collapse_guard"),
            ("reinforce-kl", "naive"), ("reinforce-ewc", "naive"), ("grpo", "naive"),
            ("grpo", "es")} == arms
    gated = {(c.candidate.method, c.candidate.controller) for c in study.comparisons if c.gate}
    assert ("reinforce", "es") in gated


def test_the_step_benchmark_reads_the_baseline_commits_cell_config() -> None:
    """scripts/bench_step_speed.py runs today's code on b8ce89e's tiny-collapse cell config
    (the fixture: what that commit's `expand_cells` gave); the spec schema has moved on since
    (method options became `method.params`), and the translation must keep it loadable."""
    import importlib.util
    import json
    from pathlib import Path

    from harness.runner.cell import CellConfig

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_step_speed",
                                                  root / "scripts" / "bench_step_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    got = json.loads((root / "tests/fixtures/bench/b8ce89e-tiny-collapse-cell.json").read_text())
    old = got["config"]
    assert "baseline" in old["method"] and "eps" in old["method"]  # the old flat options
    cfg = CellConfig.from_dict(got["cell_id"], bench.current_config(old))
    assert cfg.method.params == {"baseline": old["method"]["baseline"]}
    assert cfg.rollout.backend == "lean" and cfg.grader.cache
    assert cfg.model.tiny.warm_defect == 0.0 and cfg.model.tiny.hidden_size == 128
    assert old["rollout"]["backend"] == "hf"  # the input is left as it was
