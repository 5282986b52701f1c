"""Train a small model for a few steps under a shipped DeepSpeed configuration, one process
per rank, to check that the configuration, DeepSpeed and the machine's collectives work.

    python -m torch.distributed.run --nproc_per_node 2 -m harness.distributed.selfcheck \
        zero2-7b --out DIR [--steps 3]

Runs on GPUs (NCCL) when the ranks see CUDA devices, otherwise on CPU (`DS_ACCELERATOR=cpu`,
gloo). Each rank trains a randomly initialised Qwen2-architecture model (hidden size 32)
with the configuration's `auto` values filled by `fill_auto`, AdamW as the client
optimizer, and its own batch of random tokens. Each rank writes `DIR/rank<k>.json`: the
filled config, the losses, DeepSpeed's global gradient norm per step, the optimizer class and
the sum of the parameters after the steps, which must agree across ranks. This checks a
configuration, DeepSpeed and the collectives on a machine, apart from the cell runner
(tests/test_distributed.py checks the runner's own use of them).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a shipped configuration (harness/distributed)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from harness.distributed import fill_auto, load

    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    config = load(args.config)
    hidden = 32
    ds = fill_auto(config, world_size=world, batch=4 * world, micro_batch_size=2,
                   grad_clip=1.0, hidden_size=hidden)
    ds["zero_allow_untested_optimizer"] = True  # torch AdamW as the client optimizer

    torch.manual_seed(0)  # the same initial weights on every rank
    cfg = Qwen2Config(vocab_size=64, hidden_size=hidden, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=False)
    model = Qwen2ForCausalLM(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)

    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    micro = ds["train_micro_batch_size_per_gpu"]
    batches = [torch.randint(0, 64, (micro, 12), generator=g)
               for _ in range(ds["gradient_accumulation_steps"])]
    losses, norms = [], []
    for _ in range(args.steps):
        step_loss = 0.0
        for ids in batches:
            ids = ids.to(engine.device)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()  # an optimizer step at the accumulation boundary only
            step_loss += float(loss) / len(batches)
        losses.append(step_loss)
        norms.append(float(engine.get_global_grad_norm()))
    params = list(engine.module.parameters())
    total = sum(float(p.detach().float().sum()) for p in params)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"rank{rank}.json").write_text(json.dumps({
        "config": args.config, "rank": rank, "world_size": world, "deepspeed": ds,
        "optimizer": type(optimizer).__name__, "dtype": str(params[0].dtype),
        "losses": losses, "grad_norms": norms, "param_sum": total,
        "deepspeed_version": deepspeed.__version__, "device": str(engine.device)}))
    torch.distributed.barrier()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
