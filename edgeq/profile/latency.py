"""Latency measurement across runtimes: a Measurement, and several models timed round-robin."""
from __future__ import annotations

from dataclasses import asdict, dataclass
import math
import time
from pathlib import Path

import numpy as np

from .targets import get_target

BLOCK = 5
SETTLE_S = 0.02   # lets the previous model's worker threads stop spinning


@dataclass(frozen=True)
class Measurement:
    target: str
    batch: int
    threads: int
    runs: int
    warmup: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def from_times(cls, target: str, batch: int, threads: int, times: list[float], warmup: int) -> "Measurement":
        """``times`` are the timed runs only (warm-up runs are not recorded)."""
        t = np.array(times)
        return cls(target, batch, threads, len(t), warmup,
                   round(float(np.percentile(t, 50)), 4), round(float(np.percentile(t, 90)), 4),
                   round(float(np.percentile(t, 99)), 4), round(float(t.mean()), 4))

    def to_dict(self) -> dict:
        return asdict(self)


def measure_interleaved(paths: dict[str, str | Path | tuple[str | Path, str]], runs: int = 100,
                        warmup: int = 10, batch: int = 1, threads: int = 2, target: str = "ort-cpu",
                        block: int = BLOCK) -> dict[str, Measurement]:
    """Latency of several models measured in alternating blocks, so machine noise hits all of them alike.

    A value may be ``(path, target)`` to time one model on another runtime in the same rotation. Each block
    starts with one untimed run: thread pools of the model that ran before (ONNX Runtime's spin-waiting
    workers, OpenVINO's) still hold the cores for a moment and would otherwise bill it to this model.
    """
    probes = {}
    for key, value in paths.items():
        path, tgt = value if isinstance(value, tuple) else (value, target)
        probes[key] = get_target(tgt).probe(path, batch, threads)
    for probe in probes.values():
        for _ in range(warmup):
            probe.step(record=False)
    for _ in range(math.ceil(runs / block)):
        for probe in probes.values():
            time.sleep(SETTLE_S)
            probe.step(record=False)
            for _ in range(block):
                probe.step()
    return {key: probe.measurement(warmup) for key, probe in probes.items()}
