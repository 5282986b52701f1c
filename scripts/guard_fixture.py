"""Reduce a run's naive step records to the fields the guard's signals read (a test fixture).

    python scripts/guard_fixture.py RUN OUT.jsonl.gz

Writes one JSON line per step record of every finished, full-budget campaign of the run's
naive cells (`harness.guard.score.load_campaigns`), keeping the cell name (its label, without
the config hash), campaign, seed, step and the fields of `FIELDS`. tests/test_guard.py scores
and tunes the guard on `tests/fixtures/guard/tiny-guard-calibration.jsonl.gz` and
`tiny-healthy.jsonl.gz`, made this way from `harness bench tiny-guard` and `harness bench
tiny-healthy` runs (docs/guard.md).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from harness.guard.score import load_campaigns

FIELDS = ("eval_pass1", "eval_samples", "train_reward", "entropy", "kl_to_ref",
          "zero_var_groups", "completion_len", "logp_adv_cov")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run, out = Path(argv[0]), Path(argv[1])
    lines = []
    for c in load_campaigns([run]):
        cell = c.source.rsplit("_", 1)[0]  # tiny_reinforce_naive_s0_<hash> -> without hash
        for r in c.records:
            rec = {"cell": cell, "campaign": c.index, "seed": c.seed, "step": r["step"],
                   **{k: r.get(k) for k in FIELDS}}
            trunc = ((r.get("verdicts") or {}).get("train") or {}).get("truncated")
            if trunc is not None:
                rec["verdicts"] = {"train": {"truncated": trunc}}
                rec["grading"] = {"train_samples": (r.get("grading") or {}).get("train_samples")}
            lines.append(json.dumps(rec, sort_keys=True))
    with gzip.GzipFile(out, "wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())
    print(f"{out}: {len(lines)} step records")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
