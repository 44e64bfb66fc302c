"""ONNX Runtime on the local CPU: sessions, batched inference and latency measurement."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError


def session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}.") from None


def input_info(sess) -> tuple[str, list]:
    inp = sess.get_inputs()[0]
    return inp.name, list(inp.shape)


def run(sess, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Outputs for all of ``x``; batches of 1 when the model's batch axis is fixed."""
    name, shape = input_info(sess)
    fixed = shape[0] if isinstance(shape[0], int) else None
    step = fixed or batch_size
    outs = []
    for i in range(0, len(x), step):
        chunk = x[i: i + step]
        if fixed and len(chunk) != fixed:
            pad = np.repeat(chunk[-1:], fixed - len(chunk), axis=0)
            outs.append(sess.run(None, {name: np.concatenate([chunk, pad])})[0][: len(chunk)])
        else:
            outs.append(sess.run(None, {name: chunk})[0])
    return np.concatenate(outs)


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

    def to_dict(self) -> dict:
        return asdict(self)


class LatencyProbe:
    """One loaded model and an input; ``step()`` times one inference (used to interleave models)."""

    def __init__(self, path: str | Path, batch: int = 1, threads: int = 2, seed: int = 0):
        self.path = str(path)
        self.threads = threads
        self.sess = session(path, threads)
        self.name, shape = input_info(self.sess)
        dims = [batch if i == 0 else (d if isinstance(d, int) else 1) for i, d in enumerate(shape)]
        if isinstance(shape[0], int) and shape[0] != batch:
            raise ArtifactError(f"{path} has a fixed batch of {shape[0]}; it cannot be profiled at batch {batch}.")
        self.x = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
        self.batch = batch
        self.times: list[float] = []

    def step(self) -> None:
        start = time.perf_counter()
        self.sess.run(None, {self.name: self.x})
        self.times.append((time.perf_counter() - start) * 1000.0)

    def measurement(self, warmup: int) -> Measurement:
        t = np.array(self.times[warmup:]) if len(self.times) > warmup else np.array(self.times)
        return Measurement("ort-cpu", self.batch, self.threads, len(t), warmup,
                           round(float(np.percentile(t, 50)), 4), round(float(np.percentile(t, 90)), 4),
                           round(float(np.percentile(t, 99)), 4), round(float(t.mean()), 4))


def measure_interleaved(paths: dict[str, str | Path], runs: int = 100, warmup: int = 10,
                        batch: int = 1, threads: int = 2) -> dict[str, Measurement]:
    """Latency of several models measured round-robin, so machine noise hits all of them alike."""
    probes = {key: LatencyProbe(p, batch, threads) for key, p in paths.items()}
    for _ in range(warmup + runs):
        for probe in probes.values():
            probe.step()
    return {key: probe.measurement(warmup) for key, probe in probes.items()}
