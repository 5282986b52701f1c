"""Summarise the rise-and-collapse figure of a finished (or partial) `harness bench` run.

    python scripts/calibrate_collapse.py RUN_DIR [--rise 0.05] [--fall 0.10] [--curves]

Reads every `cells/*/trace.jsonl` under RUN_DIR and prints, per cell and campaign, the eval
pass@1 at step 0 (start), its peak and first peak step, and the end; a campaign shows
rise-then-collapse when peak - start >= --rise and peak - end >= --fall. The last line is
the share of such campaigns over all finished campaigns (the figure `tiny-collapse` is
calibrated on). `--curves` also prints each campaign's per-step eval pass@1.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def campaigns_of(trace: Path) -> list[list[float]]:
    """Per finished campaign, its eval pass@1 curve (step 0 first)."""
    curves: dict[int, list[float]] = {}
    done: list[int] = []
    for line in trace.read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        if r["type"] == "step":
            curves.setdefault(r["campaign"], []).append(r["eval_pass1"])
        elif r["type"] == "campaign":
            done.append(r.get("campaign", r.get("index")))
    return [curves[k] for k in sorted(done)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--rise", type=float, default=0.05)
    ap.add_argument("--fall", type=float, default=0.10)
    ap.add_argument("--curves", action="store_true")
    args = ap.parse_args()

    hits = total = 0
    print(f"{'cell':<44} {'c':>2} {'start':>6} {'peak':>6} {'@':>3} {'end':>6}  rise&fall")
    for trace in sorted(args.run_dir.glob("cells/*/trace.jsonl")):
        for k, curve in enumerate(campaigns_of(trace)):
            start, end = curve[0], curve[-1]
            peak = max(curve)
            peak_step = curve.index(peak)
            ok = peak - start >= args.rise - 1e-9 and peak - end >= args.fall - 1e-9
            hits += ok
            total += 1
            print(f"{trace.parent.name[:44]:<44} {k:>2} {start:6.3f} {peak:6.3f} "
                  f"{peak_step:>3} {end:6.3f}  {'yes' if ok else 'no'}")
            if args.curves:
                print("    " + " ".join(f"{v:.2f}" for v in curve))
    share = hits / total if total else float("nan")
    print(f"rise >= {args.rise:.2f} and fall >= {args.fall:.2f}: {hits}/{total} campaigns "
          f"({share:.0%})")


if __name__ == "__main__":
    main()
