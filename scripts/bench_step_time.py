"""Per-step time split of a cell on the built-in tiny policy, and the harness's overhead.

    python scripts/bench_step_time.py [SPEC] [--steps N]

Runs the first cell of SPEC (default tiny-smoke) with one campaign of N steps in a temporary
run directory and prints, per step, the mean seconds in: the rollout stage (of which inside
the model's generate), grading, the update, eval (of which grading), and the share of the step
spent outside the model (tokenisation, sandboxed grading, batching, trace writing). Target:
harness overhead <= 15% of step time. Timings drift between runs on a shared machine; the
shares are what to compare.
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec, _ = load_spec(args.spec)
    cell = expand_cells(spec)[0]
    cfg = dict(cell.config, chain=dict(cell.config["chain"], campaigns=1, steps=args.steps))
    with tempfile.TemporaryDirectory() as d:
        runner = CellRunner(CellConfig.from_dict(cell.cell_id, cfg), Path(d))
        runner.run()
        steps = [r for r in read_trace(Path(d) / "trace.jsonl")
                 if r["type"] == "step" and r["step"] > 0]
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


if __name__ == "__main__":
    sys.exit(main())
