"""Peak memory and time of one update: whole batch vs micro-batches vs micro-batches with
gradient checkpointing (`optim.micro_batch_size`, `optim.gradient_checkpointing`).

    python scripts/bench_update_memory.py [--shape small] [--seqs 16] [--prompt 64]
        [--completion 192] [--micro 4] [--device cpu|cuda] [--configs whole,micro,micro+ckpt]

Each configuration runs in a fresh process on a randomly initialised Qwen2-architecture model
of the given shape (`small`, or a real model's shape from `scripts/shaped_model.py`, vocabulary
151,936 as in Qwen2.5) with the same random batch, REINFORCE + token_mean, one AdamW step.
Reported per configuration:

- `peak`: the process's peak memory during the update above what it held before it (the
  model, inputs; on CUDA `max_memory_allocated`, on CPU the peak resident set, `ru_maxrss`),
  which is the activations, gradients and optimizer state;
- `update s`: wall time of the backward pass(es) and the optimizer step;
- `grad norm`: the global gradient norm, which must agree across configurations;
- on CUDA also `device peak`: everything allocated at the peak (weights, the float32 master
  copy, AdamW's moments, gradients, activations), which is what must fit the GPU.

`--steps N` runs N updates and measures the last: from the second on, AdamW's moments are
already allocated while the backward pass runs (a campaign's steady state); the first
update's peak is its optimizer step, when the moments are created. On CPU the peak resident
set cannot be reset, so it covers all N.

Ratios are against the first configuration that ran (`--configs`; default the whole-batch
update) in the same run; one that runs out of memory is reported as such. Memory on CPU includes the
allocator's slack; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

SHAPES = {
    "small": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 8,
              "num_attention_heads": 8, "num_key_value_heads": 2, "tie_word_embeddings": True},
}
VOCAB = 151_936


def _shapes() -> dict[str, dict[str, int]]:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from shaped_model import SHAPES as REAL

    return {**SHAPES, **REAL}


def _peak_bytes(device: str) -> int:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from harness.methods import apply_gradients, backward_loss, make_optimizer
    from harness.policy import enable_activation_checkpointing
    from harness.spec.schema import MethodSpec

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cfg = Qwen2Config(vocab_size=VOCAB, max_position_embeddings=4096, **_shapes()[args.shape])
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    with torch.device(args.device):
        model = Qwen2ForCausalLM(cfg).to(dtype).train()
    if args.config.endswith("ckpt"):
        enable_activation_checkpointing(model)
    g = torch.Generator().manual_seed(1)
    n, t = args.seqs, args.prompt + args.completion
    ids = torch.randint(3, VOCAB, (n, t), generator=g)
    lengths = args.prompt + torch.randint(args.completion // 2, args.completion + 1, (n,),
                                          generator=g)
    cols = torch.arange(t)
    am = (cols < lengths.unsqueeze(1)).long()
    cm = am * (cols >= args.prompt).long()
    batch = {k: v.to(args.device) for k, v in
             {"input_ids": ids * am, "attention_mask": am, "completion_mask": cm}.items()}
    rewards = (torch.arange(n) % 2).float().reshape(n // args.group, args.group)  # half pass
    # what a cell uses: float32 master weights when the model is 16-bit (on cuda)
    optimizer = make_optimizer(model, lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)
    micro = None if args.config == "whole" else args.micro

    def update() -> float:
        optimizer.zero_grad(set_to_none=True)
        backward_loss(MethodSpec(name="reinforce", loss_agg="token_mean"), model, batch,
                      rewards, micro_batch_size=micro,
                      after_backward=getattr(optimizer, "accumulate_grads", None))
        return apply_gradients(model, optimizer, grad_clip=1e9)

    for _ in range(args.steps - 1):  # earlier updates: AdamW's moments exist from the first
        update()
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = (torch.cuda.memory_allocated() if args.device == "cuda"
            else _current_rss_bytes())
    t0 = time.perf_counter()
    grad_norm = update()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"peak": _peak_bytes(args.device) - base, "seconds": seconds, "grad_norm": grad_norm,
            "total": _peak_bytes(args.device),
            "params": sum(p.numel() for p in model.parameters()),
            "tokens": int(batch["attention_mask"].sum())}


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="small", help="small, qwen2.5-3b, qwen2.5-7b")
    ap.add_argument("--seqs", type=int, default=16, help="sequences in the batch (P*G)")
    ap.add_argument("--group", type=int, default=4, help="G")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens per sequence")
    ap.add_argument("--completion", type=int, default=192, help="max completion tokens")
    ap.add_argument("--micro", type=int, default=4, help="optim.micro_batch_size")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1,
                    help="updates run; the last is measured (2+: AdamW's moments already exist, "
                    "the steady state of a campaign)")
    ap.add_argument("--configs", default="whole,micro,micro+ckpt",
                    help="which updates to run, comma-separated (whole, micro, micro+ckpt)")
    ap.add_argument("--config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.shape not in _shapes():
        ap.error(f"unknown shape {args.shape!r}; known: {', '.join(sorted(_shapes()))}")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not configs or set(configs) - {"whole", "micro", "micro+ckpt"}:
        ap.error(f"--configs {args.configs!r}: choose from whole, micro, micro+ckpt")
    if args.config:
        import torch

        try:
            print(json.dumps(child(args)))
        except (MemoryError, torch.OutOfMemoryError) as e:
            print(json.dumps({"oom": str(e).splitlines()[0][:160]}))
        return 0

    rows = {}
    for config in configs:
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--config", config],
                              capture_output=True, text=True)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{config}: failed (exit {proc.returncode}): {last}", file=sys.stderr)
            return 1
        rows[config] = json.loads(proc.stdout.strip().splitlines()[-1])
    ran = [r for r in rows.values() if "oom" not in r]
    if not ran:
        for config, r in rows.items():
            print(f"{config}: out of memory ({r['oom']})")
        return 1
    first = ran[0]
    ref = next(c for c, r in rows.items() if r is first)
    print(f"shape {args.shape} ({first['params'] / 1e6:.0f}M parameters), {args.seqs} sequences,"
          f" {first['tokens']} tokens, micro_batch_size {args.micro}, {args.device}")
    print(f"{'update':<12}{'peak GiB':>10}{'x ' + ref:>13}{'update s':>10}{'x ' + ref:>13}"
          f"{'grad norm':>14}")
    for config, r in rows.items():
        if "oom" in r:
            print(f"{config:<12}{'out of memory':>23}  {r['oom']}")
            continue
        print(f"{config:<12}{r['peak'] / 2**30:>10.2f}{r['peak'] / first['peak']:>13.2f}"
              f"{r['seconds']:>10.1f}{r['seconds'] / first['seconds']:>13.2f}"
              f"{r['grad_norm']:>14.6g}"
              + (f"   device peak {r['total'] / 2**30:.2f} GiB" if args.device == "cuda" else ""))
    # float32 gradients + AdamW's two float32 moments (+ the float32 master copy on cuda)
    per_param = 16 if args.device == "cuda" else 12
    print(f"of each peak, gradients + optimizer state: {first['params'] * per_param / 2**30:.2f}"
          " GiB (the same in each); the rest is activations, logit chunks and slack")
    spread = max(abs(r["grad_norm"] / first["grad_norm"] - 1) for r in ran)
    print(f"largest relative grad-norm difference from {ref}: {spread:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
