"""Data-parallel training of one cell: one process per rank, DeepSpeed ZeRO for the update.

`harness run-cell` starts the ranks itself (`launch`) when the cell's spec selects a
configuration (`resources.distributed`): `resources.gpus_per_cell` processes on this machine
(at least 2), one GPU each over NCCL, or CPU processes over gloo where no GPU is visible
(`DS_ACCELERATOR=cpu`; how the tests run it). Every rank runs the same chain; the work of a
step is split, and what the chain decides from is the same on every rank:

- rollouts: each rank generates and grades a contiguous share of the step's prompts (its own
  sampling seed); the rollouts and rewards are gathered, so every rank holds the whole batch;
- evaluation: each rank samples and grades a share of the split's tasks; the verdicts are
  gathered, so pass@1 (and every controller decision) is the same on every rank;
- the update: advantages and the loss's normalisers come from the whole batch; each rank
  backpropagates its share of the sequences (in micro-batches of `optim.micro_batch_size`)
  through the DeepSpeed engine, which averages the ranks' gradients, so the loss is scaled by
  the world size and the step's gradient is the whole batch's (the update of one process,
  up to summation order); DeepSpeed clips it (`optim.grad_clip`) and steps AdamW over its
  float32 master partitions;
- the optimizer is fresh per campaign: a new engine (`deepspeed.initialize`) over AdamW at the
  campaign's learning rate, destroyed at the campaign's end;
- rank 0 writes the cell's files (trace, checkpoints, results) and holds the checkpoints;
  the others keep the same records in memory and receive rank 0's weights (`broadcast`)
  whenever a checkpoint is loaded.

ZeRO stages 1 and 2 only: parameters stay whole on every rank, so generation, checkpoints,
the KL reference and the EWC Fisher use the plain model between updates (ZeRO-3, which shards
them, is refused by `harness.distributed.load`).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from harness.errors import UserError
from harness.procutil import die_with_parent

RANK_ENV = "HARNESS_RANK"          # set by `launch` in each rank's environment
RANK_LOG = "rank{rank}.log"        # ranks other than 0 write their output here, in the cell dir


def world_size(resources: Any) -> int:
    """Processes a distributed cell runs: `resources.gpus_per_cell`, at least 2."""
    return max(2, int(resources.gpus_per_cell))


def check_supported(name: str, dtype: str) -> None:
    """Raise UserError (one line) for what the runner cannot train with a configuration."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise UserError(f"resources.distributed: {name} trains with DeepSpeed, which is not "
                        "installed: pip install 'rl-collapse-harness[gpu]' (or deepspeed==0.19.8)")
    if dtype == "float16":
        raise UserError(f"resources.distributed: {name} with model dtype float16 is not "
                        "supported (no loss scaling): use bfloat16 or float32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(argv: list[str], world: int, cell_dir: Path) -> int:
    """Run `argv` (this cell's `run-cell`) as `world` ranks on this machine and wait.

    Rank 0 shares this process's output; the others write `rank<k>.log` in the cell
    directory. When a rank fails, the rest are stopped and its last line is reported. The
    ranks die with this process (PR_SET_PDEATHSIG), and a SIGTERM or SIGINT to it stops them
    first. Returns the exit status (0 when every rank finished)."""
    import signal

    if torch.cuda.is_available() and torch.cuda.device_count() < world:
        raise UserError(f"resources.gpus_per_cell is {world} but this machine has "
                        f"{torch.cuda.device_count()} GPUs: run the cell where it has {world}, "
                        "or set resources.distributed: none")
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world)}
    if not torch.cuda.is_available():
        base["DS_ACCELERATOR"] = "cpu"
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    for rank in range(world):
        env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), RANK_ENV: str(rank)}
        if rank == 0:
            procs.append(subprocess.Popen(argv, env=env, preexec_fn=die_with_parent))
            continue
        log = open(cell_dir / RANK_LOG.format(rank=rank), "wb")  # noqa: SIM115
        logs.append(log)
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      preexec_fn=die_with_parent))

    def stop(signum: int, frame: Any) -> None:  # the executor stops the cell: stop its ranks
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    failed: tuple[int, int] | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]  # every one polled, each round
            failed = next(((r, c) for r, c in enumerate(codes) if c not in (None, 0)), None)
            if failed is not None or all(c is not None for c in codes):
                break
            time.sleep(0.2)
        for p in procs:
            if p.poll() is None and failed is not None:
                p.terminate()
        deadline = time.monotonic() + 30
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for log in logs:
            log.close()
    if failed is None:
        failed = next(((r, p.returncode) for r, p in enumerate(procs) if p.returncode), None)
    if failed is None:
        return 0
    rank, code = failed
    if code < 0:  # killed by a signal (the out-of-memory killer, say): it printed nothing
        print(f"error: rank {rank} of {world} was killed by signal {-code}", file=sys.stderr)
    elif rank != 0:  # rank 0's own error line is on this process's stderr already
        lines = (cell_dir / RANK_LOG.format(rank=rank)).read_text(errors="replace").splitlines()
        last = next((ln for ln in reversed(lines) if ln.strip()), "no output")
        print(f"error: rank {rank} of {world} failed (exit {code}): {last.strip()} "
              f"(whole log: {cell_dir / RANK_LOG.format(rank=rank)})", file=sys.stderr)
    return code if code > 0 else 1


