"""ONNX export of a quantized bundle: QDQ int8 (opset ≥ 17), fp16 or fp32, with a fidelity check.

Sub-8-bit layers (w6a6, w4a8) export exactly: their integer weights already lie on the narrow grid,
and their activations pass a Clip to the narrow range before an 8-bit QuantizeLinear.

Next to ``model.onnx`` a sidecar ``model.onnx.json`` records the Artifact: format, precision,
sha256, input spec, the bundle it came from, op counts and fidelity against the torch model.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from .. import __version__, ui
from ..bundle import Bundle, float_graph, quantized_graph, read_bundle
from ..errors import ArtifactError, OutputError
from ..fsutil import atomic_path, check_output
from ..metrics import compare
from ..profile import ort_cpu
from ..quant import meta_kernels
from ..quant.pipeline import run_graph
from . import graph_extras
from .qdq import count_ops, fold_weight_quantizers, quantize_biases, toposort, unsigned_activations

PRECISIONS = ("int8", "fp16", "fp32")
MIN_OPSET = 17


def sidecar_path(path: str | Path) -> Path:
    return Path(str(path) + ".json")


def export_onnx(bundle_path: str | Path, out: str | Path, precision: str = "int8", opset: int = 18,
                force: bool = False, dynamic_batch: bool = False, simplify: bool = False) -> dict:
    if precision not in PRECISIONS:
        raise ArtifactError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if opset < MIN_OPSET:
        raise ArtifactError(f"--opset must be at least {MIN_OPSET} for QDQ export, got {opset}.")
    out = check_output(out, force)
    check_output(sidecar_path(out), force=True)
    bundle = read_bundle(bundle_path)
    gm = quantized_graph(bundle) if precision == "int8" else float_graph(bundle)
    with atomic_path(out) as tmp:
        with ui.status(f"exporting {precision} ONNX"):
            model, passes = _export(gm, bundle, tmp, precision, opset)
        onnx.save(model, str(tmp))
        if dynamic_batch and not bundle.manifest["dynamic_batch"]:
            passes["batch_axis_made_dynamic"] = graph_extras.make_batch_dynamic(tmp, bundle.samples)
        if simplify:
            passes["simplified"] = graph_extras.simplify(tmp, bundle.samples)
        model = onnx.load(str(tmp))
        fidelity = compare(run_graph(gm, bundle.samples, _batch(bundle)),
                           ort_cpu.run(ort_cpu.session(tmp), bundle.samples))
        record = {
            "path": str(out), "format": "onnx", "precision": precision, "opset": opset,
            "sha256": hashlib.sha256(tmp.read_bytes()).hexdigest(), "bytes": tmp.stat().st_size,
            "input": bundle.manifest["input"], "dynamic_batch": bundle.manifest["dynamic_batch"] or dynamic_batch,
            "bundle": str(Path(bundle_path).resolve()), "model": bundle.manifest["model"]["spec"],
            "recipe": bundle.manifest["recipe"]["name"] if precision == "int8" else None,
            "layer_precisions": bit_widths(bundle) if precision == "int8" else None,
            "op_counts": count_ops(model), "passes": passes,
            "fidelity_vs_torch": {**fidelity, "reference": "torch fake-quant model" if precision == "int8"
                                  else "torch float model"},
            "created_by": f"edgeq {__version__}",
        }
        with atomic_path(sidecar_path(out)) as side:
            side.write_text(json.dumps(record, indent=2) + "\n")
    return record


def bit_widths(bundle: Bundle) -> dict[str, int]:
    """Layer precisions in the bundle (sub-8-bit layers run on 8-bit kernels with narrowed ranges)."""
    counts: dict[str, int] = {}
    for layer in bundle.manifest["layers"].values():
        counts[layer["precision"]] = counts.get(layer["precision"], 0) + 1
    return dict(sorted(counts.items()))


def float_layers(bundle: Bundle) -> list[str]:
    """Quantizable layers the bundle keeps in float (fallback decisions and recipe exclusions)."""
    return sorted(n for n, d in bundle.manifest["layers"].items() if not d["quantized"])


def placement_note(bundle: Bundle, target: str) -> str | None:
    """A warning when layers are float because a latency search on another runtime found int8 slower there:
    that decision does not carry over to ``target``."""
    searched: dict[str, int] = {}
    for layer in bundle.manifest["layers"].values():
        reason = layer.get("reason", "")
        if not layer["quantized"] and reason.startswith("latency on "):
            runtime = reason[len("latency on "):].split(":")[0]
            searched[runtime] = searched.get(runtime, 0) + 1
    if not searched:
        return None
    runtime, count = max(searched.items(), key=lambda kv: kv[1])
    return (f"{count} layers are float because the latency placement measured on {runtime} found int8 slower "
            f"there, which says nothing about {target}; for {target}, quantize with --no-latency-search (the "
            f"accuracy-budget and outlier fallbacks still apply).")


def _batch(bundle: Bundle) -> int:
    return 32 if bundle.manifest["dynamic_batch"] else bundle.input_shape[0]


def _export(gm, bundle: Bundle, path: Path, precision: str, opset: int,
            runtime: str = "ort") -> tuple[onnx.ModelProto, dict]:
    """torch's ONNX export plus the integer passes; ``runtime="tensorrt"`` leaves activations signed and
    biases in float (what TensorRT's explicit quantization takes), for ``export.tensorrt`` to finish."""
    dynamic = bundle.manifest["dynamic_batch"]
    n = 2 if dynamic else bundle.input_shape[0]
    example = torch.from_numpy(np.resize(bundle.samples, (n, *bundle.input_shape[1:])).astype(np.float32))
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic else None
    meta_kernels.register()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(gm, (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=["input"], output_names=["output"], dynamic_shapes=shapes,
                              external_data=False, optimize=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    except Exception as exc:  # noqa: BLE001 - torch.onnx raises ConversionError for ops without ONNX form
        raise ArtifactError(_conversion_error(exc)) from None
    model = onnx.load(str(path))
    passes = {}
    if precision == "int8":
        passes["weights_folded_to_int"] = fold_weight_quantizers(model)
        if runtime == "ort":
            passes["biases_quantized_to_int32"] = quantize_biases(model)
            passes["activations_made_unsigned"] = unsigned_activations(model)
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_float_to_float16(model, keep_io_types=True)
        toposort(model)
        passes["float16"] = True
    meta = {"edgeq_version": __version__, "edgeq_precision": precision,
            "edgeq_model": bundle.manifest["model"]["spec"]}
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"the exported ONNX failed onnx.checker: {str(exc).splitlines()[0]}.") from None
    return model, passes


def _conversion_error(exc: Exception) -> str:
    """One sentence naming the op (and node) torch's ONNX exporter could not translate."""
    text = str(exc)
    op = re.search(r"OpOverload\(op='([^']+)'", text)
    node = re.search(r"translating node %(\S+)", text)
    if op:
        where = f" (node {node.group(1)})" if node else ""
        return f"ONNX has no translation for op {op.group(1)}{where}; this model cannot be exported to ONNX as is."
    return f"torch's ONNX exporter failed: {(text.splitlines() or [type(exc).__name__])[0][:200]}."


def onnx_in(path: str | Path) -> Path:
    """An ONNX artifact path; an ``edgeq export --to tensorrt`` folder stands for the model.onnx inside it."""
    path = Path(path)
    if path.is_dir() and (path / "model.onnx").is_file() and not (path / "manifest.json").is_file():
        return path / "model.onnx"
    return path


def read_artifact(path: str | Path) -> dict:
    """The sidecar record of an exported artifact, or a minimal record for a foreign ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist.")
    side = sidecar_path(path)
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except ValueError:
            raise ArtifactError(f"{side} is not valid JSON.") from None
    return {"path": str(path), "format": "onnx", "precision": "unknown", "bundle": None}
