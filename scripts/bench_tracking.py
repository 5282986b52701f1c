"""Overhead of MLflow logging as a share of step time.

    python scripts/bench_tracking.py [RUN_DIR_OR_TRACE] [--cells N]

Replays a real cell trace (default: the first cell of RUN_DIR; without an argument, a fresh
`harness bench tiny-smoke` run in a temporary directory) as N cells writing at once, through
the tracker `harness bench` uses, into a fresh embedded SQLite store, and reports:

- the bench process's CPU time spent logging per step record: the tracker thread's CPU and
  the executor thread's (`on_event`), measured with thread CPU clocks; and the whole
  process's CPU over the replay (every thread: an upper bound);
- the share of the trace's median step time (`time.step`) that is: the target is <= 2%;
- the wall-clock latency from a record to its batch being committed (not on the cells'
  path: the cells never wait for the tracker);
- one-off costs: opening the store (schema migrations on first use) and the per-cell
  reconciliation at exit.

Each record is flushed on its own (one log_batch per step per cell), the worst case: under
load the tracker batches whatever arrived together.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.runner.trace import read_trace
from harness.tracking import Tracker, checkpoint_file


def source_cell(arg: str | None, tmp: Path) -> Path:
    if arg is None:
        out = tmp / "smoke"
        print("no run given: running `harness bench tiny-smoke` for a real trace ...",
              flush=True)
        subprocess.run([sys.executable, "-m", "harness.cli", "bench", "tiny-smoke", "--out",
                        str(out)], check=True, capture_output=True,
                       env={**os.environ, "HARNESS_MLFLOW": "off"})
        arg = str(out)
    p = Path(arg)
    if p.is_file():
        return p.parent
    cells = sorted(c.parent for c in p.glob("cells/*/trace.jsonl"))
    if not cells:
        sys.exit(f"error: no cell trace under {p}")
    return cells[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", help="a run directory or a trace.jsonl")
    ap.add_argument("--cells", type=int, default=4, help="cells replayed at once")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    try:
        src = source_cell(args.run, tmp)
        records = read_trace(src / "trace.jsonl")
        steps = [r for r in records if r["type"] == "step"]
        step_times = [r["time"]["step"] for r in steps if r["step"] > 0]
        ckpt_sizes = [p.stat().st_size for p in (src / "checkpoints").glob("*.safetensors")]
        ckpt_bytes = max(ckpt_sizes) if ckpt_sizes else 0

        run = tmp / "run"
        (run / "cells").mkdir(parents=True)
        for name in ("resolved_spec.json", "environment.json"):
            if (src.parent.parent / name).exists():
                shutil.copy(src.parent.parent / name, run / name)
        doc = json.loads((src / "config.json").read_text())
        cells = {}
        for i in range(args.cells):
            cid = f"{doc['cell_id']}_replay{i}"
            d = run / "cells" / cid
            d.mkdir()
            (d / "config.json").write_text(json.dumps({**doc, "cell_id": cid}))
            cells[cid] = d

        tracker = Tracker(run, running=cells)
        t0 = time.perf_counter()
        assert tracker.start()
        tracker.flush(600)
        open_wall = time.perf_counter() - t0
        open_cpu = tracker.stats["connect_cpu_s"]

        main_cpu = 0.0
        latencies = []
        cpu0, proc0 = tracker.stats["cpu_s"], time.process_time()
        for cid in cells:
            tracker.on_event(cid, {"event": "start", "records": []})
        for rec in records:
            for cid, d in cells.items():
                if rec["type"] == "campaign" and ckpt_bytes:  # the cell saves, then records
                    for kind in ("last", "peak"):
                        f = checkpoint_file(d, f"c{rec['index']}:{kind}")
                        f.parent.mkdir(exist_ok=True)
                        f.write_bytes(os.urandom(ckpt_bytes))
                with open(d / "trace.jsonl", "a") as f:
                    f.write(json.dumps(rec, sort_keys=True) + "\n")
                t = time.perf_counter()
                c = time.thread_time()
                tracker.on_event(cid, {"event": "record", "record": rec})
                main_cpu += time.thread_time() - c
                tracker.flush(600)
                latencies.append(time.perf_counter() - t)
        steady_cpu = tracker.stats["cpu_s"] - cpu0
        proc_cpu = time.process_time() - proc0
        r0 = tracker.stats["reconcile_cpu_s"]
        for cid in cells:
            tracker.on_event(cid, {"event": "exit", "returncode": 0, "error": None})
        summary = tracker.close()
        reconcile_cpu = tracker.stats["reconcile_cpu_s"] - r0

        n_steps = len(steps) * len(cells)
        step_s = statistics.median(step_times)
        per_step = (steady_cpu + main_cpu) / n_steps
        print(f"trace: {src / 'trace.jsonl'} ({len(records)} records, {len(steps)} steps, "
              f"median step time {step_s:.3f} s); replayed as {len(cells)} cells")
        print(f"store: {summary.uri} (logged ok: {summary.ok}); "
              f"{tracker.stats['batches']:.0f} batches, {tracker.stats['points']:.0f} points")
        print(f"per step record: tracker thread CPU {1e3 * steady_cpu / n_steps:.2f} ms, "
              f"executor thread (on_event) {1e6 * main_cpu / n_steps:.1f} us, whole process "
              f"CPU {1e3 * proc_cpu / n_steps:.2f} ms (all threads, includes this script)")
        print(f"share of step time: {100 * per_step / step_s:.3f}% (tracker + on_event), "
              f"{100 * proc_cpu / n_steps / step_s:.3f}% (whole process); target <= 2%")
        print(f"latency record -> committed: median {1e3 * statistics.median(latencies):.1f} "
              f"ms, max {1e3 * max(latencies):.1f} ms (wall; the cells never wait for it)")
        print(f"one-off: open the store {open_wall:.2f} s wall / {open_cpu:.2f} s CPU "
              f"(import mlflow, create the store); reconcile at exit {1e3 * reconcile_cpu / len(cells):.0f} "
              f"ms CPU per cell; checkpoints {ckpt_bytes / 2**20:.1f} MiB each (hard-linked)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
