"""The gate's statistics: the interleaved decision on per-round ratios, and Mann-Whitney U for stored samples.

Interleaved: each round opens fresh sessions of baseline and candidate and times them in alternating blocks
(as profile/latency.py does); the round gives one ratio, median(candidate) / median(baseline). Fresh sessions matter:
two sessions of one and the same graph measured a few per cent apart on this project's machines (memory
placement, thread start-up), so a ratio from one pair of sessions is not the artifacts' ratio, and a
bootstrap over that pair's blocks would call the session effect certain. Across rounds the log-ratios are
close to normal, so their Student-t interval is honest even for a handful of rounds.

The interval is asymmetric on purpose: its fast end (the one that must clear the threshold for a regression)
is a one-sided 99 % bound, its slow end (the one that must stay within it for a pass) a one-sided 95 % bound.
Rounds spread 3-10 % on these machines, so with a symmetric 90 % interval a candidate 3-4 % slower sat close
enough to a 5 % threshold to be flagged a few times in a hundred (measured: 4 % at 3.8 % slower, reports/gate.md);
a simulation of the gate's stopping rule on the measured round spreads put the 99 % fast end at ~1 % for 3.8 %
and 0.3 % for 3 % slower, while a true 10 % slowdown was still caught in 98-100 % of decisions. A pass needs
no such margin: an undecided gate passes anyway.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats as sps

REGRESSION_CONFIDENCE = 0.99   # one-sided: the fast end, which must exceed the threshold to fail
PASS_CONFIDENCE = 0.95         # one-sided: the slow end, which must stay within it to pass
INTERVAL_COVERAGE = REGRESSION_CONFIDENCE + PASS_CONFIDENCE - 1   # 94 % between the two ends


@dataclass(frozen=True)
class RoundInterval:
    """The candidate/baseline time ratio over ``rounds`` rounds; ``low`` is its one-sided
    REGRESSION_CONFIDENCE bound, ``high`` its one-sided PASS_CONFIDENCE bound."""
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
    spread = float(logs.std(ddof=1)) / math.sqrt(n)
    low = mean - _t_quantile(REGRESSION_CONFIDENCE, n - 1) * spread
    high = mean + _t_quantile(PASS_CONFIDENCE, n - 1) * spread
    return RoundInterval(round(math.exp(mean), 4), round(math.exp(low), 4), round(math.exp(high), 4), n)


@functools.lru_cache(maxsize=None)
def _t_quantile(confidence: float, dof: int) -> float:
    """Student-t quantile, remembered: the gate asks for the same few after every round (scipy takes ~0.1 ms)."""
    return float(sps.t.ppf(confidence, dof))


def decide(interval: RoundInterval, max_slowdown: float) -> str | None:
    """'regression' when even the fast end is slower than the threshold, 'pass' when even the slow end is
    within it, None while the interval straddles it (take another round)."""
    limit = 1.0 + max_slowdown
    if interval.low > limit:
        return "regression"
    if interval.high <= limit:
        return "pass"
    return None


def sequential(next_ratio: Callable[[], float], max_slowdown: float, min_rounds: int, max_rounds: int,
               min_regression_rounds: int | None = None) -> tuple[list[float], str]:
    """The gate's stopping rule: take rounds until the interval decides (a pass from ``min_rounds`` on, a
    regression from ``min_regression_rounds`` on) or ``max_rounds`` are spent; the round ratios and
    'regression' | 'pass' | 'undecided'.

    A regression waits for more rounds than a pass because failing CI wrongly costs more than a slower
    pass, and because five rounds misjudge the spread: every false regression in reports/gate.md (a 4 %
    slower copy, 4 of 100 decisions) came at 5-7 rounds, with a 6-9 % ratio from a few slow rounds."""
    floor = max(min_rounds, min_regression_rounds or min_rounds)
    ratios: list[float] = []
    decision = None
    while decision is None and len(ratios) < max_rounds:
        ratios.append(next_ratio())
        if len(ratios) >= min_rounds:
            decision = decide(round_interval(ratios), max_slowdown)
            if decision == "regression" and len(ratios) < floor:
                decision = None
    return ratios, decision or "undecided"


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
