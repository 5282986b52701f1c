"""Multi-GPU training configurations (DeepSpeed ZeRO), selected by a spec's
`resources.distributed` (docs/distributed.md).

Each configuration is a pair of files in this folder: `<name>.json`, the DeepSpeed config the
cell runner uses, and `<name>.yaml`, an accelerate config naming it
(`deepspeed_config.deepspeed_config_file`, a path from the repository root), to run the same
configuration under `accelerate launch --config_file`. Shipped:

- `zero2-3b`: ZeRO-2 (optimizer states and gradients sharded, parameters replicated), 2 GPUs,
  for models up to ~4B parameters in bfloat16 (Qwen2.5-3B, Gemma-3-4B);
- `zero2-7b`: the same on 4 GPUs, for 7B models (Qwen2.5-7B).

Only ZeRO stages 1 and 2: the cell runner generates, evaluates and checkpoints with whole
parameters on every rank (`runtime`), so a ZeRO-3 file is refused by `load`.
Batch size, gradient accumulation, clipping and bucket sizes may be `auto`: `fill_auto`
fills them from the spec and the model's hidden size, as accelerate does. `harness run-cell`
starts one process per GPU and trains through `runtime.EngineUpdate`;
`python -m harness.distributed.selfcheck` trains a small model under a configuration on N
ranks (the tests: 2 CPU ranks over gloo).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
NONE = "none"

def available() -> list[str]:
    """Names of the shipped configurations (each with its .yaml and .json)."""
    return sorted(p.stem for p in HERE.glob("*.yaml") if (HERE / f"{p.stem}.json").is_file())


@dataclass(frozen=True)
class DistributedConfig:
    name: str
    accelerate_config: Path
    deepspeed_config: Path
    zero_stage: int
    num_processes: int
    accelerate: dict[str, Any]
    deepspeed: dict[str, Any]


def load(name: str) -> DistributedConfig:
    """Read and check one configuration: the accelerate config uses DeepSpeed through this
    folder's JSON of the same name, which enables bf16 and states its ZeRO stage."""
    import yaml

    if name not in available():
        raise ValueError(f"no distributed configuration {name!r} (shipped: "
                         f"{', '.join(available())})")
    acc_path, ds_path = HERE / f"{name}.yaml", HERE / f"{name}.json"
    acc = yaml.safe_load(acc_path.read_text())
    ds = json.loads(ds_path.read_text())
    problems = []
    if acc.get("distributed_type") != "DEEPSPEED":
        problems.append("distributed_type is not DEEPSPEED")
    named = (acc.get("deepspeed_config") or {}).get("deepspeed_config_file")
    if named is None or (REPO_ROOT / named).resolve() != ds_path:
        problems.append(f"deepspeed_config_file {named!r} is not {ds_path.relative_to(REPO_ROOT)}")
    stage = (ds.get("zero_optimization") or {}).get("stage")
    if stage not in (1, 2):
        problems.append(f"zero_optimization.stage {stage!r} is not 1 or 2 (the cell runner "
                        "needs whole parameters on every rank, which ZeRO-3 shards)")
    if not (ds.get("bf16") or {}).get("enabled"):
        problems.append("bf16 is not enabled")
    if not isinstance(acc.get("num_processes"), int) or acc["num_processes"] < 1:
        problems.append(f"num_processes {acc.get('num_processes')!r} is not a positive integer")
    if problems:
        raise ValueError(f"distributed configuration {name}: " + "; ".join(problems))
    return DistributedConfig(name, acc_path, ds_path, int(stage), int(acc["num_processes"]),
                             acc, ds)


def fill_auto(config: DistributedConfig, *, world_size: int, batch: int,
              micro_batch_size: int | None, grad_clip: float, hidden_size: int
              ) -> dict[str, Any]:
    """The DeepSpeed config with every `auto` filled from the spec, as accelerate fills them.

    batch: sequences per optimizer step (P*G), split evenly over `world_size` ranks; each
    rank's share runs in micro-batches of `micro_batch_size` (None: the whole share), so
    train_batch_size = micro x gradient_accumulation_steps x world_size. Bucket sizes follow
    the HF/accelerate rule from the model's hidden size. Raises ValueError (one line) when
    the sizes do not divide.
    """
    if batch % world_size:
        raise ValueError(f"{batch} sequences a step do not split evenly over {world_size} "
                         f"processes: choose rollout sizes whose product is a multiple of it")
    share = batch // world_size
    micro = min(micro_batch_size or share, share)
    if share % micro:
        raise ValueError(f"optim.micro_batch_size {micro} does not divide the {share} sequences "
                         f"each of {world_size} processes takes a step: choose a divisor")
    values = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": share // micro,
        "train_batch_size": batch,
        "gradient_clipping": grad_clip,
        "reduce_bucket_size": hidden_size * hidden_size,
    }

    def fill(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: fill(v, f"{path}{k}.") for k, v in node.items()}
        if node == "auto":
            key = path.rstrip(".").rsplit(".", 1)[-1]
            if key not in values:
                raise ValueError(f"distributed configuration {config.name}: no value for "
                                 f"`auto` at {path.rstrip('.')}")
            return values[key]
        return node

    return fill(config.deepspeed, "")
