"""Interleaved timing for the gate: baseline and candidate on one machine, side by side, round after round.

A round opens a fresh session of each (in a random order), warms both up, and times them in alternating
blocks; its ratio is profile/latency.py's paired-block ratio. Rounds continue until the interval over rounds
decides (stats.decide) or the round limit is reached, so a clear case stops after a few seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..profile.latency import SETTLE_S, block_ratio, open_session
from .stats import RoundInterval, decide, round_interval

BLOCK = 5           # runs per block
BLOCKS = 6          # block pairs per round
WARMUP = 5          # untimed runs per fresh session
MIN_ROUNDS = 3
MAX_ROUNDS = 30


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
    ratios: list[float] = []
    samples: dict[str, list[float]] = {"baseline": [], "current": []}
    decision = None
    while decision is None and len(ratios) < max_rounds:
        times = _one_round({"baseline": baseline, "current": current}, target, threads, order)
        for side, t in times.items():
            samples[side] += t
        ratios.append(block_ratio(times["baseline"], times["current"], BLOCK).ratio)
        if len(ratios) >= min_rounds:
            decision = decide(round_interval(ratios), max_slowdown)
    return Timing(round_interval(ratios), decision or "undecided", ratios, len(samples["baseline"]),
                  round(time.perf_counter() - started, 2), samples["baseline"], samples["current"])


def _one_round(paths: dict[str, Path], target: str, threads: int | None, order) -> dict[str, list[float]]:
    names = list(paths)
    sessions = {}
    for i in order.permutation(len(names)):   # load order varies too: the first session may land differently
        sessions[names[i]] = open_session(paths[names[i]], target, 1, threads)[1]
    for session in sessions.values():
        for _ in range(WARMUP):
            session.step(record=False)
    for _ in range(BLOCKS):
        for i in order.permutation(len(names)):
            session = sessions[names[i]]
            time.sleep(SETTLE_S)
            session.step(record=False)
            session.time(BLOCK)
    times = {name: s.times for name, s in sessions.items()}
    sessions.clear()   # released before the next round opens fresh ones
    return times
