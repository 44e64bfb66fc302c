"""ONNX Runtime on the local CPU: sessions, batched inference and latency measurement."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..samples import Outputs, run_batches


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


def run(sess, samples, batch_size: int = 64) -> Outputs:
    """Outputs for all ``samples`` (Samples, an array, or one array per input); batches padded to a fixed
    batch axis when the model has one."""
    names = [i.name for i in sess.get_inputs()]
    _, shape = input_info(sess)
    fixed = shape[0] if isinstance(shape[0], int) else None
    return run_batches(lambda arrays: sess.run(None, dict(zip(names, arrays))), samples, batch_size, fixed)


class LatencyProbe:
    """One loaded model and an input; ``step()`` times one inference (used to interleave models)."""

    target = "ort-cpu"

    def __init__(self, path: str | Path, batch: int = 1, threads: int = 2, seed: int = 0):
        self.path = str(path)
        self.threads = threads
        self.batch = batch
        self.sess = session(path, threads)
        inputs = [(i.name, list(i.shape), i.type) for i in self.sess.get_inputs()]
        self.feeds = random_feeds(path, inputs, batch, seed)
        self.times: list[float] = []

    def infer(self) -> None:
        self.sess.run(None, self.feeds)

    def step(self, record: bool = True) -> None:
        start = time.perf_counter()
        self.infer()
        if record:
            self.times.append((time.perf_counter() - start) * 1000.0)

    def measurement(self, warmup: int):
        from .latency import Measurement
        return Measurement.from_times(self.target, self.batch, self.threads, self.times, warmup)


def random_input(path, shape: list, batch: int, seed: int, example: list | None = None,
                 integer: bool = False) -> np.ndarray:
    """A fixed random input of the model's shape at ``batch`` (refused when the batch axis is fixed).

    Symbolic axes other than the batch take their size from ``example`` (the shape edgeq exported with);
    integer inputs (token ids) are zeros, a valid id for any vocabulary."""
    if isinstance(shape[0], int) and shape[0] != batch:
        raise ArtifactError(f"{path} has a fixed batch of {shape[0]}; it cannot be profiled at batch {batch}.")
    dims = [batch if i == 0 else (d if isinstance(d, int) else (example[i] if example else 1))
            for i, d in enumerate(shape)]
    if integer:
        return np.zeros(dims, dtype=np.int64)
    return np.random.default_rng(seed).standard_normal(dims).astype(np.float32)


def example_shapes(path) -> list | None:
    """The input shapes edgeq exported the model with (ONNX metadata), for its symbolic axes."""
    import json

    import onnx
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return json.loads(props["edgeq_input_shapes"])
    except Exception:  # noqa: BLE001 - a foreign ONNX has no such metadata
        return None


def random_feeds(path, inputs: list[tuple], batch: int, seed: int) -> dict[str, np.ndarray]:
    """{name: array} for ``inputs`` given as (name, shape, type string such as 'tensor(int64)')."""
    symbolic = any(not isinstance(d, int) for _, shape, _ in inputs for d in shape[1:])
    examples = (example_shapes(path) or []) if symbolic else []   # reading the file only when needed
    return {name: random_input(path, shape, batch, seed + i, examples[i] if i < len(examples) else None,
                               "int" in str(kind))
            for i, (name, shape, kind) in enumerate(inputs)}


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
