"""A static lint of an ONNX file against TensorRT's explicit-quantization rules.

What TensorRT rejects (errors) or accepts but cannot fuse (warnings), from its developer guide's Q/DQ
chapter ("Working with Quantized Types", "Q/DQ layer-placement recommendations") and the ONNX parser's
operator support list. Each finding names the node and how to fix it. ``edgeq export --to tensorrt``
runs this on its own output and refuses to write a file that breaks a rule.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from .qdq import GraphIndex

# ONNX Runtime's integer operator forms and other ops the TensorRT ONNX parser does not import
UNSUPPORTED = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
               "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
               "QLinearGlobalAveragePool", "QLinearConcat", "QGemm", "DequantizeLinear16", "Optional",
               "SequenceConstruct", "SequenceAt", "StringNormalizer", "TfIdfVectorizer", "Unique"}
NORM_OPS = {"LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax", "LogSoftmax"}
NORM_INTERNALS = {"Pow", "Sqrt", "Reciprocal"}   # a LayerNorm spelled out op by op (with a mean subtraction)
FUSING = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@dataclass(frozen=True)
class Finding:
    severity: str   # "error": TensorRT rejects the graph; "warning": it builds, but does not fuse here
    rule: str
    node: str
    op: str
    message: str
    fix: str

    def to_dict(self) -> dict:
        return asdict(self)


class GraphView(GraphIndex):
    """The export passes' graph index, with Constant nodes counted as initializers."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__(model)
        for node in model.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.inits[node.output[0]] = node.attribute[0].t

    def produced_by(self, name: str, ops: set[str]) -> bool:
        node = self.producer.get(name)
        return node is not None and node.op_type in ops


def lint(model: onnx.ModelProto) -> list[Finding]:
    view = GraphView(model)
    findings: list[Finding] = []
    for node in model.graph.node:
        label = node.name or node.output[0]
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding("error", "unsupported-op", label, node.op_type,
                                    f"{node.domain}.{node.op_type} is a custom-domain op TensorRT does not import",
                                    "export with edgeq export --to tensorrt (standard ONNX ops only)"))
        elif node.op_type in UNSUPPORTED:
            findings.append(Finding("error", "unsupported-op", label, node.op_type,
                                    f"TensorRT's ONNX parser has no {node.op_type}",
                                    "use QuantizeLinear/DequantizeLinear around float ops (QDQ format)"))
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            findings += _check_qdq(node, label, view)
        elif node.op_type == "Add":
            findings += _check_residual(node, label, view)
        elif node.op_type in FUSING:
            findings += _check_half_quantized(node, label, view)
    return findings


def _check_qdq(node: onnx.NodeProto, label: str, view: GraphView) -> list[Finding]:
    out = []
    zp = view.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    scale = view.array(node.input[1])
    if zp is None or zp.dtype == np.uint8:
        out.append(Finding("error", "unsigned-int8", label, node.op_type,
                           "uint8 quantization (a missing zero-point means uint8 in ONNX)",
                           "quantize to int8 with an explicit int8 zero-point of 0"))
    elif zp.dtype != np.int8:
        out.append(Finding("error", "not-int8", label, node.op_type,
                           f"{zp.dtype} quantization (TensorRT's explicit quantization takes int8 here)",
                           "keep biases in float (TensorRT folds them into the int8 kernel) and use int8 "
                           "elsewhere"))
    if zp is not None and np.any(zp != 0):
        out.append(Finding("error", "asymmetric-zero-point", label, node.op_type,
                           f"zero-point {int(zp.flat[np.argmax(zp != 0)])} (TensorRT takes 0 only)",
                           "use symmetric quantization: scale = max(|min|, |max|) / 127, zero-point 0"))
    if scale is None:
        out.append(Finding("error", "dynamic-scale", label, node.op_type, "the scale is not a constant",
                           "store scales as initializers"))
        return out
    if scale.size > 1:
        out += _check_axis(node, label, view)
    if node.op_type == "DequantizeLinear":
        for user in view.consumers.get(node.output[0], []):
            if user.op_type in NORM_OPS or _in_spelled_out_norm(user, view):
                out.append(Finding("warning", "qdq-in-norm", label, node.op_type,
                                   f"dequantized tensor feeds {user.op_type} {user.name!r}: TensorRT keeps "
                                   f"LayerNorm/Softmax in float unless it fuses the pair into the normalization "
                                   f"(NVIDIA's modelopt places such pairs on purpose; unverified without TensorRT), "
                                   f"else this Q/DQ pair only adds conversions",
                                   "leave the normalization's input in float; quantize its output instead"))
    elif node.input[0] in view.producer and _in_spelled_out_norm(view.producer[node.input[0]], view):
        out.append(Finding("warning", "qdq-in-norm", label, node.op_type,
                           "quantizes a tensor inside a spelled-out LayerNorm",
                           "move the quantizer after the normalization"))
    return out


