"""OpenVINO on the local CPU (optional extra ``openvino``): the ``openvino`` runtime reads the same QDQ ONNX
as ONNX Runtime.

OpenVINO turns QuantizeLinear/DequantizeLinear pairs into FakeQuantize and runs int8 kernels where its
low-precision transformations can move the quantization through an op, so the fast placement differs
from ONNX Runtime's; edgeq searches it separately.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, EdgeqError
from .base import ArtifactForm, Runtime, Session, onnx_file
from .feeds import random_feeds


def _openvino():
    try:
        import openvino
    except ImportError:
        raise EdgeqError('the openvino runtime needs OpenVINO: pip install "edgeq[openvino]".') from None
    return openvino


def compile_model(path: str | Path, threads: int | None = None, batch: int | None = None, profile: bool = False):
    """``batch`` fixes a dynamic batch axis (static shapes: what deployments run, and the CPU plugin picks
    different kernels for them); ``profile`` turns on its per-layer performance counters."""
    ov = _openvino()
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "PERF_COUNT": profile}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        model = core.read_model(str(path))
        if batch is not None:
            shapes = {}
            for port in model.inputs:
                shape = port.get_partial_shape()
                if shape[0].is_dynamic:
                    shape[0] = batch
                    shapes[port] = shape
            if shapes:
                model.reshape(shapes)
        return core.compile_model(model, "CPU", config)
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises plain RuntimeErrors
        raise ArtifactError(f"OpenVINO cannot load {path}: {str(exc).strip().splitlines()[-1][:200]}.") from None


def input_shape(compiled) -> list:
    return [d.get_length() if d.is_static else None for d in compiled.input(0).get_partial_shape()]


class OpenvinoSession(Session):
    """f32 inference precision: no silent bf16/fp16 on CPUs that have them."""

    def __init__(self, path: str | Path, batch: int | None = 1, threads: int | None = 2, seed: int = 0):
        super().__init__()
        self.path, self.batch, self.threads = str(path), batch, threads
        self.compiled = compile_model(path, threads, batch)
        self.request = self.compiled.create_infer_request()
        self.fixed_batch = input_shape(self.compiled)[0]
        self.input_info = [(port.get_any_name(), [d.get_length() if d.is_static else None
                                                  for d in port.get_partial_shape()], str(port.get_element_type()))
                           for port in self.compiled.inputs]
        self.feeds = list(random_feeds(path, self.input_info, batch or self.fixed_batch or 1, seed).values())

    def infer(self, arrays) -> list[np.ndarray]:
        result = self.request.infer({i: np.ascontiguousarray(a) for i, a in enumerate(arrays)})
        return [np.array(result[out]) for out in self.compiled.outputs]


class OpenvinoRuntime(Runtime):
    name = "openvino"
    description = "OpenVINO, CPU plugin (f32 inference precision)"
    form = ArtifactForm("onnx", "int8")
    package, install = "openvino", 'pip install "edgeq[openvino]"'
    also_reads = ("tensorrt",)   # a TensorRT export folder holds a QDQ model.onnx
    qdq_form = "openvino"   # attention matmuls, residual adds and pooling in int8 too (export.openvino_form)

    def versions(self) -> dict:
        ov = _openvino()
        return {"openvino": ov.get_version(), "devices": ov.Core().available_devices}

    def open(self, artifact, batch: int | None = 1, threads: int | None = None, options: dict | None = None) -> Session:
        return OpenvinoSession(onnx_file(artifact), batch, threads)

    def ops(self, artifact, x, runs: int, threads: int | None) -> dict[str, dict]:
        return op_breakdown(artifact, x, runs, threads or 0)


def op_breakdown(path: str | Path, x: np.ndarray, runs: int = 20, threads: int = 2) -> dict[str, dict]:
    """Time per inference by layer type and the kernel OpenVINO chose (its exec type names the precision,
    e.g. ``jit_avx2_I8`` vs ``jit_avx2_FP32``), from the CPU plugin's performance counters. The batch is fixed
    to ``x``'s, as the sessions that time it do (a dynamic batch ran other kernels)."""
    compiled = compile_model(path, threads or None, batch=x.shape[0], profile=True)
    request = compiled.create_infer_request()
    totals: dict[tuple, float] = {}
    counts: dict[tuple, int] = {}
    for _ in range(runs):
        request.infer({0: x})
        for info in request.profiling_info:
            if info.real_time.total_seconds() <= 0:
                continue
            key = (info.node_type, info.exec_type)
            totals[key] = totals.get(key, 0.0) + info.real_time.total_seconds() * 1000.0 / runs
            counts[key] = counts.get(key, 0) + 1
    return {f"{t} [{k}]": {"ms": round(ms, 3), "nodes": counts[(t, k)] // runs, "kernel": k, "int8": int8_ran(t, k)}
            for (t, k), ms in sorted(totals.items(), key=lambda kv: -kv[1])}


def int8_ran(node_type: str, kernel: str) -> str:
    """``yes`` when the CPU plugin's kernel ran on int8 data (its exec type ends in ``I8``/``U8``), ``q/dq`` for
    a FakeQuantize left standing (it runs in f32), ``no`` otherwise."""
    if node_type == "FakeQuantize":
        return "q/dq"
    return "yes" if re.search(r"(^|_)[IU]8$", kernel, re.IGNORECASE) else "no"


RUNTIME = OpenvinoRuntime()
