"""DeepSpeed configurations and data-parallel cells: shipped files that accelerate reads and
that train under a real DeepSpeed (CPU processes over gloo), `auto` values filled from the
spec, spec selection and validation, one update split over two ranks against the same update
in one process, and a whole cell trained by two ranks through `harness run-cell`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import distributed
from harness.distributed.runtime import Ranks, launch
from harness.errors import SpecError, UserError
from harness.spec import expand_cells, load_spec

# 3B/4B specs train in one process on one GPU (docs/update-precision-and-memory.md);
# the 7B ones on 4 GPUs with ZeRO-2.
GPU_SPECS = {"qwen3b-care-v2": "none", "qwen3b-constraints": "none",
             "gemma4b-pilot": "none", "qwen7b-controllers": "zero2-7b",
             "qwen7b-grpo": "zero2-7b"}
CPU_RANKS = {"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def test_shipped_configurations():
    assert distributed.available() == ["zero2-3b", "zero2-7b"]
    z3b, z7b = distributed.load("zero2-3b"), distributed.load("zero2-7b")
    assert (z3b.zero_stage, z3b.num_processes) == (2, 2)
    assert (z7b.zero_stage, z7b.num_processes) == (2, 4)
    for d in (z3b, z7b):
        assert d.accelerate["deepspeed_config"]["zero3_init_flag"] is False
        # what the launcher fills from the spec, and nothing accelerate forbids beside a file
        assert d.deepspeed["gradient_clipping"] == "auto"
        assert d.deepspeed["train_micro_batch_size_per_gpu"] == "auto"
        assert "mixed_precision" not in d.accelerate and "zero_stage" not in d.accelerate


def test_a_zero3_configuration_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The runner needs whole parameters on every rank: a ZeRO-3 file does not load."""
    monkeypatch.setattr(distributed, "HERE", tmp_path)
    monkeypatch.setattr(distributed, "REPO_ROOT", tmp_path)
    (tmp_path / "z3.json").write_text(json.dumps({"bf16": {"enabled": True},
                                                  "zero_optimization": {"stage": 3}}))
    (tmp_path / "z3.yaml").write_text("distributed_type: DEEPSPEED\nnum_processes: 4\n"
                                      "deepspeed_config: {deepspeed_config_file: z3.json}\n")
    with pytest.raises(ValueError, match=r"stage 3 is not 1 or 2 .*ZeRO-3 shards"):
        distributed.load("z3")


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
    ("{distributed: zero3-7b, gpus_per_cell: 4}", "unknown distributed configuration"),
    ("{distributed: zero2-7b, gpus_per_cell: 2.5}", "whole number >= 2"),
    ("{distributed: zero2-7b, gpus_per_cell: 1}", "whole number >= 2"),
    ("{distributed: zero2-7b}", "whole number >= 2"),
])
def test_bad_selection_is_a_spec_error(tmp_path: Path, resources: str, message: str):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nversion: 1\nmodels: [tiny]\nresources: {resources}\n")
    with pytest.raises(SpecError, match=message):
        load_spec(str(path))


def test_fill_auto_from_the_spec():
    import dataclasses

    z = distributed.load("zero2-7b")
    z = dataclasses.replace(z, deepspeed={**z.deepspeed, "zero_optimization": {
        **z.deepspeed["zero_optimization"], "reduce_bucket_size": "auto"}})
    ds = distributed.fill_auto(z, world_size=4, batch=128, micro_batch_size=8, grad_clip=0.5,
                               hidden_size=3584)
    assert "auto" not in json.dumps(ds)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"],
            ds["gradient_accumulation_steps"]) == (128, 8, 4)  # 32 a rank, in 4 passes of 8
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["reduce_bucket_size"] == 3584 ** 2
    assert z.deepspeed["train_batch_size"] == "auto"  # the loaded config is not modified
    whole = distributed.fill_auto(z, world_size=4, batch=128, micro_batch_size=None,
                                  grad_clip=1.0, hidden_size=64)
    assert (whole["train_micro_batch_size_per_gpu"], whole["gradient_accumulation_steps"]) == (32, 1)
    with pytest.raises(ValueError, match="do not split evenly over 3"):
        distributed.fill_auto(z, world_size=3, batch=128, micro_batch_size=8, grad_clip=1.0,
                              hidden_size=64)
    with pytest.raises(ValueError, match="micro_batch_size 6 does not divide the 32"):
        distributed.fill_auto(z, world_size=4, batch=128, micro_batch_size=6, grad_clip=1.0,
                              hidden_size=64)


