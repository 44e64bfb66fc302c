"""Versions and machine facts recorded in manifests and reports."""
from __future__ import annotations

import importlib.metadata

from . import runner


def package_versions(names=("edgeq", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "openvino", "numpy")) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# The device facts live in the runner, which must stand alone on a device; the host records the same ones.
machine = runner.machine
isa_flags = runner.isa_flags
int8_dot_saturates = runner.int8_dot_saturates
ISA_FLAGS = runner.ISA_FLAGS
