"""Several models timed round-robin across runtimes, and the paired-block ratio of two of them.

(The versioned Measurement of one artifact is ``profile/measure.py``.)
"""
from __future__ import annotations

from dataclasses import dataclass
import math
import time
from pathlib import Path

import numpy as np

from ..runtimes.base import RuntimeUnavailable
from ..target import DEFAULT_TARGET, get_target

BLOCK = 5
SETTLE_S = 0.02   # lets the previous model's worker threads stop spinning


def open_session(path, target: str, batch: int, threads: int | None):
    """The artifact loaded by ``target``'s runtime (one clear sentence when that runtime cannot run here),
    with the target's thread count unless ``threads`` is given."""
    found = get_target(target)
    reason = found.unavailable()
    if reason:
        raise RuntimeUnavailable(f"cannot run on {found.name}: {reason}.")
    threads = threads if threads is not None else found.threads
    return found.name, found.plugin.open(path, batch, threads, found.options)


def interleave(paths: dict, runs: int, warmup: int, batch: int, threads: int | None, target: str,
                block: int, order: np.random.Generator | None = None, settle: float = SETTLE_S) -> dict:
    """{key: (target name, session)} after warm-up and ``runs`` timed runs each, in alternating blocks.

    Each round visits the models in a new random order (``order``, default a fixed seed): a model always
    timed first, right after another runtime's threads, or always last, would carry that position's cost as if
    it were its own (an artifact timed against an identical copy measured 1.25x "faster" with a fixed order on
    a loaded machine). ``settle``: seconds of pause before each block.
    """
    probes = {}
    for key, value in paths.items():
        path, tgt = value if isinstance(value, tuple) else (value, target)
        probes[key] = open_session(path, tgt, batch, threads)
    sessions = [session for _, session in probes.values()]
    for probe in sessions:
        for _ in range(warmup):
            probe.step(record=False)
    order = order if order is not None else np.random.default_rng(0)
    for _ in range(math.ceil(runs / block)):
        for i in order.permutation(len(sessions)):
            probe = sessions[i]
            time.sleep(settle)
            probe.step(record=False)
            for _ in range(block):
                probe.step()
    return probes


@dataclass(frozen=True)
class Ratio:
    """time(candidate) / time(reference) from paired blocks, with a bootstrap 90 % interval."""
    reference_ms: float
    candidate_ms: float
    ratio: float
    low: float
    high: float

    def faster(self, margin: float) -> bool:
        """Confidently faster: even the interval's slow end gains at least ``margin``."""
        return self.high <= 1.0 - margin


def compare(reference: str | Path, candidates: list[str | Path], runs: int, warmup: int = 3, batch: int = 1,
            threads: int | None = 2, target: str = DEFAULT_TARGET, block: int = BLOCK, seed: int = 0) -> list[Ratio]:
    """Each candidate against ``reference``, all interleaved. Blocks that ran back to back form pairs, so a
    slow phase of the shared machine slows both sides of a pair; the interval comes from resampling pairs."""
    paths = {"ref": reference, **{f"c{i}": c for i, c in enumerate(candidates)}}
    probes = interleave(paths, runs, warmup, batch, threads, target, block)
    ref = _block_medians(probes["ref"][1].times, block)
    return [_ratio(ref, _block_medians(probes[f"c{i}"][1].times, block), seed) for i in range(len(candidates))]


def block_ratio(reference_ms: list[float], candidate_ms: list[float], block: int = BLOCK, seed: int = 0) -> "Ratio":
    """The paired-block Ratio of two sample lists recorded in the same rotation (block k of each ran together)."""
    return _ratio(_block_medians(reference_ms, block), _block_medians(candidate_ms, block), seed)


def _block_medians(times: list[float], block: int) -> np.ndarray:
    n = len(times) // block
    return np.median(np.array(times[: n * block]).reshape(n, block), axis=1)


def _ratio(ref: np.ndarray, cand: np.ndarray, seed: int, reps: int = 2000) -> Ratio:
    picks = np.random.default_rng(seed).integers(0, len(ref), (reps, len(ref)))
    boot = cand[picks].sum(axis=1) / ref[picks].sum(axis=1)
    low, high = np.percentile(boot, [5, 95])
    return Ratio(round(float(np.median(ref)), 4), round(float(np.median(cand)), 4),
                 round(float(cand.sum() / ref.sum()), 4), round(float(low), 4), round(float(high), 4))
