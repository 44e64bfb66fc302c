"""Optional ONNX passes after export, each checked numerically before it is kept.

- ``make_batch_dynamic``: a bundle captured at a fixed batch gets a symbolic batch axis, kept only if the
  graph really runs at another batch size with the same per-sample outputs.
- ``simplify``: onnxslim's graph simplification, kept only if the outputs match and no Q/DQ pair was
  folded away (a simplifier that constant-folds a DequantizeLinear would silently turn int8 weights back
  into float ones).
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import onnx

from ..errors import ArtifactError
from ..runtimes import ort as ort_cpu
from .qdq import count_ops

TOLERANCE = 1e-4   # max abs output difference, relative to the output's magnitude where that exceeds 1


def make_batch_dynamic(path: Path, samples) -> dict:
    reference = ort_cpu.run(ort_cpu.session(path), samples)
    model = onnx.load(str(path))
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = "batch"
    del model.graph.value_info[:]   # intermediate shapes still name the old batch size
    onnx.save(model, str(path))
    try:
        batched = ort_cpu.run(ort_cpu.session(path, quiet=True), samples, batch_size=max(2, min(8, len(samples))))
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types when a reshape bakes the batch in
        node = re.search(r"running (\w+) node\. Name:'([^']+)'", str(exc))
        where = f"its {node.group(1)} node {node.group(2)} holds it" if node else "a reshape or view holds it"
        raise ArtifactError(f"this model's graph fixes its batch size ({where}), so --dynamic-batch cannot "
                            f"apply; capture the model with a dynamic batch axis instead.") from None
    diff = _diff(reference, batched)
    if diff > TOLERANCE:
        raise ArtifactError(f"with a dynamic batch axis the outputs change by {diff:.3g}; this graph mixes "
                            f"samples along the batch, so --dynamic-batch cannot apply.")
    return {"checked_batch": max(2, min(8, len(samples))), "max_abs_diff": diff}


def simplify(path: Path, samples) -> dict:
    import onnxslim
    before = onnx.load(str(path))
    reference = ort_cpu.run(ort_cpu.session(path), samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            slim = onnxslim.slim(before)
        except Exception as exc:  # noqa: BLE001 - a failing optional pass leaves the export as it was
            return {"kept": False, "reason": f"onnxslim failed: {str(exc).splitlines()[0][:160]}"}
    ops_before, ops_after = count_ops(before), count_ops(slim)
    qdq = ("QuantizeLinear", "DequantizeLinear")
    if any(ops_before.get(op, 0) != ops_after.get(op, 0) for op in qdq):
        return {"kept": False, "reason": "onnxslim changed the number of Q/DQ nodes",
                "nodes_before": len(before.graph.node), "nodes_after": len(slim.graph.node)}
    trial = path.with_name(path.name + ".slim")
    onnx.save(slim, str(trial))
    try:
        diff = _diff(reference, ort_cpu.run(ort_cpu.session(trial), samples))
        if diff > TOLERANCE:
            return {"kept": False, "reason": f"outputs changed by {diff:.3g}", "max_abs_diff": diff}
        trial.replace(path)
    finally:
        trial.unlink(missing_ok=True)
    return {"kept": True, "nodes_before": len(before.graph.node), "nodes_after": len(slim.graph.node),
            "max_abs_diff": diff}


def _diff(a: list, b: list) -> float:
    """Largest difference over all outputs (arrays or per-sample lists), relative to magnitudes above 1."""
    worst = 0.0
    for ref, test in zip(a, b):
        ref, test = _flat(ref), _flat(test)
        worst = max(worst, float(np.max(np.abs(ref - test)) / max(1.0, float(np.max(np.abs(ref))))))
    return worst


def _flat(entry) -> np.ndarray:
    return np.concatenate([np.ravel(s).astype(np.float64) for s in entry])