class Ranks:
    """This process's place among a cell's ranks, and the collectives the runner needs.
    `Ranks.single()` is one process: every helper is then the identity."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    @classmethod
    def single(cls) -> Ranks:
        return cls(0, 1)

    @classmethod
    def join(cls) -> Ranks:
        """Join the process group `launch` set up (NCCL on GPUs, gloo on CPU)."""
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        else:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   verbose=False)
        return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of n items (the first n % world ranks take one more)."""
        per, extra = divmod(n, self.world)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (self.rank < extra))

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over the ranks (float64, in a fixed key order)."""
        if self.world == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        if torch.cuda.is_available():
            t = t.cuda()
        torch.distributed.all_reduce(t)
        return dict(zip(keys, t.tolist(), strict=True))

    def broadcast(self, module: torch.nn.Module) -> None:
        """Overwrite `module`'s weights (its state dict, in place) with rank 0's."""
        if self.world == 1:
            return
        with torch.no_grad():
            for t in module.state_dict().values():
                torch.distributed.broadcast(t, src=0)


class EngineUpdate:
    """One campaign's optimizer as a DeepSpeed engine over the (already loaded) model.

    `backward(loss)` and `step()` stand in for `loss.backward()` and `apply_gradients`; the
    caller passes the rank's share of rows to `backward_loss` and `backward` as its backward.
    """

    def __init__(self, model: torch.nn.Module, ranks: Ranks, name: str, *, lr: float,
                 betas: tuple[float, float], weight_decay: float, grad_clip: float,
                 batch: int, micro_batch_size: int | None) -> None:
        import deepspeed

        from harness.distributed import fill_auto, load

        config = load(name)
        hidden = int(getattr(model.config, "hidden_size", 0) or
                     getattr(getattr(model.config, "text_config", None), "hidden_size", 1024))
        rows = ranks.share(batch)
        micro = max(1, min(micro_batch_size or batch, rows.stop - rows.start))
        # Shares and micro-batch counts need not divide evenly: the accumulation boundary is
        # set explicitly at each rank's last micro-batch, so DeepSpeed's batch sizes are
        # bookkeeping (one micro-batch per rank and step).
        ds = fill_auto(config, world_size=ranks.world, batch=micro * ranks.world,
                       micro_batch_size=micro, grad_clip=grad_clip, hidden_size=hidden)
        dtype = next(model.parameters()).dtype
        ds["bf16"] = {"enabled": dtype == torch.bfloat16}  # the policy's dtype, not the file's
        ds["zero_allow_untested_optimizer"] = True  # torch AdamW as the client optimizer
        self.ranks = ranks
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
        self.engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Backpropagate one micro-batch's share of the whole batch's loss. DeepSpeed averages
        gradients over the ranks, so the loss is scaled by their number; no scaling by the
        accumulation steps (the loss is already normalised over the whole batch)."""
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss * self.ranks.world, scale_wrt_gas=False)

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next step (warm-up)."""
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> float:
        """Reduce, clip and step; return the global gradient norm before clipping."""
        self.engine.set_gradient_accumulation_boundary(True)
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def close(self) -> None:
        """Destroy the engine (its gradient hooks go; the model stays, with its weights)."""
        self.engine.destroy()
        self.engine.optimizer = None
        self.engine = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
