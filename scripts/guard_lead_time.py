"""The collapse guard run offline on recorded traces: trigger step, collapse onset, lead time.

    python scripts/guard_lead_time.py RUN_DIR [RUN_DIR ...] [--controller naive]
        [--threshold 0.20] [--set kl_jump=0.3 --set entropy_frac=none ...]

Reads `cells/*/trace.jsonl` of each run (cells whose config's controller is --controller,
default `naive`), runs `collapse_guard.guard_report` on every finished campaign with the given
guard params (defaults otherwise) and collapse threshold, and prints one line per campaign and
the pooled summary: collapsed campaigns, caught (fired at or before the onset), missed, false
alarms (fired, no collapse) and the mean lead time in steps. No training: this is how to tune
the guard's thresholds on naive traces before running it as a controller.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.controllers.collapse_guard import guard_report
from harness.runner.trace import read_trace


def _value(text: str) -> Any:
    if text.lower() in ("none", "null", "off"):
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def campaigns_of(trace: Path) -> list[list[dict[str, Any]]]:
    """Per finished campaign, its step records (step 0 first)."""
    records = read_trace(trace)
    finished = {r["index"] for r in records if r["type"] == "campaign"}
    by: dict[int, list[dict[str, Any]]] = {}
    for r in records:
        if r["type"] == "step" and r["campaign"] in finished:
            by.setdefault(r["campaign"], []).append(r)
    return [by[k] for k in sorted(by)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dirs", type=Path, nargs="+")
    ap.add_argument("--controller", default="naive")
    ap.add_argument("--threshold", type=float, default=0.20)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a guard parameter (see GuardParams); `none` turns a signal off")
    args = ap.parse_args()
    params = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}

    total: dict[str, Any] = {"campaigns": 0, "collapsed": 0, "caught": 0, "missed": 0,
                             "false_alarms": 0, "leads": []}
    print(f"{'cell':<44} {'c':>2} {'fired':>5} {'collapsed':>9} {'onset':>5} {'lead':>5}  reason")
    for run in args.run_dirs:
        for cell in sorted(run.glob("cells/*/")):
            cfg = json.loads((cell / "config.json").read_text())
            name = cfg.get("config", cfg).get("controller", {}).get("name")
            if name != args.controller or not (cell / "trace.jsonl").exists():
                continue
            rep = guard_report(campaigns_of(cell / "trace.jsonl"), params, args.threshold)
            for row in rep["campaigns"]:
                print(f"{cell.name[:44]:<44} {row['campaign']:>2} "
                      f"{'-' if row['trigger_step'] is None else row['trigger_step']:>5} "
                      f"{'yes' if row['collapsed'] else 'no':>9} "
                      f"{'-' if row['onset'] is None else row['onset']:>5} "
                      f"{'-' if row['lead_time'] is None else row['lead_time']:>5}  "
                      f"{(row['reason'] or '')[:60]}")
                if row["lead_time"] is not None:
                    total["leads"].append(row["lead_time"])
            for key in ("campaigns", "collapsed", "caught", "missed", "false_alarms"):
                total[key] += rep["summary"][key]
    leads = total.pop("leads")
    mean = f"{sum(leads) / len(leads):.1f}" if leads else "-"
    print(f"threshold {args.threshold}, params {params or 'defaults'}: "
          + ", ".join(f"{k} {v}" for k, v in total.items()) + f", mean lead time {mean} steps")


if __name__ == "__main__":
    main()