def test_selfcheck_trains_under_real_deepspeed(tmp_path: Path):
    """Two ranks on CPU (DeepSpeed's CPU accelerator over gloo): the shipped file, filled,
    initialises a ZeRO-2 engine that trains, and the ranks agree on the gradient norm and the
    parameters."""
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "harness.distributed.selfcheck", "zero2-7b", "--out", str(tmp_path),
         "--steps", "3"],
        env={**os.environ, **CPU_RANKS}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    for d in ranks:
        assert d["world_size"] == 2 and "auto" not in json.dumps(d["deepspeed"])
        assert d["deepspeed"]["gradient_accumulation_steps"] == 2  # 4 a rank, micro-batch 2
        assert d["optimizer"] == "DeepSpeedZeroOptimizer"
        assert d["dtype"] == "torch.bfloat16"  # the configurations' bf16
        assert all(math.isfinite(x) for x in d["losses"]) and d["losses"][-1] < d["losses"][0]
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank its own data
    assert ranks[0]["grad_norms"] == ranks[1]["grad_norms"] and ranks[0]["grad_norms"][0] > 0
    assert ranks[0]["param_sum"] == ranks[1]["param_sum"]


@pytest.mark.parametrize(("n", "world"), [(12, 2), (30, 4), (3, 4), (7, 3)])
def test_shares_cover_every_item_once(n: int, world: int):
    shares = [Ranks(r, world).share(n) for r in range(world)]
    assert [i for s in shares for i in range(n)[s]] == list(range(n))
    assert max(s.stop - s.start for s in shares) - min(s.stop - s.start for s in shares) <= 1


@pytest.mark.parametrize(("micro", "method"), [
    ("none", {"name": "reinforce", "loss_agg": "token_mean"}),
    ("4", {"name": "grpo", "loss_agg": "seq_mean", "kl": {"beta": 0.1}}),  # 6 rows: 4 + 2
    ("2", {"name": "reinforce", "loss_agg": "token_mean", "ewc": {"lam": 100.0}}),
])
def test_an_update_split_over_ranks_is_the_one_process_update(tmp_path: Path, micro: str,
                                                              method: dict):
    """Two ranks each backpropagate half the rows through a DeepSpeed ZeRO-2 engine; the loss,
    metrics (KL, EWC penalty), clipped gradient norm and resulting parameters are those of one
    process updating on the whole batch (float32: equal up to summation order)."""
    from harness.policy.tiny import ensure_tiny

    ensure_tiny()  # built here, before the ranks load it
    script = Path(__file__).with_name("dist_update_check.py")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), str(tmp_path), "zero2-3b", micro, json.dumps(method)],
        env={**os.environ, **CPU_RANKS}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [d["share"] for d in ranks] == [[0, 6], [6, 12]]
    for d in ranks:
        assert d["dtype"] == "torch.float32"  # the engine keeps the policy's dtype
        assert d["grad_norm_single"] > 0.5  # above the clip: clipping is part of the check
        assert d["grad_norm_ranks"] == pytest.approx(d["grad_norm_single"], rel=1e-5)
        assert d["loss_ranks"] == pytest.approx(d["loss_single"], rel=1e-5, abs=1e-6)
        assert d["entropy_ranks"] == pytest.approx(d["entropy_single"], rel=1e-6)
        if "kl" in method:
            assert d["kl_ranks"] == pytest.approx(d["kl_single"], rel=1e-5, abs=1e-7)
        if "ewc" in method:  # added once (a share on each rank), not once per rank
            assert d["ewc_single"] > 0.01
            assert d["ewc_ranks"] == pytest.approx(d["ewc_single"], rel=1e-6)
        assert d["update_norm"] > 0.1
        assert d["update_rel_diff"] < 1e-3  # AdamW's first step magnifies rounding near 0
    assert ranks[0]["update_rel_diff"] == ranks[1]["update_rel_diff"]  # the same weights


def test_launch_reports_a_failed_rank_in_one_line_and_stops_the_rest(tmp_path: Path,
                                                                     capfd: pytest.CaptureFixture):
    code = ("import os, sys, time\n"
            "r = int(os.environ['RANK'])\n"
            "if r == 1:\n    print('error: rank one cannot go on'); sys.exit(3)\n"
            "time.sleep(600)\n")
    rc = launch([sys.executable, "-c", code], 2, tmp_path)
    assert rc == 3
    err = capfd.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: rank 1 of 2 failed (exit 3): error: rank one cannot go on")
    assert (tmp_path / "rank1.log").is_file()


def test_launch_reports_a_rank_killed_by_a_signal(tmp_path: Path,
                                                  capfd: pytest.CaptureFixture):
    code = ("import os, signal, time\n"
            "if os.environ['RANK'] == '0':\n    os.kill(os.getpid(), signal.SIGKILL)\n"
            "time.sleep(600)\n")
    assert launch([sys.executable, "-c", code], 2, tmp_path) == 1
    assert capfd.readouterr().err.strip().splitlines()[-1] == \
        "error: rank 0 of 2 was killed by signal 9"


