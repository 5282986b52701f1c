"""Calibrate the CPU testbed: sweep settings of a tiny spec and measure the study's signature.

    python scripts/calibrate_collapse.py sweep [--spec tiny-collapse] [--seeds 0-5]
        [--set KEY=V1,V2 ...] [--campaigns N] [--jobs 2] [--out DIR] [--curves]
    python scripts/calibrate_collapse.py summary RUN_DIR [--curves]

`sweep` runs the spec's first cell (its model, method and controller) for every seed and
every combination of the `--set` values (dotted keys into the cell config, e.g.
`optim.lr=5e-4,1e-3 rollout.temperature=1.0,1.3 model.tiny.warm_steps=300`; values are
YAML), through the real cell runner, `--jobs` cells at once with one torch thread each.
Each run keeps its trace under `--out` (default `runs/calibration/`), keyed by the hash of
its config, so a sweep that is stopped and started again skips what it has. `summary`
reads the traces of a `harness bench` run directory instead.

Per setting it prints: campaigns with the study's signature (eval pass@1 peaks at least
`--rise` above the campaign's start, and its last step ends at least `--fall` below the
peak), mean start / peak / peak step / end, the largest per-step standard error of eval
pass@1 (sqrt(p (1 - p) / n), n = eval samples), the median step time and the wall time.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

RISE, FALL = 0.05, 0.10


# --------------------------------------------------------------------------- reading
def campaigns_of(trace: Path) -> list[list[dict[str, Any]]]:
    """The step records of every finished campaign of a trace (step 0 first)."""
    steps: dict[int, list[dict[str, Any]]] = {}
    done: list[int] = []
    for line in trace.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["type"] == "step":
            steps.setdefault(r["campaign"], []).append(r)
        elif r["type"] == "campaign":
            done.append(r["index"])
    return [steps[k] for k in sorted(done)]


def signature(curve: list[float], rise: float = RISE, fall: float = FALL) -> bool:
    """The study's signature: peak >= start + rise and last step <= peak - fall."""
    peak = max(curve)
    return peak - curve[0] >= rise - 1e-9 and peak - curve[-1] >= fall - 1e-9


def standard_error(rec: dict[str, Any]) -> float:
    p, n = rec["eval_pass1"], rec["eval_samples"]
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def summarise(traces: list[Path], rise: float, fall: float, curves: bool
              ) -> dict[str, Any]:
    rows = []
    for trace in traces:
        for k, recs in enumerate(campaigns_of(trace)):
            curve = [r["eval_pass1"] for r in recs]
            peak = max(curve)
            rows.append({"trace": trace, "campaign": k, "curve": curve, "start": curve[0],
                         "peak": peak, "peak_step": curve.index(peak), "end": curve[-1],
                         "signature": signature(curve, rise, fall),
                         "se": max(standard_error(r) for r in recs),
                         "steps": [r["time"]["step"] for r in recs if r["step"] > 0]})
            if curves:
                print(f"    {trace.parent.name[:40]} c{k}: "
                      + " ".join(f"{v:.2f}" for v in curve)
                      + ("  <- signature" if rows[-1]["signature"] else ""))
    if not rows:
        return {"campaigns": 0}
    steps = [t for r in rows for t in r["steps"]]
    return {
        "campaigns": len(rows), "signature": sum(r["signature"] for r in rows),
        "start": statistics.mean(r["start"] for r in rows),
        "peak": statistics.mean(r["peak"] for r in rows),
        "peak_step": statistics.mean(r["peak_step"] for r in rows),
        "end": statistics.mean(r["end"] for r in rows),
        "max_se": max(r["se"] for r in rows),
        "step_s": statistics.median(steps) if steps else float("nan"),
    }


def line(label: str, s: dict[str, Any], wall: float | None = None) -> str:
    if not s["campaigns"]:
        return f"{label}: no finished campaign"
    out = (f"{label}: signature {s['signature']}/{s['campaigns']} "
           f"({s['signature'] / s['campaigns']:.0%}); start {s['start']:.3f} peak "
           f"{s['peak']:.3f} @ {s['peak_step']:.1f} end {s['end']:.3f}; max SE "
           f"{100 * s['max_se']:.1f} pts; step {s['step_s']:.2f} s")
    return out + (f"; wall {wall:.0f} s" if wall is not None else "")


