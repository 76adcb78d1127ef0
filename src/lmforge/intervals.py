"""How sure a comparison of fine-tuned models is: bootstrap intervals over seeds and test examples.

A candidate's test metric varies with the fine-tuning seed and with which examples the test set
happens to hold. Both are resampled together (a two-level bootstrap): each replicate draws one of
the candidate's seeds and a resample of the test examples, and recomputes the metric. A
difference between two candidates is paired: both sides of a replicate are scored on the same
resampled examples, each with its own drawn seed, so the interval counts seed variance on both
sides and test-set sampling once.

Metrics are recomputed from prediction rows (`metric_of`), so non-decomposable ones (macro F1, MCC,
entity F1) are resampled correctly too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Rows = Sequence[dict]
Metric = Callable[[Rows], float]


@dataclass
class Interval:
    estimate: float  # the mean over seeds of the metric on the whole test set
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


def _replicates(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def candidate_interval(
    runs: Sequence[Rows], metric: Metric, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Mean over `runs` (one list of prediction rows per seed, same examples in the same order) of
    `metric`, with a percentile interval from resampling seeds and examples."""
    n = _check_runs(runs)
    rng = np.random.default_rng(seed + 1)
    draws = [
        metric([runs[s][i] for i in index])
        for s, index in zip(rng.integers(0, len(runs), resamples), _replicates(n, resamples, seed))
    ]
    return Interval(float(np.mean([metric(r) for r in runs])), *_percentiles(draws, level))


def difference_interval(
    runs: Sequence[Rows],
    baseline: Sequence[Rows],
    metric: Metric,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """`runs` minus `baseline` (each: prediction rows per seed over the same test examples), paired
    on resampled examples, each side drawing its own seed per replicate."""
    n = _check_runs(runs)
    if _check_runs(baseline) != n:
        raise ValueError("the two candidates were scored on different numbers of test examples")
    rng = np.random.default_rng(seed + 1)
    picks = rng.integers(0, len(runs), resamples), rng.integers(0, len(baseline), resamples)
    draws = [
        metric([runs[a][i] for i in index]) - metric([baseline[b][i] for i in index])
        for a, b, index in zip(*picks, _replicates(n, resamples, seed))
    ]
    estimate = float(np.mean([metric(r) for r in runs]) - np.mean([metric(r) for r in baseline]))
    return Interval(estimate, *_percentiles(draws, level))


def verdict(difference: Interval, higher_is_better: bool = True) -> str:
    """better / worse / no detectable difference: whether the interval excludes 0, and on which side."""
    if difference.low > 0:
        return "better" if higher_is_better else "worse"
    if difference.high < 0:
        return "worse" if higher_is_better else "better"
    return "no detectable difference"


def seed_spread(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for one seed)."""
    values = np.asarray(values, dtype=float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _percentiles(draws, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def _check_runs(runs: Sequence[Rows]) -> int:
    if not runs or any(len(r) != len(runs[0]) for r in runs) or not runs[0]:
        raise ValueError("every seed must be scored on the same, non-empty test set")
    return len(runs[0])
