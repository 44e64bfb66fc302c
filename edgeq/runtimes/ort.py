"""ONNX Runtime, CPU execution provider: the ``ort`` runtime, and the sessions edgeq's exporters check with."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np

from .. import runner
from ..errors import ArtifactError
from ..samples import Outputs, run_batches
from .base import ArtifactForm, Runtime, Session, onnx_file
from .feeds import random_feeds


def session(path: str | Path, threads: int | None = None, quiet: bool = False):
    """``quiet``: no ONNX Runtime error log either (for probes whose failure edgeq explains itself)."""
    try:
        return runner.open_session(Path(path), threads, quiet)
    except runner.RunnerError as exc:
        raise ArtifactError(f"{path}: {exc}") from None


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


class OrtSession(Session):
    def __init__(self, path: str | Path, batch: int | None = 1, threads: int | None = 2, seed: int = 0):
        super().__init__()
        self.path, self.batch, self.threads = str(path), batch, threads
        self.sess = session(path, threads)
        self.names = [i.name for i in self.sess.get_inputs()]
        self.input_info = [(i.name, list(i.shape), i.type) for i in self.sess.get_inputs()]
        first = self.input_info[0][1]
        self.fixed_batch = first[0] if isinstance(first[0], int) else None
        self.feeds = list(random_feeds(path, self.input_info, batch or self.fixed_batch or 1, seed).values())

    def infer(self, arrays) -> list[np.ndarray]:
        return self.sess.run(None, dict(zip(self.names, arrays)))


class OrtRuntime(Runtime):
    name = "ort"
    description = "ONNX Runtime, CPU execution provider"
    form = ArtifactForm("onnx", "int8")
    package, install = "onnxruntime", "pip install onnxruntime"
    also_reads = ("tensorrt",)   # a TensorRT export folder holds a QDQ model.onnx

    def versions(self) -> dict:
        import onnxruntime as ort
        return {"onnxruntime": importlib.metadata.version("onnxruntime"),
                "providers": ort.get_available_providers()}

    def open(self, artifact, batch: int | None = 1, threads: int | None = None, options: dict | None = None) -> Session:
        return OrtSession(onnx_file(artifact), batch, threads)

    def ops(self, artifact, x, runs: int, threads: int | None) -> dict[str, dict]:
        return op_breakdown(artifact, x, runs, threads or 0)


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
    return {op: {"ms": round(v["ms"], 3), "nodes": len(v["nodes"]), "kernel": op, "int8": int8_ran(op)}
            for op, v in sorted(totals.items(), key=lambda kv: -kv[1]["ms"])}


# What ONNX Runtime's CPU EP runs after its QDQ fusions (qdq_selector_action_transformer.cc): an int8 group
# becomes one of these kernels; a Q or DQ left standing means the ops around it run in float.
INT8_KERNELS = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize", "QAttention", "QEmbed")


def int8_ran(op: str) -> str:
    """``yes`` for an integer kernel, ``q/dq`` for a (de)quantization left standing, ``no`` for float."""
    if op.startswith(INT8_KERNELS):
        return "yes"
    return "q/dq" if op in ("QuantizeLinear", "DequantizeLinear") else "no"


RUNTIME = OrtRuntime()
