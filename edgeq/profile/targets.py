"""Profiling targets: where an artifact runs and how latency and outputs are obtained there.

``ort-cpu`` (ONNX Runtime, CPU execution provider) is the default; ``openvino-cpu`` reads the same
ONNX with OpenVINO. Placement search and ``edgeq bench`` measure per target, because what is fast
differs between runtimes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import EdgeqError

DEFAULT_TARGET = "ort-cpu"


@dataclass(frozen=True)
class Target:
    name: str
    runtime: str            # short name used in bench rows
    description: str
    probe: Callable         # (path, batch, threads) -> LatencyProbe
    outputs: Callable       # (path, x, threads) -> np.ndarray
    ops: Callable           # (path, x, runs, threads) -> {op type: {ms, nodes, kernel}}


def _ort_probe(path, batch, threads):
    from .ort_cpu import LatencyProbe
    return LatencyProbe(path, batch, threads)


def _ort_outputs(path, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    from . import ort_cpu
    return ort_cpu.run(ort_cpu.session(path, threads), x)


def _ort_ops(path, x, runs, threads):
    from .ort_cpu import op_breakdown
    return op_breakdown(path, x, runs, threads)


def _ov_ops(path, x, runs, threads):
    from .openvino_cpu import op_breakdown
    return op_breakdown(path, x, runs, threads)


def _ov_probe(path, batch, threads):
    from .openvino_cpu import LatencyProbe
    return LatencyProbe(path, batch, threads)


def _ov_outputs(path, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    from . import openvino_cpu
    return openvino_cpu.run(openvino_cpu.compile_model(path, threads), x)


TARGETS = {
    "ort-cpu": Target("ort-cpu", "ort", "ONNX Runtime, CPU execution provider", _ort_probe, _ort_outputs,
                      _ort_ops),
    "openvino-cpu": Target("openvino-cpu", "openvino", "OpenVINO, CPU plugin (f32 inference precision)",
                           _ov_probe, _ov_outputs, _ov_ops),
}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise EdgeqError(f"unknown target {name!r}: use {', '.join(TARGETS)}.")
    if name == "openvino-cpu":
        from .openvino_cpu import _openvino
        _openvino()  # a missing extra is one clear sentence, before any work starts
    return TARGETS[name]


