"""The library surface the CLI calls: quantize(), export(), inspect(), evaluate(), profile()."""
from __future__ import annotations

from pathlib import Path

from .errors import ArtifactError, CalibrationError
from .fsutil import check_output

EXPORT_TARGETS = ("onnx",)
LATER_TARGETS = {"tensorrt": "TensorRT", "coreml": "CoreML"}


def quantize(model: str, calib: str = "zoo", recipe: str = "w8a8-fast", out: str | Path = "model.edgeq",
             *, weights: str | None = None, num_classes: int | None = None, in_chans: int | None = None,
             input_shape: str | tuple | None = None, trust_pickle: bool = False, seed: int = 0,
             calib_size: int | None = None, batch_size: int | None = None, force: bool = False) -> dict:
    """Quantize ``model`` with ``recipe`` on ``calib`` data and write a bundle to ``out``."""
    import dataclasses

    from .data import load_data
    from .models.intake import load_model, parse_input_shape
    from .quant.pipeline import quantize_model
    from .quant.recipe import CalibSpec, load_recipe
    from .trace.capture import check_input_shape

    out = check_output(out, force, is_dir=True)
    rec = load_recipe(recipe)
    if calib_size is not None or batch_size is not None:
        if (calib_size is not None and calib_size <= 0) or (batch_size is not None and batch_size <= 0):
            raise CalibrationError("--calib-size and --batch-size must be positive.")
        rec = dataclasses.replace(rec, calibration=CalibSpec(
            calib_size or rec.calibration.samples, batch_size or rec.calibration.batch_size))
    shape = parse_input_shape(input_shape) if isinstance(input_shape, str) else input_shape
    loaded = load_model(model, weights, num_classes, in_chans, shape, trust_pickle)
    check_input_shape(loaded)
    data = load_data(calib, loaded.input_spec, limit=rec.calibration.samples)
    return quantize_model(loaded, data, rec, out, seed)


def export(bundle: str | Path, to: str = "onnx", out: str | Path = "model.onnx", *,
           precision: str = "int8", opset: int = 18, force: bool = False) -> dict:
    if to in LATER_TARGETS:
        raise ArtifactError(f"export to {LATER_TARGETS[to]} is not implemented yet in this edgeq version; "
                            f"use --to onnx.")
    if to not in EXPORT_TARGETS:
        raise ArtifactError(f"unknown export target {to!r}: use {', '.join(EXPORT_TARGETS)}.")
    from .export.onnx import export_onnx
    return export_onnx(bundle, out, precision, opset, force)


def inspect(model: str, *, weights: str | None = None, num_classes: int | None = None,
            in_chans: int | None = None, input_shape: str | None = None, trust_pickle: bool = False) -> dict:
    """Block map, parameters, MACs and quantizable ops of a model."""
    from .models.intake import load_model, parse_input_shape
    from .trace.blocks import build_block_map
    from .trace.capture import capture, check_input_shape, fold_batchnorm, has_dynamic_batch, to_graph_module

    loaded = load_model(model, weights, num_classes, in_chans, parse_input_shape(input_shape), trust_pickle)
    check_input_shape(loaded)
    exported = capture(loaded)
    gm = to_graph_module(exported)
    folded = fold_batchnorm(gm)
    block_map = build_block_map(gm)
    return {"model": loaded.spec, "input": loaded.input_spec.to_dict(),
            "dynamic_batch": has_dynamic_batch(exported), "batchnorm_folded": len(folded),
            "quantizable_ops": quantizable_summary(block_map.op_counts), **block_map.to_dict()}


QUANTIZABLE = {"conv2d.default": "int8 weights + input",
               "linear.default": "int8 weights + input"}
FLOAT_FOR_NOW = {"scaled_dot_product_attention.default", "matmul.default", "bmm.default",
                 "softmax.int", "_softmax.default", "layer_norm.default", "group_norm.default",
                 "batch_norm.default", "gelu.default", "silu.default", "silu_.default",
                 "hardswish.default", "hardswish_.default", "add.Tensor", "mul.Tensor"}


def quantizable_summary(op_counts: dict) -> dict:
    """Per op type: how many, and how w8a8-fast treats it."""
    summary = {}
    for op, count in op_counts.items():
        if op in QUANTIZABLE:
            summary[op] = {"count": count, "quantized": True, "how": QUANTIZABLE[op]}
        elif op in FLOAT_FOR_NOW:
            summary[op] = {"count": count, "quantized": False, "how": "float"}
    return summary


def evaluate(artifact: str | Path, data: str = "zoo:test", *, limit: int | None = None,
             reference: str | None = None, threads: int | None = None) -> dict:
    from .evaluate import evaluate_artifact
    return evaluate_artifact(artifact, data, limit, reference, threads)


def profile(artifact: str | Path, *, threads: int = 2, runs: int = 100, warmup: int = 10,
            batch: int = 1) -> dict:
    """ONNX Runtime CPU latency of one artifact (warm-up, then p50/p90/p99 over ``runs``)."""
    from .envinfo import machine, package_versions
    from .export.onnx import read_artifact
    from .profile.ort_cpu import measure_interleaved

    if runs <= 0 or warmup < 0 or threads <= 0 or batch <= 0:
        raise ArtifactError("--runs, --threads and --batch must be positive and --warmup not negative.")
    record = read_artifact(artifact)
    m = measure_interleaved({"model": artifact}, runs=runs, warmup=warmup, batch=batch, threads=threads)["model"]
    return {"artifact": str(artifact), "precision": record.get("precision"), **m.to_dict(),
            "env": {"machine": machine(), "onnxruntime": package_versions(("onnxruntime",))["onnxruntime"]}}
