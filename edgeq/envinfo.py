"""Versions and machine facts recorded in manifests and reports."""
from __future__ import annotations

import importlib.metadata
import os
import platform


def package_versions(names=("edgeq", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "numpy")) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": _cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
