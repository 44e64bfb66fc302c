"""Evaluate an exported artifact with a target's runtime (ONNX Runtime by default), or a bundle's fake-quant torch model: a metric (top-1 for
class labels by default, or any built-in / user metric), and fidelity to FP32, per output, whenever known."""
from __future__ import annotations

import time
from pathlib import Path

from .bundle import float_graph, read_bundle
from .data import load_data
from .errors import ArtifactError, CalibrationError
from .export.onnx import onnx_in, read_artifact
from .metrics import compare_outputs, metric_for
from .models.intake import InputSpec
from .profile.latency import open_session
from .runtimes import ort as ort_cpu
from .target import DEFAULT_TARGET, get_target
from .samples import run_graph


def input_specs_of(record: dict, sess) -> list[InputSpec]:
    if record.get("inputs"):
        return [InputSpec.from_dict(d) for d in record["inputs"]]
    if record.get("input"):
        return [InputSpec.from_dict(record["input"])]
    return [InputSpec(tuple(d if isinstance(d, int) else 1 for d in shape), name=name,
                      dtype="int64" if "int" in kind else "float32") for name, shape, kind in sess.input_info]


def evaluate_artifact(artifact: str | Path, data: str, limit: int | None = None,
                      reference: str | None = None, threads: int | None = None, metric=None,
                      labels: str | None = None, target: str | None = None) -> dict:
    """``metric``: a MetricChoice (default: top-1 for class labels, output fidelity only otherwise)."""
    artifact = onnx_in(artifact)
    if Path(artifact).is_dir():
        return evaluate_bundle(artifact, data, limit, metric, labels, get_target(target).name if target else None)
    target = target or DEFAULT_TARGET
    record = read_artifact(artifact)
    target_name, sess = open_session(artifact, target, None, threads)
    dataset = load_data(data, input_specs_of(record, sess), limit=limit, default_split="test",
                        what="evaluation", labels=labels)
    start = time.perf_counter()
    outputs = sess.run(dataset.samples)
    seconds = time.perf_counter() - start
    result = {"artifact": str(artifact), "precision": record.get("precision"), "target": target_name,
              "runtime": get_target(target_name).runtime,
              "data": dataset.source, "samples": len(dataset), "seconds": round(seconds, 2)}
    ref = _reference_outputs(record, dataset.samples, reference, threads)
    return _scores(result, artifact, outputs, dataset, ref, metric)


def evaluate_bundle(path: str | Path, data: str, limit: int | None = None, metric=None,
                    labels: str | None = None, target: str | None = None) -> dict:
    """The bundle's fake-quant model in torch (the reference that ONNX exports are checked against), with
    ``target``'s latency placement (default: the bundle's default target's)."""
    from .bundle import quantized_graph
    bundle = read_bundle(path, target)
    dataset = load_data(data, bundle.input_specs, limit=limit, default_split="test", what="evaluation",
                        labels=labels)
    batch = _graph_batch(bundle)
    start = time.perf_counter()
    outputs = run_graph(quantized_graph(bundle), dataset.samples, batch)
    seconds = time.perf_counter() - start
    result = {"artifact": str(path), "precision": bundle.manifest["recipe"]["name"],
              "runtime": "torch fake-quant", "data": dataset.source, "samples": len(dataset),
              "seconds": round(seconds, 2), **({"placement_of": target} if target else {})}
    ref = run_graph(float_graph(bundle), dataset.samples, batch), f"torch float model of {path}"
    return _scores(result, path, outputs, dataset, ref, metric)


def _graph_batch(bundle) -> int:
    return 64 if bundle.manifest["dynamic_batch"] else bundle.input_shape[0]


def _scores(result: dict, artifact, outputs, dataset, ref: tuple | None, choice) -> dict:
    metric = choice.load() if choice is not None else metric_for(dataset)
    if ref is not None:
        result["vs_fp32"] = compare_outputs(ref[0], outputs)
        result["vs_fp32"]["reference"] = ref[1]
    if metric is not None:
        if metric.needs_reference and ref is None:
            raise CalibrationError(f"metric {metric.name} compares with FP32 outputs and no FP32 reference is "
                                   f"known for {artifact}; pass --reference fp32.onnx.")
        reference_out = ref[0] if ref is not None else None
        score = metric.score(outputs, dataset.labels, reference_out)
        entry = {"name": metric.name, "unit": metric.unit, "higher_is_better": metric.higher_is_better,
                 "value": round(metric.display(score), 4)}
        if ref is not None:
            fp32 = metric.score(ref[0], dataset.labels, ref[0])
            entry.update(fp32=round(metric.display(fp32), 4), drop=round(metric.drop(fp32, score), 4))
        result["metric"] = entry
        if metric.name == "top1":   # the keys reports and the bench have always read
            result["top1"] = round(score, 4)
            if ref is not None:
                result["fp32_top1"] = round(fp32, 4)
                result["drop_pp"] = round(100 * (fp32 - score), 2)
    elif ref is None:
        raise CalibrationError(f"{dataset.source} has no labels and no FP32 reference is known for {artifact}; "
                               f"pass labelled data, --metric, or --reference fp32.onnx.")
    return result


def _reference_outputs(record: dict, samples, reference: str | None, threads) -> tuple | None:
    if reference:
        ref_record = read_artifact(reference)
        if ref_record.get("precision") not in ("fp32", "unknown"):
            raise ArtifactError(f"--reference {reference} is a {ref_record['precision']} artifact, not FP32.")
        return ort_cpu.run(ort_cpu.session(reference, threads), samples), f"{reference} (ONNX Runtime)"
    bundle_path = record.get("bundle")
    if bundle_path and Path(bundle_path).is_dir():
        bundle = read_bundle(bundle_path)
        return run_graph(float_graph(bundle), samples, _graph_batch(bundle)), f"torch float model of {bundle_path}"
    return None
