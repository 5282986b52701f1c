"""The update's memory options in a real cell: `optim.micro_batch_size` and
`optim.gradient_checkpointing` give the whole-batch update's numbers (up to summation order)
and are part of the cell's identity."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.runner.trace import read_trace
from harness.spec import expand_cells, load_spec

# the built-in tiny policy (warm-started: some rewards are 1, so the gradient is not zero)
BODY = ("version: 1\nmodels: [tiny]\nseeds: [0]\n"
        "methods: [{name: reinforce, kl: {beta: 0.1}}]\n"
        "chain: {campaigns: 1, steps: 1}\n"
        "tasks: {source: synthetic, train: 4, eval: 4, test: 4}\n"
        "eval: {samples_per_task: 2, temperature: 1.0, max_new_tokens: 16}\n"
        "rollout: {group_size: 4, prompts_per_step: 4, temperature: 1.0, max_new_tokens: 48}\n"
        "optim: {lr: 1.0e-3OPTIM}\ngrader: {timeout_s: 2, memory_mb: 256, workers: 1}\n")


def test_micro_batches_and_checkpointing_give_the_whole_batch_update(tmp_path: Path):
    from grader_sandbox import GraderPool
    from harness.runner.cell import CellConfig, CellRunner

    variants = {"whole": "", "split": ", micro_batch_size: 5, gradient_checkpointing: true"}
    steps, ids = {}, {}
    with GraderPool(workers=1) as pool:
        for name, optim in variants.items():
            path = tmp_path / f"{name}.yaml"
            path.write_text(f"name: u-{name}\n" + BODY.replace("OPTIM", optim))
            spec, _ = load_spec(str(path))
            (cell,) = expand_cells(spec)
            ids[name] = cell.cell_id
            cell_dir = tmp_path / name
            cell_dir.mkdir()
            CellRunner(CellConfig.from_dict(cell.cell_id, cell.config), cell_dir,
                       grader=pool).run()
            (steps[name],) = [r for r in read_trace(cell_dir / "trace.jsonl")
                              if r["type"] == "step" and r["step"] == 1]
    assert ids["whole"] != ids["split"]
    whole, split = steps["whole"], steps["split"]
    # 16 sequences in micro-batches of 5, 5, 5 and 1: same rollouts, gradient and update
    assert whole["tokens_generated"] == split["tokens_generated"] > 0
    assert whole["train_reward"] > 0 and whole["grad_norm"] > 0
    for key, value in whole.items():
        if key == "time":
            continue
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(split[key]), key
        elif isinstance(value, float):
            assert split[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
        else:
            assert split[key] == value, key


def test_plan_states_how_the_update_runs(capsys: pytest.CaptureFixture[str]):
    from harness.cli import main

    assert main(["plan", "qwen3b-care-v2"]) == 0
    assert ("update: micro-batches of 8 of the 128 sequences a step; gradient checkpointing "
            "on; master weights float32") in capsys.readouterr().out
    assert main(["plan", "tiny-smoke"]) == 0
    assert "update: the whole batch (16 sequences) in one pass; gradient checkpointing off" \
        in capsys.readouterr().out


@pytest.mark.parametrize(("optim", "message"), [
    ("{micro_batch_size: 0}", "micro_batch_size"),
    ("{master_weights: float16}", "master_weights"),
    ("{gradient_checkpointing: maybe}", "gradient_checkpointing"),
])
def test_bad_update_options_are_spec_errors(tmp_path: Path, optim: str, message: str):
    from harness.errors import SpecError

    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nversion: 1\nmodels: [tiny]\noptim: {optim}\n")
    with pytest.raises(SpecError, match=message):
        load_spec(str(path))
