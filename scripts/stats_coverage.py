"""How honest is the paired comparison at few seeds? Simulate per-seed differences with a
known true mean, run `harness.stats.paired_comparison` on each simulated study, and print
how often the 95% paired bootstrap CI covers the true difference and how often each verdict
fires.

    python scripts/stats_coverage.py [--sims 2000] [--resamples 2000] [--n 3 5 6 10]

Scenarios (per-seed difference d_s = delta + noise, noise sd 0.05 pass@1):
  normal      Gaussian noise
  skewed      centred log-normal noise (sigma 1; skewness about 6)
  heavy       Student t noise with 3 degrees of freedom
each with delta = 0.05 (a true improvement of one noise sd) and delta = 0 (no effect: the
rate of `improves` + `regresses` is the false-verdict rate). The library's CI defaults to
10,000 resamples; the default here (2,000) keeps the run near a minute on 2 cores, and
changes the CI's Monte-Carlo error, not its coverage.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from harness.stats import VERDICTS, paired_comparison

SD = 0.05


def _normal(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    return rng.normal(0.0, SD, size)


def _skewed(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    sigma = 1.0
    x = rng.lognormal(0.0, sigma, size)
    mean, sd = np.exp(sigma**2 / 2), np.sqrt((np.exp(sigma**2) - 1) * np.exp(sigma**2))
    return (x - mean) / sd * SD


def _heavy(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    return rng.standard_t(3, size) / np.sqrt(3.0) * SD


NOISE: dict[str, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]] = {
    "normal": _normal, "skewed": _skewed, "heavy": _heavy}
SCENARIOS = [("normal", 0.05), ("skewed", 0.05), ("heavy", 0.05), ("normal", 0.0),
             ("skewed", 0.0)]


def simulate(noise: str, delta: float, n: int, sims: int, resamples: int, seed: int
             ) -> dict[str, float]:
    rng = np.random.default_rng([seed, n, int(delta * 1e6), list(NOISE).index(noise)])
    d = delta + NOISE[noise](rng, (sims, n))
    covered = 0
    counts = dict.fromkeys(VERDICTS, 0)
    base = dict.fromkeys(range(n), 0.0)
    for i in range(sims):
        r = paired_comparison(dict(enumerate(d[i])), base, resamples=resamples, seed=i)
        assert r.ci is not None
        covered += r.ci[0] <= delta <= r.ci[1]
        counts[r.verdict] += 1
    return {"coverage": covered / sims, **{k: v / sims for k, v in counts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=2000, help="simulated studies per cell")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples per CI")
    ap.add_argument("--n", type=int, nargs="+", default=[3, 5, 6, 10], help="seeds per study")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.time()
    head = (f"{'noise':<7} {'delta':>5} {'n':>3} {'CI cover':>8}  "
            + "  ".join(f"{v:>13}" for v in VERDICTS))
    print(f"95% paired bootstrap CI, {args.sims} simulated studies per row, "
          f"{args.resamples} resamples; noise sd {SD}")
    print(head)
    print("-" * len(head))
    for noise, delta in SCENARIOS:
        for n in args.n:
            r = simulate(noise, delta, n, args.sims, args.resamples, args.seed)
            print(f"{noise:<7} {delta:>5.2f} {n:>3} {r['coverage']:>8.1%}  "
                  + "  ".join(f"{r[v]:>13.1%}" for v in VERDICTS))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
