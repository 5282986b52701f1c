"""Statistics as short pure functions over arrays: paired comparisons by seed with a verdict
that can say `inconclusive` (`paired`), and per-arm aggregates of results.json cells
(`aggregate`). See `harness.stats.paired` for the verdict rule."""

from harness.stats.aggregate import (
    LOWER_IS_BETTER,
    METRIC_FIELDS,
    arm_aggregates,
    cell_metric,
    higher_is_better,
    iqm,
    metric_by_seed,
)
from harness.stats.paired import (
    VERDICTS,
    PairedComparison,
    bootstrap_ci,
    ci_label,
    decide,
    expectation_outcome,
    min_seeds_for,
    pair_by_seed,
    paired_comparison,
    sign_flip_p,
)

__all__ = [
    "LOWER_IS_BETTER",
    "METRIC_FIELDS",
    "VERDICTS",
    "PairedComparison",
    "arm_aggregates",
    "bootstrap_ci",
    "cell_metric",
    "ci_label",
    "decide",
    "expectation_outcome",
    "higher_is_better",
    "iqm",
    "metric_by_seed",
    "min_seeds_for",
    "pair_by_seed",
    "paired_comparison",
    "sign_flip_p",
]
