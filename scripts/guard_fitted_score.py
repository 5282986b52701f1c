"""Try a small fitted score as the collapse guard, scored out of fold (docs/guard.md).

    python scripts/guard_fitted_score.py [FIXTURE.jsonl.gz | RUN ...] [--max-false-alarms 0.1]

The guard's rules (`harness guard tune`) fire when one or two signals cross thresholds. This
script tries the other combination the guard's issue names, a fitted score: a logistic
regression over 13 per-step features that a running campaign knows at step t (eval pass@1
against its start, its running peak and the previous step; train reward and its gap to eval;
log entropy against step 1; kl_to_ref and its one-step change; the log-prob/advantage
covariance now and its running maximum; the zero-variance share; the start value; t). The
positives are the steps of signature campaigns at least `MIN_LEAD` steps before the onset,
the negatives every step of the other campaigns; classes are balanced. The guard fires at the
first step whose score exceeds a threshold, chosen on the training folds as the one that
catches most signature campaigns with false alarms on at most `--max-false-alarms` of the
others (the issue's objective). Leave one seed out: each seed's campaigns are scored by a model
and threshold fitted on the other seeds, so every figure printed is out of fold.

Input: the calibration fixture (default, `tests/fixtures/guard/tiny-guard-calibration.jsonl.gz`,
made by `scripts/guard_fixture.py`) or run directories (their naive-controller cells). Prints
caught / false alarms / lead times per arm and in all. The regression is fitted here (Newton's
method on the L2-penalised, class-balanced log loss), so the figures depend on numpy alone.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from harness.guard.score import MIN_LEAD, load_campaigns, load_fixture, shape
from harness.guard.signals import finite

FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/guard/tiny-guard-calibration.jsonl.gz"


def _v(r: dict[str, Any], key: str) -> float:
    """r[key] as a float; 0 where it is missing or not finite (the signals' `finite`)."""
    return finite(r, key) or 0.0


def features(records: tuple[dict[str, Any], ...]) -> np.ndarray:
    """One row per step t >= 1, from records[: t + 1] only (causal)."""
    ev = [_v(r, "eval_pass1") for r in records]
    kl = [_v(r, "kl_to_ref") for r in records]
    ent = [_v(r, "entropy") for r in records]
    cov = [_v(r, "logp_adv_cov") for r in records]
    e1 = max(ent[1] if len(ent) > 1 and ent[1] else ent[0], 1e-6)
    rows = []
    for t in range(1, len(records)):
        r = records[t]
        rows.append([
            ev[t] - ev[0], ev[t] - max(ev[: t + 1]), ev[t] - ev[t - 1],
            _v(r, "train_reward"), _v(r, "train_reward") - ev[t],
            math.log(max(ent[t], 1e-6) / e1) if ent[t] else 0.0,
            kl[t], kl[t] - kl[t - 1], 100 * cov[t], 100 * max(cov[: t + 1]),
            _v(r, "zero_var_groups"), ev[0], float(t)])
    return np.asarray(rows, dtype=float)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50
                 ) -> np.ndarray:
    """Weights (last: intercept) of a logistic regression: Newton's method on the
    class-balanced log loss plus l2/2 |w|^2 (the intercept unpenalised)."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    pos = y.mean()
    sw = np.where(y == 1, 0.5 / pos, 0.5 / (1 - pos))  # balanced: each class weighs n/2
    pen = np.full(xb.shape[1], l2)
    pen[-1] = 0.0
    w = np.zeros(xb.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-xb @ w))
        grad = xb.T @ (sw * (p - y)) + pen * w
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb + np.diag(pen)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="*", type=Path)
    ap.add_argument("--max-false-alarms", type=float, default=0.10)
    args = ap.parse_args(argv)
    inputs = args.inputs or [FIXTURE]
    campaigns = (load_fixture(inputs[0]) if inputs[0].suffix == ".gz"
                 else load_campaigns(inputs))
    rows = []
    for c in campaigns:
        sig, _, onset = shape(c)
        rows.append((c, sig, onset, "kl" if "kl" in c.source else "naive", features(c.records)))

    def first(probs: np.ndarray, th: float) -> int | None:
        hit = np.nonzero(probs > th)[0]
        return int(hit[0]) + 1 if hit.size else None  # row i is step i + 1

    out = []
    for seed in sorted({c.seed for c, *_ in rows}):
        train = [x for x in rows if x[0].seed != seed]
        xs, ys = [], []
        for _, sig, onset, _, f in train:
            keep = f if not sig else f[: max(0, onset - MIN_LEAD)]
            xs.append(keep)
            ys += [int(sig)] * len(keep)
        x = np.concatenate(xs)
        mu, sd = x.mean(0), x.std(0) + 1e-9
        w = fit_logistic((x - mu) / sd, np.asarray(ys, dtype=float))

        def probs(f: np.ndarray, w: np.ndarray = w, mu: np.ndarray = mu, sd: np.ndarray = sd
                  ) -> np.ndarray:
            return 1.0 / (1.0 + np.exp(-(((f - mu) / sd) @ w[:-1] + w[-1])))

        scored = [(sig, onset, probs(f)) for _, sig, onset, _, f in train]
        n_other = sum(1 for s, _, _ in scored if not s)
        best: tuple[int, float] | None = None
        for th in np.linspace(0.30, 0.995, 140):
            fires = [(s, o, first(p, th)) for s, o, p in scored]
            fa = sum(1 for s, _, t in fires if not s and t is not None)
            caught = sum(1 for s, o, t in fires if s and t is not None and t <= o - MIN_LEAD)
            if fa <= args.max_false_alarms * n_other and (best is None or caught > best[0]):
                best = (caught, th)
        th = best[1] if best else 1.0
        for c, sig, onset, arm, f in rows:
            if c.seed == seed:
                out.append((arm, sig, onset, first(probs(f), th), th))
    print(f"leave-one-seed-out, threshold per fold for false alarms <= "
          f"{args.max_false_alarms:.0%} of the training folds' other campaigns")
    for arm in ("naive", "kl", None):
        sel = [o for o in out if arm is None or o[0] == arm]
        sig = [o for o in sel if o[1]]
        other = [o for o in sel if not o[1]]
        caught = sum(1 for o in sig if o[3] is not None and o[3] <= o[2] - MIN_LEAD)
        fa = sum(1 for o in other if o[3] is not None)
        leads = sorted(o[2] - o[3] for o in sig if o[3] is not None)
        med = float(np.median(leads)) if leads else None
        print(f"{arm or 'all':>5}: caught {caught}/{len(sig)}, false alarms {fa}/{len(other)}, "
              f"median lead {med}, leads {leads}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
