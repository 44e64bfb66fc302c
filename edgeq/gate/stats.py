"""The gate's statistics: the interleaved decision on per-round ratios, and Mann-Whitney U for stored samples.

Interleaved: each round opens fresh sessions of baseline and candidate and times them in alternating blocks
(as profile/latency.py does); the round gives one ratio, median(candidate) / median(baseline). Fresh sessions matter:
two sessions of one and the same graph measured a few per cent apart on this project's machines (memory
placement, thread start-up), so a ratio from one pair of sessions is not the artifacts' ratio, and a
bootstrap over that pair's blocks would call the session effect certain. Across rounds the log-ratios are
close to normal, so their Student-t interval is honest even for a handful of rounds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.90   # two-sided: each end is a one-sided 95 % bound


@dataclass(frozen=True)
class RoundInterval:
    """The candidate/baseline time ratio over ``rounds`` rounds, with its CONFIDENCE interval."""
    ratio: float
    low: float
    high: float
    rounds: int


def round_interval(ratios: list[float]) -> RoundInterval:
    """Geometric mean of the per-round ratios and its Student-t interval (needs two rounds or more)."""
    logs = np.log(np.asarray(ratios, dtype=float))
    n = len(logs)
    mean = float(logs.mean())
    if n < 2:
        return RoundInterval(math.exp(mean), 0.0, math.inf, n)
    half = float(sps.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * float(logs.std(ddof=1)) / math.sqrt(n)
    return RoundInterval(round(math.exp(mean), 4), round(math.exp(mean - half), 4), round(math.exp(mean + half), 4), n)


def decide(interval: RoundInterval, max_slowdown: float) -> str | None:
    """'regression' when even the fast end is slower than the threshold, 'pass' when even the slow end is
    within it, None while the interval straddles it (take another round)."""
    limit = 1.0 + max_slowdown
    if interval.low > limit:
        return "regression"
    if interval.high <= limit:
        return "pass"
    return None


@dataclass(frozen=True)
class UTest:
    """One-sided Mann-Whitney U: is the current side's distribution shifted towards slower?"""
    p_value: float
    ratio: float          # median(current) / median(baseline)
    n_baseline: int
    n_current: int


def min_samples(alpha: float) -> int:
    """The fewest samples per side for which the exact one-sided test can reach p < alpha at all
    (the smallest p with n and n samples is 1 / C(2n, n))."""
    n = 2
    while 1.0 / math.comb(2 * n, n) >= alpha:
        n += 1
    return n


def mann_whitney_slower(baseline: list[float], current: list[float]) -> UTest:
    """Mann-Whitney U (one-sided, current slower), exact for small samples, normal approximation with tie
    correction otherwise (scipy's choice)."""
    b, c = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    result = sps.mannwhitneyu(c, b, alternative="greater")
    return UTest(float(result.pvalue), round(float(np.median(c) / np.median(b)), 4), len(b), len(c))
