"""Calibrate the tiny policy's warm start: pass@1 on the synthetic eval split along one
warm-start run (a build of N steps equals the first N steps of a longer one).

    python scripts/calibrate_tiny.py --steps 800 --eval-at 400,600,800

Grades in-process (harness.tasks.local_check): fine for the tiny model's outputs, never for
a benchmark run. Prints one line per checkpoint: greedy, T=0.7 and T=1.0 sampled pass@1.
"""

from __future__ import annotations

import argparse
import time

import torch

from harness.policy.lean import LeanBackend
from harness.policy.loading import Policy
from harness.policy.tiny import _train
from harness.policy.tokenizer import build_char_tokenizer
from harness.spec.schema import TasksSpec, TinyRecipe
from harness.tasks import load_splits
from harness.tasks.local_check import passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = TinyRecipe()
    ap.add_argument("--steps", type=int, default=d.warm_steps)
    ap.add_argument("--batch", type=int, default=d.warm_batch)
    ap.add_argument("--lr", type=float, default=d.warm_lr)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-at", default="400,600,800")
    ap.add_argument("--eval-tasks", type=int, default=64)
    ap.add_argument("--samples", type=int, default=4, help="samples per task per temperature")
    ap.add_argument("--max-new-tokens", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)  # eval; the warm start itself runs on tiny.BUILD_THREADS

    recipe = TinyRecipe(warm_steps=args.steps, warm_batch=args.batch, warm_lr=args.lr,
                        warm_seed=args.seed)
    tasks = load_splits(TasksSpec(eval=args.eval_tasks))["eval"]
    prompts = [t.prompt for t in tasks]
    tok = build_char_tokenizer()
    backend = LeanBackend()
    at = {int(s) for s in args.eval_at.split(",")}
    t0 = time.perf_counter()
    eval_s = 0.0

    def hook(step: int, model: torch.nn.Module) -> None:
        nonlocal eval_s
        if step not in at:
            return
        e0 = time.perf_counter()
        policy = Policy(model=model, tokenizer=tok, device=torch.device("cpu"),
                        dtype=torch.float32, source="calibration")
        row = [f"step {step:4d}", f"train {e0 - t0 - eval_s:6.1f}s"]
        for temp, n in ((0.0, 1), (0.7, args.samples), (1.0, args.samples)):
            r = backend.generate(policy, prompts, n, temp, 1.0, args.max_new_tokens, seed=1234)
            ok = [passes(tasks[r.prompt_index(i)], text) for i, text in enumerate(r.texts)]
            by_style = {s: [o for i, o in enumerate(ok) if tasks[r.prompt_index(i)].style == s]
                        for s in ("call", "stdio")}
            row.append(f"T={temp}: {sum(ok) / len(ok):.3f} "
                       f"(call {sum(by_style['call']) / max(1, len(by_style['call'])):.2f} "
                       f"stdio {sum(by_style['stdio']) / max(1, len(by_style['stdio'])):.2f}, "
                       f"gen {r.seconds:.1f}s/{len(r)})")
        eval_s += time.perf_counter() - e0
        print(" | ".join(row), flush=True)

    _, loss = _train(recipe, tok, progress=lambda s, n, v: s % 50 == 0 and print(
        f"  step {s}/{n} loss {v:.3f}", flush=True), hook=hook)
    print(f"done: final loss {loss:.3f}, train time {time.perf_counter() - t0 - eval_s:.1f}s")


if __name__ == "__main__":
    main()
