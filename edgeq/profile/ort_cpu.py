"""ONNX Runtime on the local CPU: sessions, batched inference and latency measurement."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import ArtifactError


def session(path: str | Path, threads: int | None = None, quiet: bool = False):
    """``quiet``: no ONNX Runtime error log either (for probes whose failure edgeq explains itself)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 4 if quiet else 3
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


class LatencyProbe:
    """One loaded model and an input; ``step()`` times one inference (used to interleave models)."""

    target = "ort-cpu"

    def __init__(self, path: str | Path, batch: int = 1, threads: int = 2, seed: int = 0):
        self.path = str(path)
        self.threads = threads
        self.batch = batch
        self.sess = session(path, threads)
        self.name, shape = input_info(self.sess)
        self.x = random_input(path, shape, batch, seed)
        self.times: list[float] = []

    def infer(self) -> None:
        self.sess.run(None, {self.name: self.x})

    def step(self, record: bool = True) -> None:
        start = time.perf_counter()
        self.infer()
        if record:
            self.times.append((time.perf_counter() - start) * 1000.0)

    def measurement(self, warmup: int):
        from .latency import Measurement
        return Measurement.from_times(self.target, self.batch, self.threads, self.times, warmup)


def random_input(path, shape: list, batch: int, seed: int) -> np.ndarray:
    """A fixed random input of the model's shape at ``batch`` (refused when the batch axis is fixed)."""
    if isinstance(shape[0], int) and shape[0] != batch:
        raise ArtifactError(f"{path} has a fixed batch of {shape[0]}; it cannot be profiled at batch {batch}.")
    dims = [batch if i == 0 else (d if isinstance(d, int) else 1) for i, d in enumerate(shape)]
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def op_breakdown(path: str | Path, x: np.ndarray, runs: int = 20, threads: int = 2) -> dict[str, dict]:
    """Time per inference by op type, from ONNX Runtime's own profiler (after its graph fusions, so an
    int8 kernel shows as e.g. QLinearConv or MatMulIntegerToFloat)."""
    import json
    import tempfile

    import onnxruntime as ort
    with tempfile.TemporaryDirectory(prefix="edgeq-ortprof-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "p")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name, _ = input_info(sess)
        for _ in range(runs):
            sess.run(None, {name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict[str, dict] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        op = e.get("args", {}).get("op_name", "?")
        entry = totals.setdefault(op, {"ms": 0.0, "nodes": set()})
        entry["ms"] += e["dur"] / 1000.0 / runs
        entry["nodes"].add(e["name"])
    return {op: {"ms": round(v["ms"], 3), "nodes": len(v["nodes"]), "kernel": op}
            for op, v in sorted(totals.items(), key=lambda kv: -kv[1]["ms"])}
