"""Per-step time split of a cell on the built-in tiny policy, and the harness's overhead.

    python scripts/bench_step_time.py [SPEC] [--steps N]
    python scripts/bench_step_time.py [SPEC] [--steps N] --mu 1,2,4 [--mini-batches M]

Runs the first cell of SPEC (default tiny-smoke) with one campaign of N steps in a temporary
run directory and prints, per step, the mean seconds in: the rollout stage (of which inside
the model's generate), grading, the update, eval (of which grading), and the share of the step
spent outside the model (tokenisation, sandboxed grading, batching, trace writing). Target:
harness overhead <= 15% of step time. Timings drift between runs on a shared machine; the
shares are what to compare.

With --mu, runs the cell once per value of `method.mu` (inner iterations over each rollout
batch, `--mini-batches` mini-batches each), side by side in one process, and prints the
generate / update / step seconds and the update's cost against mu = 1: mu inner iterations
should cost about mu updates and no extra generation.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from harness.runner.cell import CellConfig, CellRunner
from harness.runner.trace import read_trace
from harness.spec import expand_cells, load_spec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec", nargs="?", default="tiny-smoke")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mu", help="comma-separated values of method.mu to compare")
    ap.add_argument("--mini-batches", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec, _ = load_spec(args.spec)
    cell = expand_cells(spec)[0]
    if args.mu:
        return _compare_mu(cell, args)
    steps = _run(cell, args.steps)
    t = {k: statistics.mean(s["time"][k] for s in steps) for k in steps[0]["time"]}
    step = t["step"]
    print(f"{args.spec}: {len(steps)} steps, {args.threads} torch thread(s), "
          f"mean step {step:.3f} s")
    rows = [("rollouts (wall)", t["generate"]), ("grading (train)", t["grade"]),
            ("update (forward/backward/step)", t["update"]), ("eval (wall)", t["eval"]),
            ("  of which grading", t["eval_grade"]),
            ("inside the model (generate + update)", t["model"]),
            ("harness overhead (step - model)", step - t["model"])]
    for name, v in rows:
        print(f"  {name:<40s} {v:7.3f} s  {100 * v / step:5.1f}%")
    share = (step - t["model"]) / step
    print(f"harness overhead share: {100 * share:.1f}% (target <= 15%)")
    return 0


def _run(cell, n_steps: int, method: dict | None = None) -> list[dict]:
    cfg = dict(cell.config, chain=dict(cell.config["chain"], campaigns=1, steps=n_steps))
    if method is not None:
        cfg["method"] = dict(cfg["method"], **method)
    with tempfile.TemporaryDirectory() as d:
        CellRunner(CellConfig.from_dict(cell.cell_id, cfg), Path(d)).run()
        return [r for r in read_trace(Path(d) / "trace.jsonl")
                if r["type"] == "step" and r["step"] > 0]


def _compare_mu(cell, args: argparse.Namespace) -> int:
    import platform

    mus = [int(x) for x in args.mu.split(",")]
    print(f"{args.spec} (cell {cell.cell_id}): {args.steps} steps per run, mini_batches "
          f"{args.mini_batches}, {args.threads} torch thread(s), torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print(f"  {'mu':>3} {'generate s':>11} {'update s':>9} {'step s':>7} "
          f"{'tokens/step':>12} {'update / mu=1':>14} {'per inner step':>15}")
    base = None
    for mu in mus:
        steps = _run(cell, args.steps, {"mu": mu, "mini_batches": args.mini_batches})
        gen = statistics.mean(s["time"]["generate"] for s in steps)
        upd = statistics.mean(s["time"]["update"] for s in steps)
        step = statistics.mean(s["time"]["step"] for s in steps)
        tokens = statistics.mean(s["tokens_generated"] for s in steps)
        base = upd if base is None else base
        print(f"  {mu:>3} {gen:>11.3f} {upd:>9.3f} {step:>7.3f} {tokens:>12.0f} "
              f"{upd / base:>13.2f}x {upd / base / (mu / mus[0]):>14.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
