"""The demo's statistics against independent references: normal-theory intervals, hand counts, and a Monte Carlo
simulation of the power calculation."""

import math
import random
from statistics import NormalDist, fmean, stdev

import pytest

from leaf.demo.stats import (accuracy_interval, detectable_difference, discordance, items_needed, paired_interval,
                             seed_variance)


def _paired(n, p_a, p_b, rho_seed=0):
    rng = random.Random(rho_seed)
    a = [float(rng.random() < p_a) for _ in range(n)]
    b = [float(rng.random() < p_b) for _ in range(n)]
    return a, b


def test_one_seed_interval_matches_normal_theory():
    a, b = _paired(2000, 0.55, 0.45)
    d = [x - y for x, y in zip(a, b)]
    interval = paired_interval([a], [b], resamples=4000, seed=1)
    half = 1.96 * stdev(d) / math.sqrt(len(d))
    assert interval.mean == pytest.approx(fmean(d))
    assert interval.low == pytest.approx(fmean(d) - half, abs=0.006)
    assert interval.high == pytest.approx(fmean(d) + half, abs=0.006)
    assert interval.verdict() == "better"
    assert paired_interval([b], [a], resamples=500).verdict() == "worse"


def test_identical_settings_give_a_zero_interval_and_a_tie():
    a, _ = _paired(300, 0.5, 0.5)
    interval = paired_interval([a, a], [a, a], resamples=200)
    assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert interval.verdict() == "tie"
    assert interval.points() == "+0.0 [+0.0, +0.0]"


def test_seeds_widen_the_interval_when_seeds_disagree():
    a1, b1 = _paired(1000, 0.6, 0.5, 1)
    a2, b2 = _paired(1000, 0.4, 0.5, 2)
    pooled = paired_interval([a1 + a2], [b1 + b2], resamples=1000)
    by_seed = paired_interval([a1, a2], [b1, b2], resamples=1000)
    assert by_seed.mean == pytest.approx(pooled.mean, abs=1e-12)
    assert by_seed.high - by_seed.low > 2 * (pooled.high - pooled.low)
    assert by_seed.seeds == 2 and by_seed.items == 2000


def test_accuracy_interval_and_counts():
    outcomes = [[1, 1, 0, 0], [1, 0, 0, 0]]
    assert accuracy_interval(outcomes, resamples=100).mean == pytest.approx((0.5 + 0.25) / 2)
    assert discordance([[1, 0, 1]], [[1, 1, 0]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        paired_interval([[1, 0]], [[1]])


def test_seed_variance_is_zero_for_one_seed_and_positive_for_disagreeing_seeds():
    a1, b1 = _paired(2000, 0.7, 0.5, 3)
    a2, b2 = _paired(2000, 0.3, 0.5, 4)
    assert seed_variance([a1], [b1]) == 0.0
    assert seed_variance([a1, a2], [b1, b2]) > 0.01


def test_power_calculation_matches_a_simulation():
    """At the detectable difference, a paired z-test rejects about 80% of the time (Monte Carlo)."""
    items, discordant = 600, 0.3
    delta = detectable_difference(discordant, items, seeds=1)
    rng = random.Random(0)
    z = NormalDist().inv_cdf(0.975)
    rejections = 0
    trials = 1500
    for _ in range(trials):
        # each item: discordant with probability `discordant`, then +1 with prob (1 + delta/discordant)/2
        d = [0.0] * items
        for i in range(items):
            if rng.random() < discordant:
                d[i] = 1.0 if rng.random() < 0.5 * (1 + delta / discordant) else -1.0
        se = stdev(d) / math.sqrt(items)
        rejections += abs(fmean(d)) > z * se
    assert rejections / trials == pytest.approx(0.8, abs=0.04)
    # and items_needed inverts detectable_difference
    assert items_needed(delta, discordant, seeds=1) == pytest.approx(items, abs=1)
    assert items_needed(0.02, 0.2, seeds=5, between_seeds=0.001) is None
    assert items_needed(0.02, 0.2, seeds=5) == math.ceil(0.2 / (5 * (0.02 / 2.8016) ** 2))