# --------------------------------------------------------------------------- sweeping
def _set(cfg: dict[str, Any], key: str, value: Any) -> None:
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _resolve(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config with every section validated and its defaults filled (errors: SystemExit)."""
    from pydantic import ValidationError

    from harness.runner.cell import CellConfig

    try:
        parsed = CellConfig.from_dict("calibration", cfg)
    except (ValidationError, TypeError) as e:
        raise SystemExit(f"error: bad --set value: {e}") from None
    out = dict(cfg)
    for name in ("model", "method", "controller", "chain", "tasks", "eval", "rollout", "optim",
                 "grader", "resources"):
        out[name] = getattr(parsed, name).model_dump(mode="json")
    return out


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def _run_one(job: tuple[str, dict[str, Any], str]) -> tuple[str, float]:
    """Run (or finish) one cell in `cell_dir`; returns (cell_dir, seconds)."""
    cell_id, cfg, cell_dir = job
    import torch

    torch.set_num_threads(1)
    from harness.rundir import write_json
    from harness.runner.cell import CellConfig, CellRunner

    path = Path(cell_dir)
    path.mkdir(parents=True, exist_ok=True)
    write_json(path / "config.json", cfg)
    t0 = time.perf_counter()
    CellRunner(CellConfig.from_dict(cell_id, cfg), path).run()
    return cell_dir, time.perf_counter() - t0


def sweep(args: argparse.Namespace) -> int:
    from harness.spec import expand_cells, load_spec

    spec, _ = load_spec(args.spec)
    base = expand_cells(spec)[0]
    axes = [(key, [yaml.safe_load(v) for v in values.split(",")])
            for key, _, values in (s.partition("=") for s in args.set)]
    settings = [dict(zip([k for k, _ in axes], combo, strict=True))
                for combo in itertools.product(*[v for _, v in axes])] or [{}]
    out = Path(args.out)
    jobs, by_setting = [], []
    for setting in settings:
        dirs = []
        for seed in _seeds(args.seeds):
            cfg = copy.deepcopy(base.config)
            cfg["seed"] = seed
            if args.campaigns:
                cfg["chain"]["campaigns"] = args.campaigns
            for key, value in setting.items():
                _set(cfg, key, value)
            cfg = _resolve(cfg)
            digest = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
            cell_dir = out / digest
            dirs.append(cell_dir)
            if not (cell_dir / "result.json").is_file():
                jobs.append((f"calibration_s{seed}_{digest}", cfg, str(cell_dir)))
        by_setting.append((setting, dirs))
    print(f"{len(settings)} setting(s) x {len(_seeds(args.seeds))} seed(s); {len(jobs)} "
          f"cell(s) to run, {args.jobs} at once", flush=True)
    walls: dict[str, float] = {}
    if jobs:
        env_threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        os.environ.update(env_threads)
        with ProcessPoolExecutor(args.jobs) as pool:
            for cell_dir, seconds in pool.map(_run_one, jobs):
                walls[cell_dir] = seconds
    for setting, dirs in by_setting:
        label = " ".join(f"{k}={v}" for k, v in setting.items()) or "(spec as is)"
        s = summarise([d / "trace.jsonl" for d in dirs], args.rise, args.fall, args.curves)
        wall = sum(walls.get(str(d), 0.0) for d in dirs) or None
        print(line(label, s, wall), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sw = sub.add_parser("sweep", help="run settings x seeds and summarise them")
    sw.add_argument("--spec", default="tiny-collapse")
    sw.add_argument("--seeds", default="0-5", help="e.g. 0-5 or 100-105 or 0,3,7")
    sw.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2")
    sw.add_argument("--campaigns", type=int, default=None)
    sw.add_argument("--jobs", type=int, default=2)
    sw.add_argument("--out", default="runs/calibration")
    for p in (sw, sub.add_parser("summary", help="summarise a harness bench run")):
        p.add_argument("--rise", type=float, default=RISE)
        p.add_argument("--fall", type=float, default=FALL)
        p.add_argument("--curves", action="store_true")
    sub.choices["summary"].add_argument("run_dir", type=Path)
    args = ap.parse_args()
    if args.cmd == "sweep":
        return sweep(args)
    traces = sorted(args.run_dir.glob("cells/*/trace.jsonl"))
    print(line(str(args.run_dir), summarise(traces, args.rise, args.fall, args.curves)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
