"""Statistics of the demo's comparisons, as pure functions: paired bootstrap intervals over test items and seeds, the
verdict they imply, and the power calculation that sizes the experiment.

Every comparison is paired: two settings distilled from the same student, on the same data, evaluated on the same
test items. A seed is one whole replicate (its own student, pool and test set), so the bootstrap is hierarchical:
resample seeds, then items within each resampled seed (Davison & Hinkley 1997, §3.8), and take the mean over seeds
of the mean paired difference. With one seed it is the ordinary paired bootstrap over items.

    paired_interval([[1, 0, 1], [0, 0, 1]], [[0, 0, 1], [0, 1, 1]])  -> Interval(mean, low, high, ...)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist, fmean


@dataclass(frozen=True)
class Interval:
    """A paired difference a - b (in the units of the inputs, e.g. 0/1 correctness) with its bootstrap interval."""

    mean: float
    low: float
    high: float
    level: float
    seeds: int
    items: int

    def verdict(self) -> str:
        """'better' when the interval lies above zero, 'worse' below, else 'tie' (not distinguishable)."""
        return "better" if self.low > 0 else "worse" if self.high < 0 else "tie"

    def points(self) -> str:
        """The difference in percentage points: '+2.8 [+0.5, +5.0]'."""
        return f"{100 * self.mean:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"

    def as_json(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "level": self.level, "seeds": self.seeds,
                "items": self.items, "verdict": self.verdict()}


def paired_interval(a: list[list[float]], b: list[list[float]], *, level: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> Interval:
    """Hierarchical paired bootstrap of mean(a - b): a[s][i] and b[s][i] are the outcomes of test item i in seed s.

    The interval is the percentile interval of `resamples` bootstrap means (vectorised: one (resamples, items)
    index draw per seed)."""
    import torch

    if len(a) != len(b) or not a or any(len(x) != len(y) or not x for x, y in zip(a, b)):
        raise ValueError("paired_interval needs the same non-empty items per seed in both settings")
    diffs = [torch.tensor(x, dtype=torch.float64) - torch.tensor(y, dtype=torch.float64) for x, y in zip(a, b)]
    mean = fmean(float(d.mean()) for d in diffs)
    generator = torch.Generator().manual_seed(seed)
    seeds = len(diffs)
    picks = torch.randint(seeds, (resamples, seeds), generator=generator)      # the seeds drawn, per resample
    total = torch.zeros(resamples, dtype=torch.float64)
    for slot in range(seeds):  # each drawn seed gets its own resample of its items
        for s, d in enumerate(diffs):
            rows = (picks[:, slot] == s).nonzero().flatten()
            if rows.numel():
                draws = torch.randint(len(d), (rows.numel(), len(d)), generator=generator)
                total[rows] += d[draws].mean(1)
    means = (total / seeds).sort().values                                      # (resamples,)
    tail = (1 - level) / 2
    low = float(means[min(int(math.floor(tail * resamples)), resamples - 1)])
    high = float(means[min(int(math.ceil((1 - tail) * resamples)) - 1, resamples - 1)])
    return Interval(mean, low, high, level, seeds, sum(len(d) for d in diffs))


def accuracy_interval(outcomes: list[list[float]], *, level: float = 0.95, resamples: int = 2000,
                      seed: int = 0) -> Interval:
    """Mean accuracy over seeds with the same hierarchical bootstrap (the paired difference against zeros)."""
    return paired_interval(outcomes, [[0.0] * len(x) for x in outcomes], level=level, resamples=resamples, seed=seed)


def discordance(a: list[list[float]], b: list[list[float]]) -> float:
    """Share of items on which two settings disagree (one right, the other wrong): what sets a paired test's noise."""
    pairs = [(x, y) for xs, ys in zip(a, b) for x, y in zip(xs, ys)]
    return sum(x != y for x, y in pairs) / len(pairs)


def seed_variance(a: list[list[float]], b: list[list[float]]) -> float:
    """Variance across seeds of the per-seed mean difference, beyond what item sampling explains (>= 0)."""
    diffs = [[x - y for x, y in zip(xs, ys)] for xs, ys in zip(a, b)]
    if len(diffs) < 2:
        return 0.0
    per_seed = [fmean(d) for d in diffs]
    total = sum((m - fmean(per_seed)) ** 2 for m in per_seed) / (len(per_seed) - 1)
    within = fmean(_item_variance(d) / len(d) for d in diffs)
    return max(total - within, 0.0)


def _item_variance(d: list[float]) -> float:
    m = fmean(d)
    return sum((x - m) ** 2 for x in d) / max(len(d) - 1, 1)


def standard_error(discordant: float, items: int, seeds: int, between_seeds: float = 0.0) -> float:
    """Standard error of a paired accuracy difference near zero: item variance ≈ the discordant share (each
    discordant item contributes ±1), averaged over `items` per seed and `seeds` seeds, plus the between-seed
    variance of the true difference over `seeds`."""
    return math.sqrt(discordant / (items * seeds) + between_seeds / seeds)


def detectable_difference(discordant: float, items: int, seeds: int, between_seeds: float = 0.0, *,
                          alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at `alpha` detects with probability `power`."""
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    return z * standard_error(discordant, items, seeds, between_seeds)


def items_needed(difference: float, discordant: float, seeds: int, between_seeds: float = 0.0, *,
                 alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Test items per seed for `seeds` seeds to detect `difference`; None when the between-seed variance alone
    makes it undetectable with that many seeds (more seeds are needed, not more items)."""
    z = NormalDist().inv_cdf(1 - alpha / 2) + NormalDist().inv_cdf(power)
    room = (difference / z) ** 2 - between_seeds / seeds
    if room <= 0:
        return None
    return math.ceil(discordant / (seeds * room))
