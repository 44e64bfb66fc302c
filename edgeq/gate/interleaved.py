"""Interleaved timing for the gate: baseline and candidate on one machine, side by side, round after round.

A round opens a fresh session of each (in a random order), warms both up, and times them in alternating
blocks; its ratio is the ratio of the two sides' median run times in that round. Rounds continue until the
interval over rounds decides (stats.decide) or the round limit is reached, so a clear case stops early.
Measured on this project's 2-core machines (zoo mobilevit_xxs int8, 2 threads, an A/A pair, 20 rounds per
setting): a round's ratio of medians spreads by about 10 % (sd of its log), a paired-block ratio of sums of
block medians by about 20 % (one slow block, 4x its neighbours, weighs on the sum); ratios of medians from
blocks of 10 runs spread 0.07–0.13 over five tries (no pause or 2 ms between blocks), from blocks of 5
0.09–0.24 over three (no pause or 20 ms).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..profile.latency import interleave
from .stats import RoundInterval, round_interval, sequential

BLOCK = 10          # runs per block
BLOCKS = 4          # block pairs per round
WARMUP = 5          # untimed runs per fresh session
SETTLE_S = 0.002    # between blocks: the other session's worker threads stop spinning
MIN_ROUNDS = 5      # a Student-t interval from fewer rounds rests on too few spreads
MIN_REGRESSION_ROUNDS = 10   # a failing verdict is confirmed on more rounds (stats.sequential says why)
MAX_ROUNDS = 60


@dataclass(frozen=True)
class Timing:
    """How a pair was timed: rounds, runs per side, wall time, and the raw per-run samples of each side."""
    interval: RoundInterval
    decision: str                     # regression | pass | undecided
    round_ratios: list[float]
    runs_per_side: int
    seconds: float
    baseline_ms: list[float] = field(repr=False)
    current_ms: list[float] = field(repr=False)


def time_pair(baseline: Path, current: Path, target: str, max_slowdown: float, threads: int | None = None,
              min_rounds: int = MIN_ROUNDS, max_rounds: int = MAX_ROUNDS, seed: int = 0) -> Timing:
    """Rounds of alternating blocks until the interval decides against ``max_slowdown`` (or ``max_rounds``)."""
    order = np.random.default_rng(seed)
    started = time.perf_counter()
    samples: dict[str, list[float]] = {"baseline": [], "current": []}

    def one_ratio() -> float:
        times = _one_round({"baseline": baseline, "current": current}, target, threads, order)
        for side, t in times.items():
            samples[side] += t
        return float(np.median(times["current"]) / np.median(times["baseline"]))

    ratios, decision = sequential(one_ratio, max_slowdown, min_rounds, max_rounds, MIN_REGRESSION_ROUNDS)
    return Timing(round_interval(ratios), decision, ratios, len(samples["baseline"]),
                  round(time.perf_counter() - started, 2), samples["baseline"], samples["current"])


def _one_round(paths: dict[str, Path], target: str, threads: int | None, order) -> dict[str, list[float]]:
    """Fresh sessions of both sides, opened in a random order (the first may land differently), timed in
    BLOCKS alternating blocks; the sessions are released when this returns."""
    names = list(paths)
    shuffled = {names[i]: paths[names[i]] for i in order.permutation(len(names))}
    probes = interleave(shuffled, BLOCK * BLOCKS, WARMUP, 1, threads, target, BLOCK, order=order, settle=SETTLE_S)
    return {name: session.times for name, (_, session) in probes.items()}
