"""Several models timed round-robin across runtimes, and the paired-block ratio of two of them.

(The versioned Measurement of one artifact is ``profile/measure.py``.)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeqError
from ..runner import rotate
from ..runtimes.base import RuntimeUnavailable
from ..target import DEFAULT_TARGET, get_target

BLOCK = 5
SETTLE_S = 0.02   # the least pause before a block; it then lasts until spinning threads stop (runner.py)


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
                block: int, order: np.random.Generator | None = None, settle: float = SETTLE_S,
                sessions: dict | None = None) -> dict:
    """{key: (target name, session)} after warm-up and ``runs`` timed runs each, in alternating blocks.

    Each round visits the models in a new random order (``order``, default a fixed seed): a model always
    timed first, right after another runtime's threads, or always last, would carry that position's cost as if
    it were its own (an artifact timed against an identical copy measured 1.25x "faster" with a fixed order on
    a loaded machine). ``settle``: seconds of pause before each block. ``sessions``: the caller's cache of
    loaded sessions, reused and filled here (OpenVINO compiles an int8 model in about 2 s; a search that
    times each candidate against the same reference need not load the reference again).
    """
    entries = {key: value if isinstance(value, tuple) else (value, target) for key, value in paths.items()}
    order = order if order is not None else np.random.default_rng(0)
    on_device = {get_target(t).name for _, t in entries.values() if get_target(t).reach == "ssh"}
    if on_device:
        return _interleave_on_device(entries, on_device, runs, warmup, batch, threads, block, order, settle)
    probes = {key: _session(path, tgt, batch, threads, sessions) for key, (path, tgt) in entries.items()}
    rotate([session for _, session in probes.values()], runs, warmup, block, order, settle)
    return probes


def _session(path, target: str, batch: int, threads: int | None, sessions: dict | None):
    """A loaded session with no recorded times: from ``sessions`` when it holds one, else opened (and kept there)."""
    if sessions is None:
        return open_session(path, target, batch, threads)
    key = (str(path), target, batch, threads)
    if key not in sessions:
        sessions[key] = open_session(path, target, batch, threads)
    sessions[key][1].times.clear()
    return sessions[key]


@dataclass
class DeviceTimes:
    """A model's per-run times from the SSH device's runner (what ``interleave`` callers read of a session)."""
    times: list[float]
    threads: int | None


def _interleave_on_device(entries: dict, on_device: set[str], runs: int, warmup: int, batch: int,
                          threads: int | None, block: int, order: np.random.Generator, settle: float) -> dict:
    """The same rotation, run by the runner on the device (one SSH session for all models)."""
    from ..remote import compare, parse_host
    found = get_target(next(iter(on_device)))
    if len(on_device) > 1 or any(get_target(t).name != found.name for _, t in entries.values()):
        raise EdgeqError(f"models on {found.name} (over SSH) are timed in their own rotation, not with other targets.")
    reason = found.unavailable()
    if reason:
        raise RuntimeUnavailable(f"cannot run on {found.name}: {reason}.")
    threads = threads if threads is not None else found.threads
    result = compare(parse_host(found.host), [path for path, _ in entries.values()], threads, runs, warmup, block,
                     batch, settle, int(order.integers(2**31)))
    return {key: (found.name, DeviceTimes(m["samples_ms"], threads)) for key, m in zip(entries, result["models"])}


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
            threads: int | None = 2, target: str = DEFAULT_TARGET, block: int = BLOCK, seed: int = 0,
            sessions: dict | None = None) -> list[Ratio]:
    """Each candidate against ``reference``, all interleaved. Blocks that ran back to back form pairs, so a
    slow phase of the shared machine slows both sides of a pair; the interval comes from resampling pairs.
    ``sessions``: a cache of loaded sessions to reuse (see ``interleave``)."""
    ref, cands = paired_blocks(reference, candidates, runs, warmup, batch, threads, target, block, sessions)
    return [_ratio(ref, cand, seed) for cand in cands]


def paired_blocks(reference: str | Path, candidates: list[str | Path], runs: int, warmup: int = 3, batch: int = 1,
                  threads: int | None = 2, target: str = DEFAULT_TARGET, block: int = BLOCK,
                  sessions: dict | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """The block medians of the reference and of each candidate, interleaved: block k of each ran in round k
    (what ``compare`` pairs; blocks of two rotations can be pooled, see ``pooled_ratio``)."""
    paths = {"ref": reference, **{f"c{i}": c for i, c in enumerate(candidates)}}
    probes = interleave(paths, runs, warmup, batch, threads, target, block, sessions=sessions)
    return (_block_medians(probes["ref"][1].times, block),
            [_block_medians(probes[f"c{i}"][1].times, block) for i in range(len(candidates))])


def paired_blocks_knowing(found, reference, candidates, **timing):
    """``paired_blocks`` in a process that learns the target first (a YAML target, an SSH host). It lives here so
    that a freshly spawned timing process imports this module and the runtime only, not torch (≈4 s)."""
    from ..target import remember
    remember(found)
    return paired_blocks(reference, candidates, **timing)


def pooled_ratio(reference_blocks: list[np.ndarray], candidate_blocks: list[np.ndarray], seed: int = 0) -> "Ratio":
    """The Ratio of the paired blocks of several rotations together."""
    return _ratio(np.concatenate(reference_blocks), np.concatenate(candidate_blocks), seed)


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
