"""Step time of today's code against an earlier commit's, side by side, at one configuration.

    python scripts/bench_step_speed.py [--baseline b8ce89e | --levers-off] [--spec tiny-collapse]
        [--steps 12] [--jobs 2] [--rounds 2]

The baseline commit's tree is exported (`git archive`) to a temporary directory. Both trees
run the *baseline's* spec (by default `tiny-collapse` as it was at the baseline: same tiny
policy recipe, eval size, rollouts and grader), one campaign of `--steps` steps per cell,
`--jobs` cells at once (one torch thread each, different seeds), as whole processes; the
current tree runs it with its fast path switched on (`rollout.backend: lean`,
`grader.cache: true`) and everything else as the baseline states it. Rounds alternate
between the two trees so drift on a shared machine hits both. `--levers-off` compares, in the
current tree, the current spec with `rollout.backend: hf` and `grader.cache: false` (the
step as it ran before the lean sampler and the verdict cache) against the spec as it is. Prints, per tree, the median
over all steps of each stage of the step (`time` in the trace), and the ratio baseline /
current of the median step. Figures vary from run to run; the ratio is what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("generate", "grade", "update", "eval", "eval_grade", "model", "step")

CELL = r"""
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from harness.runner.cell import CellConfig, CellRunner
cfg = json.loads(Path(sys.argv[1]).read_text())
CellRunner(CellConfig.from_dict(sys.argv[2], cfg), Path(sys.argv[3])).run()
"""

CONFIG = r"""
import json, sys
from harness.spec import expand_cells, load_spec
spec, _ = load_spec(sys.argv[1])
cell = expand_cells(spec)[0]
print(json.dumps({"cell_id": cell.cell_id, "config": cell.config}))
"""

BUILD = r"""
import json, sys
from harness.policy import load_policy
from harness.spec.schema import ModelSpec
load_policy(ModelSpec(**json.loads(sys.argv[1])))
"""


def _python(tree: Path, code: str, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=tree, env={
        **env, "PYTHONPATH": str(tree)}, check=True, capture_output=True, text=True)
    return out.stdout


def _export(commit: str, dest: Path) -> None:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def _round(tree: Path, cell_id: str, cfg: dict, jobs: int, steps: int, work: Path,
           env: dict[str, str]) -> list[dict[str, float]]:
    procs, dirs = [], []
    for j in range(jobs):
        c = json.loads(json.dumps(cfg))
        c["seed"] = j
        c["chain"]["campaigns"], c["chain"]["steps"] = 1, steps
        d = Path(tempfile.mkdtemp(dir=work))
        (d / "config.json").write_text(json.dumps(c))
        dirs.append(d)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CELL, str(d / "config.json"), f"{cell_id}_s{j}", str(d)],
            cwd=tree, env={**env, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"error: a cell of {tree} failed:\n{err[-2000:]}")
    times = []
    for d in dirs:
        for line in (d / "trace.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "step" and r["step"] > 0:
                times.append(r["time"])
    return times


def current_config(old: dict) -> dict:
    """An earlier commit's cell config as today's code reads it, with the fast path on
    (`rollout.backend: lean`, `grader.cache: true`): fields added since keep their old
    meaning, and method options that became `method.params` move there (dropped where the
    method no longer takes them, as the options it ignored then)."""
    sys.path.insert(0, str(ROOT))
    from harness.spec.method import MOVED_TO_PARAMS, registry

    cfg = json.loads(json.dumps(old))
    cfg["rollout"]["backend"] = "lean"
    cfg["grader"]["cache"] = True
    if cfg["model"].get("tiny") is not None:
        cfg["model"]["tiny"].setdefault("warm_defect", 0.0)
    meth = cfg["method"]
    takes = registry("method").get(meth["name"]).Params.model_fields
    for key in MOVED_TO_PARAMS:
        if key in meth and (value := meth.pop(key)) is not None and key in takes:
            meth.setdefault("params", {})[key] = value
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="b8ce89e")
    ap.add_argument("--levers-off", action="store_true",
                    help="baseline = this tree with backend hf and no verdict cache")
    ap.add_argument("--spec", default="tiny-collapse")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        if args.levers_off:
            base = ROOT
            got = json.loads(_python(base, CONFIG, args.spec, env=env))
            cell_id, new_cfg = got["cell_id"], got["config"]
            old_cfg = json.loads(json.dumps(new_cfg))
            old_cfg["rollout"]["backend"] = "hf"
            old_cfg["grader"]["cache"] = False
            args.baseline = "levers off (hf, no verdict cache)"
        else:
            base = Path(tmp) / "baseline"
            base.mkdir()
            _export(args.baseline, base)
            got = json.loads(_python(base, CONFIG, args.spec, env=env))
            cell_id, old_cfg = got["cell_id"], got["config"]
            new_cfg = current_config(old_cfg)
        trees = {"baseline": (base, old_cfg), "current": (ROOT, new_cfg)}
        for name, (tree, cfg) in trees.items():  # build (or find) each tree's tiny policy
            t0 = time.perf_counter()
            _python(tree, BUILD, json.dumps(cfg["model"]), env=env)
            print(f"{name}: tiny policy ready in {time.perf_counter() - t0:.0f} s", flush=True)
        times: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        work = Path(tmp) / "cells"
        work.mkdir()
        for r in range(args.rounds):
            for name, (tree, cfg) in trees.items():
                t0 = time.perf_counter()
                times[name] += _round(tree, cell_id, cfg, args.jobs, args.steps, work, env)
                print(f"round {r + 1}: {name} {time.perf_counter() - t0:.0f} s", flush=True)
    where = "the current" if args.levers_off else f"{args.baseline}'s"
    print(f"\n{args.spec} at {where} configuration, {args.jobs} cells at once, "
          f"{args.steps} steps x {args.rounds} rounds per cell; median seconds per step")
    print(f"{'stage':<12}" + "".join(f"{n:>12}" for n in trees) + f"{'ratio':>9}")
    med = {n: {s: statistics.median(t[s] for t in times[n]) for s in STAGES} for n in trees}
    for s in STAGES:
        a, b = med["baseline"][s], med["current"][s]
        print(f"{s:<12}{a:>12.3f}{b:>12.3f}{a / b if b else float('nan'):>8.2f}x")
    print(f"median step: baseline {med['baseline']['step']:.3f} s, current "
          f"{med['current']['step']:.3f} s: {med['baseline']['step'] / med['current']['step']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
