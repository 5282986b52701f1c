"""accelerate + DeepSpeed configurations: shipped files that accelerate reads, spec selection
and validation, and a runner that refuses (rather than silently ignores) multi-process
training it does not implement yet."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import distributed
from harness.errors import SpecError, UserError
from harness.spec import expand_cells, load_spec

# 3B/4B specs train in one process on one GPU (80 GB for 3B, 141 GB for 4B: README "The
# update: precision and memory"); the 7B ones select ZeRO-3.
GPU_SPECS = {"qwen3b-care-v2": "none", "qwen3b-constraints": "none",
             "gemma4b-pilot": "none", "qwen7b-controllers": "zero3-7b",
             "qwen7b-grpo": "zero3-7b"}


def test_shipped_configurations():
    assert distributed.available() == ["zero2-3b", "zero3-7b"]
    z2, z3 = distributed.load("zero2-3b"), distributed.load("zero3-7b")
    assert (z2.zero_stage, z2.num_processes) == (2, 2)
    assert (z3.zero_stage, z3.num_processes) == (3, 4)
    assert z3.accelerate["deepspeed_config"]["zero3_init_flag"] is True
    for d in (z2, z3):
        # what the launcher fills from the spec, and nothing accelerate forbids beside a file
        assert d.deepspeed["gradient_clipping"] == "auto"
        assert d.deepspeed["train_micro_batch_size_per_gpu"] == "auto"
        assert "mixed_precision" not in d.accelerate and "zero_stage" not in d.accelerate


def test_accelerate_reads_the_configurations():
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    for name in distributed.available():
        cfg = config_args.load_config_from_file(str(distributed.load(name).accelerate_config))
        assert str(cfg.distributed_type).endswith("DEEPSPEED")
        assert cfg.deepspeed_config["deepspeed_config_file"] == f"harness/distributed/{name}.json"


def test_gpu_specs_select_them():
    for name, config in GPU_SPECS.items():
        spec, _ = load_spec(name)
        assert spec.resources.distributed == config, name
        if config != "none":
            assert spec.resources.gpus_per_cell == distributed.load(config).num_processes
    tiny, _ = load_spec("tiny-smoke")
    assert tiny.resources.distributed == "none"


@pytest.mark.parametrize(("resources", "message"), [
    ("{distributed: zero2-3c, gpus_per_cell: 2}", "did you mean 'zero2-3b'"),
    ("{distributed: zero3-7b, gpus_per_cell: 1.5}", "whole number"),
    ("{distributed: zero3-7b}", "whole number"),
])
def test_bad_selection_is_a_spec_error(tmp_path: Path, resources: str, message: str):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nversion: 1\nmodels: [tiny]\nresources: {resources}\n")
    with pytest.raises(SpecError, match=message):
        load_spec(str(path))


def test_runner_refuses_multi_process_training_it_does_not_implement(tmp_path: Path):
    from harness.runner.cell import CellConfig, CellRunner

    spec, _ = load_spec("tiny-smoke")
    cell = expand_cells(spec)[0]
    raw = {**cell.config, "resources": {**cell.config["resources"],
                                        "distributed": "zero2-3b", "gpus_per_cell": 2}}
    runner = CellRunner(CellConfig.from_dict(cell.cell_id, raw), tmp_path)
    with pytest.raises(UserError, match="does not implement yet"):
        runner.run()
    assert not (tmp_path / "tasks.json").exists()  # refused before any work
