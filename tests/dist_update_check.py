"""Run on N ranks (tests/test_distributed.py starts it with torch.distributed.run): one update
of the tiny policy through `EngineUpdate` (each rank backpropagates its share of the rows)
against the same update in one process (`backward_loss` + AdamW on the whole batch). Writes
OUT/rank<k>.json with both gradient norms, losses and metrics, and how far apart the two
updates of the parameters are.

    python tests/dist_update_check.py OUT CONFIG MICRO_BATCH_SIZE METHOD_JSON
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    out, config, micro, method = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    micro_batch_size = None if micro == "none" else int(micro)
    torch.set_num_threads(1)
    from harness.distributed.runtime import EngineUpdate, Ranks
    from harness.methods import (
        EWCState,
        apply_gradients,
        backward_loss,
        make_optimizer,
        make_reference,
    )
    from harness.policy import load_policy
    from harness.policy.rollout import Rollouts
    from harness.spec.schema import MethodSpec, ModelSpec

    ranks = Ranks.join()
    policy = load_policy(ModelSpec(id="tiny", device="cpu"))
    model = policy.model
    spec = MethodSpec(**json.loads(method))
    # a fixed batch: 3 prompts x 4 samples of random lengths (the same on every rank)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    prompts = [torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in (5, 9, 7)]
    comps = [torch.randint(3, vocab, (int(torch.randint(1, 15, (1,), generator=g)),),
                           generator=g).tolist() for _ in range(12)]
    ro = Rollouts(texts=[""] * 12, prompt_ids=[prompts[i // 4] for i in range(12)],
                  completion_ids=comps, n=4)
    batch = ro.to_batch(policy.tokenizer.pad_token_id, device="cpu")
    rewards = torch.tensor([[1.0, 0, 0, 1], [0, 0, 0, 1], [1, 1, 0, 1]])
    ref = make_reference(model) if spec.kl is not None else None
    ewc = None
    if spec.ewc is not None:  # an anchor away from the weights, so the penalty has a gradient
        named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
        ewc = EWCState(
            anchor={n: q.detach() + 0.01 * torch.randn(q.shape, generator=g) for n, q in named},
            fisher={n: torch.rand(q.shape, generator=g) for n, q in named})

    start = [p.detach().clone() for p in model.parameters()]
    single = copy.deepcopy(model).train()
    opt = make_optimizer(single, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    opt.zero_grad(set_to_none=True)
    m1 = backward_loss(spec, single, batch, rewards, ref_model=ref, ewc=ewc,
                      micro_batch_size=None)
    norm1 = apply_gradients(single, opt, grad_clip=0.5)

    model.train()
    engine = EngineUpdate(model, ranks, config, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0,
                          grad_clip=0.5, batch=12, micro_batch_size=micro_batch_size)
    m2 = backward_loss(spec, model, batch, rewards, ref_model=ref, ewc=ewc,
                       micro_batch_size=micro_batch_size, rows=ranks.share(12),
                       backward=engine.backward, reduce=ranks.sum)
    norm2 = engine.step()
    engine.close()
    with torch.no_grad():  # the two updates: how far apart, relative to their size
        d1 = torch.cat([(a - s).flatten() for a, s in zip(single.parameters(), start,
                                                          strict=True)])
        d2 = torch.cat([(b - s).flatten() for b, s in zip(model.parameters(), start,
                                                          strict=True)])
    update_rel_diff = float((d1 - d2).norm() / d1.norm())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{ranks.rank}.json").write_text(json.dumps({
        "rank": ranks.rank, "world": ranks.world, "share": [ranks.share(12).start,
                                                             ranks.share(12).stop],
        "grad_norm_single": norm1, "grad_norm_ranks": norm2,
        "loss_single": m1["loss"], "loss_ranks": m2["loss"],
        "entropy_single": m1["entropy"], "entropy_ranks": m2["entropy"],
        "kl_single": m1["kl_to_ref"], "kl_ranks": m2["kl_to_ref"],
        "ewc_single": m1["ewc_penalty"], "ewc_ranks": m2["ewc_penalty"],
        "update_rel_diff": update_rel_diff, "update_norm": float(d1.norm()),
        "dtype": str(next(model.parameters()).dtype)}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