def test_stopping_the_cell_process_stops_its_ranks(tmp_path: Path):
    """Executors stop a cell by signalling its `run-cell` process: its ranks go with it."""
    import signal
    import time

    rank = ("import os, pathlib, time\n"
            f"pathlib.Path({str(tmp_path)!r}, 'pid' + os.environ['RANK']).write_text("
            "str(os.getpid()))\n"
            "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c",
                               "import sys\nfrom pathlib import Path\n"
                               "from harness.distributed.runtime import launch\n"
                               f"sys.exit(launch([sys.executable, '-c', {rank!r}], 2, "
                               f"Path({str(tmp_path)!r})))\n"])
    pids = [tmp_path / f"pid{k}" for k in (0, 1)]
    deadline = time.monotonic() + 120
    while not all(p.exists() and p.read_text() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    ranks = [int(p.read_text()) for p in pids]
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM
    for pid in ranks:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_batch_that_does_not_split_evenly_over_the_ranks_is_refused(tmp_path: Path):
    """Unequal shares would run unequal numbers of backward passes, each of which
    communicates under ZeRO-2: refused before any work."""
    from harness.runner.cell import CellConfig, CellRunner

    spec, _ = load_spec(str(_tiny_dist_spec(tmp_path)))
    cell = expand_cells(spec)[0]
    raw = {**cell.config, "rollout": {**cell.config["rollout"], "prompts_per_step": 3,
                                      "group_size": 3}}
    runner = CellRunner(CellConfig.from_dict(cell.cell_id, raw), tmp_path, ranks=Ranks(0, 2))
    with pytest.raises(UserError, match=r"9 sequences a step .* do not split evenly over 2"):
        runner.run()
    assert not (tmp_path / "tasks.json").exists()


def _tiny_dist_spec(tmp_path: Path, models: str = "[tiny]") -> Path:
    spec = Path(__file__).parents[1] / "benchmarks" / "tiny-smoke.yaml"
    text = spec.read_text().replace("name: tiny-smoke", "name: tiny-dist")
    text = text.replace("  steps: 3", "  steps: 2").replace("models: [tiny]", f"models: {models}")
    path = tmp_path / "dist.yaml"
    path.write_text(text + "resources:\n  distributed: zero2-3b\n  gpus_per_cell: 2\n"
                    "  cpus_per_cell: 2\n")
    return path


def _harness(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True,
                          text=True, timeout=900,
                          env={**os.environ, **CPU_RANKS, "HARNESS_MLFLOW": "off", **env})


def test_a_cell_trains_on_two_ranks_and_resumes(tmp_path: Path):
    """`harness bench` -> `harness run-cell` starts two ranks; rank 0 writes one trace, the
    weights move, and a cell cut after its first campaign resumes to the same results."""
    r = _harness("bench", str(_tiny_dist_spec(tmp_path)), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (cell,) = (tmp_path / "run" / "cells").iterdir()
    records = [json.loads(line) for line in (cell / "trace.jsonl").read_text().splitlines()]
    steps = [(x["campaign"], x["step"]) for x in records if x["type"] == "step"]
    assert steps == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]  # written once, by rank 0
    train = [x for x in records if x["type"] == "step" and x["step"] > 0]
    assert all(math.isfinite(x["grad_norm"]) and x["grad_norm"] > 0 for x in train)
    assert all(x["tokens_generated"] > 0 for x in train)
    assert (cell / "rank1.log").is_file() and (cell / "result.json").is_file()
    from safetensors.torch import load_file

    from harness.policy.tiny import ensure_tiny

    start = load_file(str(ensure_tiny() / "model.safetensors"))
    last = load_file(str(cell / "checkpoints" / "c1_last.safetensors"))
    assert set(start) <= set(last)
    assert any(not (last[k] == start[k]).all() for k in start)  # the chain trained
    result = json.loads((cell / "result.json").read_text())

    # the same cell again, killed (every rank) once its first campaign is in the trace, then
    # resumed: the same results as the run that was not interrupted
    import signal
    import time

    again = tmp_path / "again"
    again.mkdir()
    (again / "config.json").write_text((cell / "config.json").read_text())
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run-cell", str(again)],
                            env={**os.environ, **CPU_RANKS, "HARNESS_MLFLOW": "off"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    trace = again / "trace.jsonl"
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if trace.exists() and '"type": "campaign"' in trace.read_text():
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert not (again / "result.json").exists()  # killed mid-chain
    r = _harness("run-cell", str(again))
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = json.loads((again / "result.json").read_text())
    assert resumed["campaigns"] == result["campaigns"]
    assert resumed["end_of_chain"] == result["end_of_chain"]


def test_distributed_cells_refuse_what_they_cannot_train(tmp_path: Path):
    r = _harness("bench", str(_tiny_dist_spec(tmp_path, "[{id: tiny, dtype: float16}]")),
                 "--out", str(tmp_path / "run"))
    assert r.returncode != 0
    assert "dtype float16 is not supported (no loss scaling)" in r.stdout + r.stderr

    from harness.runner.cell import CellConfig, CellRunner

    spec, _ = load_spec(str(_tiny_dist_spec(tmp_path)))
    cell = expand_cells(spec)[0]
    (tmp_path / "c").mkdir()
    runner = CellRunner(CellConfig.from_dict(cell.cell_id, cell.config), tmp_path / "c")
    with pytest.raises(UserError, match="trains on several processes: run the cell with"):
        runner.run()
