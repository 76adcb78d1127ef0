"""Bootstrap intervals and verdicts against cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from lmforge import intervals


def accuracy(rows) -> float:
    return sum(r["right"] for r in rows) / len(rows)


def rows_of(flags) -> list[dict]:
    return [{"right": int(f)} for f in flags]


def test_paired_difference_of_one_seed_each_matches_the_normal_approximation():
    # A is right on all 100 examples, B on the first 50: the paired differences are 0 (50) and 1 (50),
    # so the difference is 0.5 with standard error sqrt(0.25 / 100) = 0.05: 95% ~ [0.402, 0.598]
    a, b = [rows_of([1] * 100)], [rows_of([1] * 50 + [0] * 50)]
    diff = intervals.difference_interval(a, b, accuracy, resamples=4000)
    assert diff.estimate == pytest.approx(0.5)
    assert diff.low == pytest.approx(0.5 - 1.96 * 0.05, abs=0.015)
    assert diff.high == pytest.approx(0.5 + 1.96 * 0.05, abs=0.015)
    assert intervals.verdict(diff) == "better" and intervals.verdict(diff, higher_is_better=False) == "worse"


def test_seed_variance_alone_widens_the_interval():
    # every example is right or every one is wrong, per seed: resampling examples changes nothing,
    # so the difference of A (seeds: 1.0 and 0.0) to B (1.0) is 0 or -1, each with probability 1/2
    a, b = [rows_of([1] * 20), rows_of([0] * 20)], [rows_of([1] * 20)]
    diff = intervals.difference_interval(a, b, accuracy, resamples=2000)
    assert diff.estimate == pytest.approx(-0.5) and (diff.low, diff.high) == (-1.0, 0.0)
    assert intervals.verdict(diff) == "no detectable difference"
    single = intervals.candidate_interval(a, accuracy, resamples=2000)
    assert single.estimate == pytest.approx(0.5) and (single.low, single.high) == (0.0, 1.0)


def test_the_same_predictions_differ_by_nothing():
    runs = [rows_of([1, 0, 1, 1, 0, 1])] * 3
    diff = intervals.difference_interval(runs, runs, accuracy, resamples=500)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)
    assert intervals.verdict(diff) == "no detectable difference"


def test_seed_spread_and_bad_input():
    mean, std = intervals.seed_spread([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0) and intervals.seed_spread([0.7]) == (0.7, 0.0)
    with pytest.raises(ValueError, match="same, non-empty test set"):
        intervals.candidate_interval([rows_of([1, 0]), rows_of([1])], accuracy)
    with pytest.raises(ValueError, match="different numbers of test examples"):
        intervals.difference_interval([rows_of([1, 0])], [rows_of([1])], accuracy)
    assert not math.isnan(intervals.candidate_interval([rows_of([1, 0])], accuracy, resamples=10).low)
