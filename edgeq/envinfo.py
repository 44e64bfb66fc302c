"""Versions and machine facts recorded in manifests and reports."""
from __future__ import annotations

import importlib.metadata
import os
import platform


def package_versions(names=("edgeq", "torch", "timm", "onnx", "onnxruntime", "onnxscript", "openvino", "numpy")) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": _cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "isa": isa_flags(), "int8_dot_saturates": int8_dot_saturates()}


# the CPU features int8 and bf16 speed depends on (x86 and Arm names as /proc/cpuinfo spells them)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
             "asimd", "asimddp", "i8mm", "sve")


def isa_flags() -> list[str]:
    """Which of ISA_FLAGS this CPU has (empty where /proc/cpuinfo is not readable)."""
    flags = _cpu_flags()
    return [f for f in ISA_FLAGS if f in flags]


def int8_dot_saturates() -> bool:
    """True on x86 CPUs without VNNI: their u8×s8 int8 kernels (vpmaddubsw) add pairs of products in
    saturating int16, so full-range int8 weights can overflow (ONNX Runtime's documented reason for
    ``reduce_range``). 7-bit weights never do."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    flags = _cpu_flags()
    return not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags) if flags else True


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):   # x86 / Arm
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
