"""ONNX export of a quantized bundle: QDQ int8 (opset ≥ 17), fp16 or fp32, with a fidelity check.

Sub-8-bit layers (w6a6, w4a8) export exactly: their integer weights already lie on the narrow grid,
and their activations pass a Clip to the narrow range before an 8-bit QuantizeLinear.

Next to ``model.onnx`` a sidecar ``model.onnx.json`` records the Artifact: format, precision,
sha256, input spec, the bundle it came from, op counts and fidelity against the torch model.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from .. import __version__, ui
from ..bundle import Bundle, float_graph, placement_targets, quantized_graph, read_bundle
from ..errors import ArtifactError, OutputError
from ..fsutil import atomic_path
from ..metrics import compare_outputs
from ..runtimes import ort as ort_cpu
from ..runtimes.base import onnx_file
from ..quant import meta_kernels
from ..samples import run_graph
from ..trace.capture import dynamic_shapes
from . import graph_extras
from .artifact import artifact_record, check_outputs, placement_fields, sidecar_path, write_sidecar
from .fusion_check import check_fused_groups
from .openvino_form import openvino_form, signed_inputs
from .qdq import count_ops, fold_weight_quantizers, quantize_biases, toposort, unsigned_activations

PRECISIONS = ("int8", "fp16", "fp32")
MIN_OPSET = 17


def export_onnx(bundle_path: str | Path, out: str | Path, precision: str = "int8", opset: int = 18,
                force: bool = False, dynamic_batch: bool = False, simplify: bool = False,
                target: str | None = None) -> dict:
    """``target``: whose latency placement and int8 graph form the model carries (None: the bundle's default
    target's). The form is the target runtime's ``qdq_form``: ``ort`` (edgeq's quantizers as they are) or
    ``openvino`` (plus the edges OpenVINO runs in int8, ``openvino_form``)."""
    if precision not in PRECISIONS:
        raise ArtifactError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if opset < MIN_OPSET:
        raise ArtifactError(f"--opset must be at least {MIN_OPSET} for QDQ export, got {opset}.")
    out = check_outputs(out, force)
    bundle = read_bundle(bundle_path, target)
    form = qdq_form(bundle, target) if precision == "int8" else None
    gm = quantized_graph(bundle) if precision == "int8" else float_graph(bundle)
    with atomic_path(out) as tmp:
        with ui.status(f"exporting {precision} ONNX" + (f" ({form} form)" if form else "")):
            model, passes = _export(gm, bundle, tmp, precision, opset, form or "ort")
        onnx.save(model, str(tmp))
        if dynamic_batch and not bundle.manifest["dynamic_batch"]:
            passes["batch_axis_made_dynamic"] = graph_extras.make_batch_dynamic(tmp, bundle.samples)
        if simplify:
            passes["simplified"] = graph_extras.simplify(tmp, bundle.samples)
        model = onnx.load(str(tmp))
        fidelity = compare_outputs(run_graph(gm, bundle.samples, _batch(bundle)),
                                   ort_cpu.run(ort_cpu.session(tmp), bundle.samples))
        quantized = precision == "int8"
        record = artifact_record(
            out, tmp, "onnx", precision, bundle, bundle_path, quantized,
            {**fidelity, "reference": _reference(precision, passes)}, qdq_form=form,
            opset=opset, inputs=[s.to_dict() for s in bundle.input_specs], outputs=bundle.output_names,
            dynamic_batch=bundle.manifest["dynamic_batch"] or dynamic_batch,
            lengths_checked=_lengths_checked(bundle), op_counts=count_ops(model), passes=passes,
            **placement_fields(bundle, quantized))
        write_sidecar(out, record)
    return record


def qdq_form(bundle: Bundle, target: str | None) -> str:
    """The int8 graph form ``target`` (None: the bundle's default target) runs best."""
    from ..target import DEFAULT_TARGET, get_target
    name = target or next(iter(placement_targets(bundle.manifest)), DEFAULT_TARGET)
    return get_target(name).qdq_form


def _reference(precision: str, passes: dict) -> str:
    if precision != "int8":
        return "torch float model"
    added = passes.get("openvino_quantizers_added")
    return "torch fake-quant model" + (f" (without the {added} quantizers the openvino form adds)" if added else "")


def _lengths_checked(bundle: Bundle) -> list[int] | None:
    """The dynamic-axis sizes the fidelity check ran the export at (the bundle's samples' lengths)."""
    lengths = bundle.samples.lengths
    return sorted(int(v) for v in set(lengths.tolist())) if lengths is not None else None


def _batch(bundle: Bundle) -> int:
    return 32 if bundle.manifest["dynamic_batch"] else bundle.input_shape[0]


def _export(gm, bundle: Bundle, path: Path, precision: str, opset: int,
            runtime: str = "ort") -> tuple[onnx.ModelProto, dict]:
    """torch's ONNX export plus the integer passes; ``runtime="tensorrt"`` leaves activations signed and
    biases in float (what TensorRT's explicit quantization takes), for ``export.tensorrt`` to finish;
    ``runtime="openvino"`` adds the quantized edges OpenVINO fuses (``openvino_form``)."""
    dynamic = bundle.manifest["dynamic_batch"]
    specs = bundle.input_specs
    n = 2 if dynamic else bundle.input_shape[0]
    examples = tuple(torch.from_numpy(np.resize(a, (n, *a.shape[1:])))
                     for a in bundle.samples.uniform().inputs)
    shapes = dynamic_shapes(specs) if dynamic else None
    meta_kernels.register()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(gm, examples, str(path), dynamo=True, opset_version=opset,
                              input_names=[s.name for s in specs], output_names=bundle.output_names,
                              dynamic_shapes=shapes, external_data=False, optimize=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from None
    except Exception as exc:  # noqa: BLE001 - torch.onnx raises ConversionError for ops without ONNX form
        raise ArtifactError(_conversion_error(exc)) from None
    model = onnx.load(str(path))
    passes = {}
    if precision == "int8":
        passes["weights_folded_to_int"] = fold_weight_quantizers(model)
        if runtime in ("ort", "openvino"):
            passes["biases_quantized_to_int32"] = quantize_biases(model)
            keep_signed = signed_inputs(model) if runtime == "openvino" else frozenset()
            passes["activations_made_unsigned"] = unsigned_activations(model, keep_signed)
            if keep_signed:
                passes["openvino_signed_inputs"] = len(keep_signed)
            check_fused_groups(model)  # a sentence now, not an ONNX Runtime failure at the first run
        if runtime == "openvino" and passes["weights_folded_to_int"]:   # a placement that floats every layer
            passes.update(openvino_form(model, bundle.samples, _batch(bundle)))   # ships the FP32 graph
    elif precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_float_to_float16(model, keep_io_types=True)
        toposort(model)
        passes["float16"] = True
    meta = {"edgeq_version": __version__, "edgeq_precision": precision,
            **({"edgeq_qdq_form": runtime} if precision == "int8" else {}),
            "edgeq_model": bundle.manifest["model"]["spec"],
            "edgeq_input_shapes": json.dumps([list(s.shape) for s in specs]), **_runner_metadata(bundle)}
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"the exported ONNX failed onnx.checker: {str(exc).splitlines()[0]}.") from None
    return model, passes


def _runner_metadata(bundle: Bundle) -> dict[str, str]:
    """What ``edgeq-runner predict`` needs on a device without edgeq: how a raw image becomes the input
    (image models only: size, channels, mean/std per channel, as ``preprocess_uint8`` does it; audio models:
    the log-mel parameters of ``edgeq.audio``), and the class names or CTC symbols when edgeq knows them
    (the zoo)."""
    from ..models.zoo import FASHION_CLASSES, SPEECH_ZOO
    from ..preprocess import per_channel
    out = {}
    spec = bundle.input_specs[0]
    if spec.features is not None:
        out["edgeq_preprocess"] = json.dumps(spec.features)
        name = bundle.manifest["model"]["spec"].removeprefix("zoo:")
        if name in SPEECH_ZOO:   # CTC symbols in class order, the blank first
            out["edgeq_ctc_charset"] = json.dumps(["", *SPEECH_ZOO[name].charset_path.read_text().split()])
        return out
    if spec.is_image and len(bundle.input_specs) == 1:
        channels = spec.shape[1]
        mean, std = per_channel(spec.mean, channels), per_channel(spec.std, channels)
        out["edgeq_preprocess"] = json.dumps({"size": list(spec.shape[-2:]), "channels": channels,
                                              "mean": mean, "std": std, "scale": "pixels / 255"})
    if bundle.manifest["model"]["spec"].startswith("zoo:"):
        out["edgeq_labels"] = json.dumps(list(FASHION_CLASSES))
    return out


def _conversion_error(exc: Exception) -> str:
    """One sentence naming the op (and node) torch's ONNX exporter could not translate, and why."""
    text = str(exc)
    op = re.search(r"OpOverload\(op='([^']+)'", text) or re.search(r"target=torch\.ops\.([\w.]+)", text)
    node = re.search(r"translating node %(\S+)", text)
    cause = re.search(r"## Exception summary\s+<class '[\w.]*?(\w+)'>: ([^\n]+)", text)
    if op:
        where = f" (node {node.group(1)})" if node else ""
        why = f": {cause.group(2).strip()[:160]}" if cause else ""
        return (f"ONNX has no translation for op {op.group(1)}{where}{why}; this model cannot be exported to ONNX "
                f"as is.")
    return f"torch's ONNX exporter failed: {(text.splitlines() or [type(exc).__name__])[0][:200]}."


onnx_in = onnx_file   # an ``edgeq export --to tensorrt`` folder stands for the model.onnx inside it


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
