"""Engine building with the TensorRT Python API (imported only where ``tensorrt`` is installed).

NOT EXERCISED ON EDGEQ'S CI: TensorRT cannot be installed on these machines, so this file is kept small
and everything around it (the ONNX it reads, the trtexec fallback) is tested instead.
"""
from __future__ import annotations

from pathlib import Path


def build(trt, onnx_path: Path, engine_path: Path, profile, workspace_mib: int) -> dict:
    """``profile``: (min, opt, max) input shapes for a dynamic input (``tensorrt.shape_profile``), or None."""
    log = _Log(trt)
    builder = trt.Builder(log)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, log)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        return {"built": False, "reason": "TensorRT's ONNX parser rejected the model", "errors": errors}
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    cache_path = engine_path.parent / "timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if profile is not None:
        shapes = builder.create_optimization_profile()
        shapes.set_shape("input", *profile)
        config.add_optimization_profile(shapes)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return {"built": False, "reason": "the TensorRT builder failed", "log": log.summary()}
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"built": True, "path": engine_path.name, "bytes": engine_path.stat().st_size,
            "tensorrt": trt.__version__, "log": log.summary()}


class _Log:
    """Collects the builder's messages; the record keeps counts and the warnings and errors."""

    def __new__(cls, trt):
        class Log(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages = []

            def log(self, severity, msg):
                self.messages.append((str(severity).split(".")[-1], msg))

            def summary(self):
                counts = {}
                for severity, _ in self.messages:
                    counts[severity] = counts.get(severity, 0) + 1
                notable = [f"{s}: {m}" for s, m in self.messages if s in ("WARNING", "ERROR", "INTERNAL_ERROR")]
                return {"counts": counts, "warnings_and_errors": notable[:50]}
        return Log()
