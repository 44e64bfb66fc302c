"""Evaluate an exported artifact in ONNX Runtime, or a bundle's fake-quant torch model: top-1 with labels,
fidelity to FP32 always when known."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .bundle import float_graph, read_bundle
from .data import load_data
from .errors import ArtifactError, CalibrationError
from .export.onnx import onnx_in, read_artifact
from .metrics import compare, top1
from .models.intake import InputSpec
from .profile import ort_cpu
from .quant.pipeline import run_graph


def input_spec_of(record: dict, sess) -> InputSpec:
    if record.get("input"):
        return InputSpec.from_dict(record["input"])
    _, shape = ort_cpu.input_info(sess)
    return InputSpec(tuple(d if isinstance(d, int) else 1 for d in shape))


def evaluate_artifact(artifact: str | Path, data: str, limit: int | None = None,
                      reference: str | None = None, threads: int | None = None) -> dict:
    artifact = onnx_in(artifact)
    if Path(artifact).is_dir():
        return evaluate_bundle(artifact, data, limit)
    record = read_artifact(artifact)
    sess = ort_cpu.session(artifact, threads)
    spec = input_spec_of(record, sess)
    dataset = load_data(data, spec, limit=limit, default_split="test", what="evaluation")
    start = time.perf_counter()
    outputs = ort_cpu.run(sess, dataset.x)
    seconds = time.perf_counter() - start
    result = {"artifact": str(artifact), "precision": record.get("precision"), "runtime": "onnxruntime",
              "data": dataset.source, "samples": len(dataset), "seconds": round(seconds, 2)}
    ref = _reference_outputs(record, dataset.x, reference, threads)
    return _scores(result, artifact, outputs, dataset, ref)


def evaluate_bundle(path: str | Path, data: str, limit: int | None = None) -> dict:
    """The bundle's fake-quant model in torch (the reference that ONNX exports are checked against)."""
    from .bundle import quantized_graph
    bundle = read_bundle(path)
    dataset = load_data(data, InputSpec.from_dict(bundle.manifest["input"]), limit=limit,
                        default_split="test", what="evaluation")
    batch = _graph_batch(bundle)
    start = time.perf_counter()
    outputs = run_graph(quantized_graph(bundle), dataset.x, batch)
    seconds = time.perf_counter() - start
    result = {"artifact": str(path), "precision": bundle.manifest["recipe"]["name"],
              "runtime": "torch fake-quant", "data": dataset.source, "samples": len(dataset),
              "seconds": round(seconds, 2)}
    ref = run_graph(float_graph(bundle), dataset.x, batch), f"torch float model of {path}"
    return _scores(result, path, outputs, dataset, ref)


def _graph_batch(bundle) -> int:
    return 64 if bundle.manifest["dynamic_batch"] else bundle.input_shape[0]


def _scores(result: dict, artifact, outputs: np.ndarray, dataset, ref: tuple | None) -> dict:
    if dataset.labels is not None:
        result["top1"] = round(top1(outputs, dataset.labels), 4)
    if ref is not None:
        result["vs_fp32"] = {k: v for k, v in compare(ref[0], outputs).items() if k != "samples"}
        result["vs_fp32"]["reference"] = ref[1]
        if dataset.labels is not None:
            result["fp32_top1"] = round(top1(ref[0], dataset.labels), 4)
            result["drop_pp"] = round(100 * (result["fp32_top1"] - result["top1"]), 2)
    if "top1" not in result and ref is None:
        raise CalibrationError(f"{dataset.source} has no labels and no FP32 reference is known for {artifact}; "
                               f"pass labelled data or --reference fp32.onnx.")
    return result


def _reference_outputs(record: dict, x: np.ndarray, reference: str | None, threads) -> tuple | None:
    if reference:
        ref_record = read_artifact(reference)
        if ref_record.get("precision") not in ("fp32", "unknown"):
            raise ArtifactError(f"--reference {reference} is a {ref_record['precision']} artifact, not FP32.")
        return ort_cpu.run(ort_cpu.session(reference, threads), x), f"{reference} (ONNX Runtime)"
    bundle_path = record.get("bundle")
    if bundle_path and Path(bundle_path).is_dir():
        bundle = read_bundle(bundle_path)
        return run_graph(float_graph(bundle), x, _graph_batch(bundle)), f"torch float model of {bundle_path}"
    return None