def _in_spelled_out_norm(node: onnx.NodeProto, view: GraphView) -> bool:
    """Pow/Sqrt/Reciprocal, or a ReduceMean whose result is subtracted (x - mean): a pooling ReduceMean
    feeding a classifier is not a norm."""
    if node.op_type in NORM_INTERNALS:
        return True
    return node.op_type == "ReduceMean" and any(u.op_type == "Sub" for u in view.consumers.get(node.output[0], []))


def _check_axis(node: onnx.NodeProto, label: str, view: GraphView) -> list[Finding]:
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    if node.input[0] not in view.inits and node.op_type == "QuantizeLinear":
        return [Finding("error", "per-channel-activation", label, node.op_type,
                        "per-channel activation scales (TensorRT takes one scale per activation tensor)",
                        "use one scale covering every channel's range")]
    if node.op_type != "DequantizeLinear" or node.input[0] not in view.inits:
        return []
    weight = view.array(node.input[0])
    for user in view.consumers.get(node.output[0], []):
        expected = _output_axis(user, weight.ndim)
        if expected is not None and user.input[1] == node.output[0] and axis % weight.ndim != expected:
            return [Finding("error", "per-channel-axis", label, node.op_type,
                            f"per-channel weight scales on axis {axis} of the {user.op_type} {user.name!r} "
                            f"weight; its output channels are on axis {expected}",
                            f"quantize the weight per output channel (axis {expected})")]
    return []


def _output_axis(user: onnx.NodeProto, ndim: int) -> int | None:
    """The axis of a weight that indexes the consumer's output channels."""
    if user.op_type == "Conv":
        return 0
    if user.op_type == "ConvTranspose":
        return 1
    if user.op_type == "MatMul":
        return ndim - 1
    if user.op_type == "Gemm":
        return 0 if next((a.i for a in user.attribute if a.name == "transB"), 0) else 1
    return None


def _check_half_quantized(node: onnx.NodeProto, label: str, view: GraphView) -> list[Finding]:
    """A Conv/Gemm/MatMul runs in int8 only when both its data and its weight arrive through a DQ."""
    quantized = [view.produced_by(name, {"DequantizeLinear"}) for name in node.input[:2]]
    if len(quantized) < 2 or quantized[0] == quantized[1]:
        return []
    float_side = node.input[quantized.index(False)]
    return [Finding("warning", "half-quantized", label, node.op_type,
                    f"only one of its two inputs is quantized ({float_side!r} is float), so TensorRT runs "
                    f"it in floating point with an extra dequantization",
                    f"quantize {float_side!r} too, or remove the other input's Q/DQ pair")]


def _check_residual(node: onnx.NodeProto, label: str, view: GraphView) -> list[Finding]:
    other = unquantized_residual(node, view)
    if other is None:
        return []
    return [Finding("warning", "unquantized-residual", label, "Add",
                    f"the residual input {other!r} is float, so TensorRT cannot fuse this Add into the "
                    f"int8 Conv before it",
                    f"insert QuantizeLinear/DequantizeLinear on {other!r} (edgeq export --to tensorrt does)")]


def unquantized_residual(node: onnx.NodeProto, view: GraphView) -> str | None:
    """For an Add after an int8 Conv, its other input when that arrives in float (TensorRT fuses the
    Add into the Conv only when the residual input comes through a DequantizeLinear)."""
    if node.op_type != "Add":
        return None
    inputs = [i for i in node.input if i not in view.inits]
    if len(inputs) != 2:
        return None
    conv_side = [i for i in inputs if view.produced_by(i, {"Conv"}) and _conv_is_quantized(view, i)]
    if not conv_side:
        return None
    other = inputs[1] if inputs[0] == conv_side[0] else inputs[0]
    return None if view.produced_by(other, {"DequantizeLinear"}) else other


def _conv_is_quantized(view: GraphView, conv_output: str) -> bool:
    conv = view.producer[conv_output]
    return all(view.produced_by(name, {"DequantizeLinear"}) for name in conv.input[:2])
