"""Paired comparisons by seed, and the verdict rule that is honest about few seeds.

A comparison pairs a candidate arm with a baseline arm on the seeds both finished:
d_s = metric(candidate, s) - metric(baseline, s). Reported (docs/design.md section 2,
"Statistics"): the mean of d, a paired bootstrap percentile CI (>= 10,000 resamples, seeded,
so the same numbers always give the same CI), the seeds where the candidate is better
(`wins`; d_s > 0 for a metric where higher is better), and an exact sign-flip permutation
p-value (two-sided; all 2^n sign patterns for n <= 20, seeded Monte Carlo above).

The verdict rule (alpha = 0.05 and margin = 0.02 by default; "better" is d > 0 for pass@1 and
mean peak/end, d < 0 for mean gap and collapse rate):

- Under H0 "no effect" (d_s symmetric about 0) the sign-flip test is exact at any n; the
  bootstrap CI is not: at 3-5 seeds it covers the true difference far less often than 95%
  (`scripts/stats_coverage.py` measures it). So no verdict rests on the CI alone.
- `min_seeds` is the smallest n whose smallest achievable two-sided p, 2 / 2^n, is below
  alpha: 6 at alpha = 0.05 (2/32 = 0.0625 at n = 5). Below it every verdict is
  `inconclusive`: no test of that size can reject anything.
- `improves`: n >= min_seeds, the CI lies entirely on the better side of 0, and p < alpha.
  `regresses`: the same on the worse side.
- `no_difference`: n >= min_seeds, the CI lies inside [-margin, +margin] and an equivalence
  test rejects "|delta| >= margin" (two one-sided sign-flip tests on d + margin and
  d - margin, each at alpha; `p_equivalence` is the larger of their p-values).
- otherwise `inconclusive` (the reason says which condition failed).

A credible effect inside the margin (the CI on one side of 0 and within +-margin, p < alpha)
is `improves` or `regresses`, not `no_difference`; a CI on one side of 0 that is not credible
(p >= alpha) can still be `no_difference` when it lies within the margin and the equivalence
test rejects. Seeds where d = 0 (ties) stay in n, but their signs cannot flip: with t ties
the smallest two-sided p is 2 / 2^(n - t), so at 6 seeds one tie already rules out a
verdict of improves or regresses (the reason says so).

How a verdict meets a comparison's `expect` (`expectation_outcome`):

- `improves`: pass on improves; fail on regresses or no_difference; else inconclusive.
- `no_difference`: pass on no_difference; fail on improves or regresses; else inconclusive.
- `no_worse`: fail only on a credible regression (`regresses`). When the verdict is
  inconclusive but the whole CI lies on the worse side (every resample says worse, yet there
  are too few seeds or p is too large to be credible), the outcome is inconclusive rather
  than pass, so a gate with 3-5 seeds can still flag a likely regression without failing it.
  Otherwise pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Verdict = Literal["improves", "regresses", "no_difference", "inconclusive"]
Outcome = Literal["pass", "fail", "inconclusive"]
Expect = Literal["improves", "no_worse", "no_difference"]
VERDICTS: tuple[Verdict, ...] = ("improves", "regresses", "no_difference", "inconclusive")

ALPHA = 0.05
MARGIN = 0.02
RESAMPLES = 10_000
PERMUTATIONS = 100_000
EXACT_MAX_N = 20
SEED = 0

# Bootstrap resamples drawn per chunk: bounds memory at about 8 * _CHUNK floats.
_CHUNK = 2_000_000


@dataclass(frozen=True)
class PairedComparison:
    """A candidate vs a baseline, paired by seed. `diffs` are candidate - baseline per seed
    (in `seeds` order); `mean_diff`, `ci`, `p_value` are None when no seed is common."""

    n: int
    seeds: tuple[int, ...]
    diffs: tuple[float, ...]
    mean_diff: float | None
    ci: tuple[float, float] | None
    wins: int
    losses: int
    ties: int
    p_value: float | None
    p_equivalence: float | None
    exact: bool
    verdict: Verdict
    reason: str
    higher_is_better: bool
    alpha: float
    margin: float
    min_seeds: int
    resamples: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"], d["diffs"] = list(self.seeds), list(self.diffs)
        d["ci"] = None if self.ci is None else list(self.ci)
        return d


# --------------------------------------------------------------------------- pieces
def pair_by_seed(candidate: Mapping[int, float | None], baseline: Mapping[int, float | None]
                 ) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The seeds both sides have a finite value for (sorted), and the two value arrays."""
    seeds = sorted(s for s in candidate.keys() & baseline.keys()
                   if _finite(candidate[s]) and _finite(baseline[s]))
    cand = np.array([float(candidate[s]) for s in seeds], dtype=float)  # type: ignore[arg-type]
    base = np.array([float(baseline[s]) for s in seeds], dtype=float)  # type: ignore[arg-type]
    return seeds, cand, base


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def bootstrap_ci(d: np.ndarray, *, confidence: float = 1 - ALPHA, resamples: int = RESAMPLES,
                 seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(d): resample the n paired differences with replacement
    `resamples` times (a seeded generator: deterministic), take the (1-c)/2 and (1+c)/2
    quantiles of the resampled means. d: shape (n,), n >= 1."""
    d = np.asarray(d, dtype=float)
    n = d.size
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one difference")
    rng = np.random.default_rng(seed)
    per = max(1, _CHUNK // n)
    means = np.empty(resamples)
    for start in range(0, resamples, per):
        stop = min(resamples, start + per)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail])
    return float(lo), float(hi)


def min_seeds_for(alpha: float = ALPHA) -> int:
    """Smallest n whose smallest two-sided sign-flip p-value, 2 / 2^n, is below alpha."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = 1
    while 2.0 / 2**n >= alpha:
        n += 1
    return n


def _exact_sums(d: np.ndarray) -> np.ndarray:
    """sum(eps_s * d_s) for all 2^n sign patterns eps (built by doubling: 2^n floats)."""
    sums = np.zeros(1)
    for x in d:
        sums = np.concatenate([sums + x, sums - x])
    return sums


def sign_flip_p(d: np.ndarray, *, alternative: Literal["two-sided", "greater", "less"] =
                "two-sided", exact_max_n: int = EXACT_MAX_N, permutations: int = PERMUTATIONS,
                seed: int = SEED) -> float:
    """Sign-flip permutation p-value of mean(d) (H0: each d_s is symmetric about 0).

    Exact for n <= exact_max_n: the fraction of all 2^n sign patterns whose statistic is at
    least as extreme as the observed one (two-sided: |mean|; greater: mean >=; less:
    mean <=). Above, seeded Monte Carlo with `permutations` random patterns and the usual
    +1 correction, (1 + hits) / (1 + permutations)."""
    d = np.asarray(d, dtype=float)
    n = d.size
    if n == 0:
        raise ValueError("sign_flip_p needs at least one difference")
    obs = float(d.sum())
    # Patterns equal to the observed one up to rounding must count as "as extreme".
    tol = 1e-9 * float(np.abs(d).sum())
    if n <= exact_max_n:
        return _tail(_exact_sums(d), obs, tol, alternative) / 2**n
    rng = np.random.default_rng(seed)
    hits, per = 0.0, max(1, _CHUNK // n)
    for start in range(0, permutations, per):
        k = min(permutations, start + per) - start
        signs = rng.integers(0, 2, size=(k, n), dtype=np.int8) * 2 - 1
        hits += _tail(signs @ d, obs, tol, alternative)
    return (1 + hits) / (1 + permutations)


def _tail(sums: np.ndarray, obs: float, tol: float, alternative: str) -> float:
    if alternative == "two-sided":
        return float(np.count_nonzero(np.abs(sums) >= abs(obs) - tol))
    if alternative == "greater":
        return float(np.count_nonzero(sums >= obs - tol))
    if alternative == "less":
        return float(np.count_nonzero(sums <= obs + tol))
    raise ValueError(f"unknown alternative {alternative!r}")


# --------------------------------------------------------------------------- the rule
def decide(n: int, ci: tuple[float, float] | None, p: float | None, p_equiv: float | None, *,
           alpha: float = ALPHA, margin: float = MARGIN, min_seeds: int | None = None,
           higher_is_better: bool = True, ties: int = 0) -> tuple[Verdict, str]:
    """The verdict rule of the module docstring: (verdict, one-line reason)."""
    need = min_seeds_for(alpha) if min_seeds is None else min_seeds
    if n == 0 or ci is None or p is None:
        return "inconclusive", "no seed finished on both sides"
    lo, hi = ci
    ci_txt = f"CI [{lo:+.3f}, {hi:+.3f}]"
    if n < need:
        return "inconclusive", (
            f"{n} seed{'s' if n != 1 else ''} < {need} needed (the smallest two-sided "
            f"sign-flip p at n={n} is {2 / 2**n:.3g}, alpha {alpha:g})")
    better_side = lo > 0 if higher_is_better else hi < 0
    worse_side = hi < 0 if higher_is_better else lo > 0
    if (better_side or worse_side) and p < alpha:  # a credible effect, even inside the margin
        word: Verdict = "improves" if better_side else "regresses"
        return word, f"{ci_txt} excludes 0 and sign-flip p {p:.3g} < {alpha:g}"
    within = -margin <= lo and hi <= margin
    if within and p_equiv is not None and p_equiv < alpha:
        return "no_difference", (f"{ci_txt} within +-{margin:g} and equivalence p "
                                 f"{p_equiv:.3g} < {alpha:g}")
    if better_side or worse_side:
        why = _few_patterns(ties, n, alpha) or "the bootstrap CI undercovers at few seeds"
        return "inconclusive", (f"{ci_txt} excludes 0 but sign-flip p {p:.3g} >= {alpha:g} "
                                f"({why})")
    if within:
        return "inconclusive", (f"{ci_txt} within +-{margin:g} but equivalence p "
                                f"{p_equiv:.3g} >= {alpha:g}")
    return "inconclusive", (f"{ci_txt} includes 0 and reaches beyond the margin +-{margin:g} "
                            f"(p {p:.3g})")


def _few_patterns(ties: int, n: int, alpha: float) -> str:
    """Why p cannot be below alpha when seeds tie (d = 0): a tie's sign cannot flip, so only
    2^(n - ties) sign patterns differ and the smallest two-sided p is 2 / 2^(n - ties); ''
    when the ties leave a p below alpha possible."""
    if not ties or 2 / 2 ** (n - ties) < alpha:
        return ""
    return (f"{ties} of {n} seeds tie, so the smallest sign-flip p is "
            f"{2 / 2 ** (n - ties):.3g}")


def paired_comparison(candidate: Mapping[int, float | None], baseline: Mapping[int, float | None],
                      *, higher_is_better: bool = True, alpha: float = ALPHA,
                      margin: float = MARGIN, min_seeds: int | None = None,
                      resamples: int = RESAMPLES, permutations: int = PERMUTATIONS,
                      exact_max_n: int = EXACT_MAX_N, seed: int = SEED) -> PairedComparison:
    """Compare per-seed values {seed: value} of a candidate and a baseline, paired on their
    common seeds (values that are None or not finite are dropped). Deterministic: the
    bootstrap and any Monte Carlo permutations draw from generators seeded with `seed`."""
    if resamples < 1 or permutations < 1:
        raise ValueError("resamples and permutations must be positive")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    need = min_seeds_for(alpha) if min_seeds is None else min_seeds
    seeds, cand, base = pair_by_seed(candidate, baseline)
    d = cand - base
    n = int(d.size)
    better = d > 0 if higher_is_better else d < 0
    worse = d < 0 if higher_is_better else d > 0
    mean = ci = p = p_equiv = None
    if n:
        mean = float(d.mean())
        ci = bootstrap_ci(d, confidence=1 - alpha, resamples=resamples, seed=seed)
        kw = {"exact_max_n": exact_max_n, "permutations": permutations, "seed": seed}
        p = sign_flip_p(d, **kw)  # type: ignore[arg-type]
        # Equivalence (two one-sided tests): reject delta <= -margin and delta >= +margin.
        p_equiv = max(sign_flip_p(d + margin, alternative="greater", **kw),  # type: ignore[arg-type]
                      sign_flip_p(d - margin, alternative="less", **kw))  # type: ignore[arg-type]
    verdict, reason = decide(n, ci, p, p_equiv, alpha=alpha, margin=margin, min_seeds=need,
                             higher_is_better=higher_is_better,
                             ties=int(n - better.sum() - worse.sum()))
    return PairedComparison(
        n=n, seeds=tuple(seeds), diffs=tuple(float(x) for x in d), mean_diff=mean, ci=ci,
        wins=int(better.sum()), losses=int(worse.sum()), ties=int(n - better.sum() - worse.sum()),
        p_value=p, p_equivalence=p_equiv, exact=n <= exact_max_n, verdict=verdict,
        reason=reason, higher_is_better=higher_is_better, alpha=alpha, margin=margin,
        min_seeds=need, resamples=resamples)


def ci_label(rows: Sequence[Mapping[str, Any]]) -> str:
    """The CI column's header for comparison rows: the CI's level is 1 - alpha (`ci_level`;
    95% at the default alpha, and for rows written before the field existed)."""
    level = rows[0].get("ci_level", 0.95) if rows else 0.95
    return f"{100 * level:.3g}% CI"


def expectation_outcome(result: PairedComparison, expect: Expect) -> tuple[Outcome, str]:
    """Whether a verdict meets a comparison's `expect` (module docstring): (outcome, why)."""
    v = result.verdict
    if expect == "improves":
        if v == "improves":
            return "pass", "improves as expected"
        if v in ("regresses", "no_difference"):
            return "fail", f"expected improves, found {v}"
        return "inconclusive", "expected improves; not credible either way"
    if expect == "no_difference":
        if v == "no_difference":
            return "pass", "equivalent as expected"
        if v in ("improves", "regresses"):
            return "fail", f"expected no_difference, found {v}"
        return "inconclusive", "expected no_difference; not credible either way"
    if expect == "no_worse":
        if result.n == 0:  # nothing to hold: no seed finished on both sides
            return "inconclusive", "expected no_worse; no paired seed to check it on"
        if v == "regresses":
            return "fail", "expected no_worse, found a credible regression"
        ci = result.ci
        if v == "inconclusive" and ci is not None and (
                ci[1] < 0 if result.higher_is_better else ci[0] > 0):
            return "inconclusive", ("expected no_worse; the CI is all on the worse side, not "
                                    "yet credible")
        return "pass", "no_worse holds: no credible regression"
    raise ValueError(f"unknown expect {expect!r}")
