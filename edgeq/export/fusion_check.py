"""Check a QDQ ONNX graph against what ONNX Runtime's fused int8 kernels accept, before anything is written.

ONNX Runtime fuses ``DQ(x), DQ(W) → Conv/MatMul/Gemm [→ Relu/Clip] → Q`` into QLinearConv / QLinearMatMul /
QGemm. Those kernels take one scale and zero-point for the activation input and one for the output; a
per-channel one there passes session creation and fails at the first run ("QLinearConv : result zero point
must be a scalar…"). Weights may be per-channel. The same conservative reading as ``fakequant``'s rule:
a Relu/Clip between the layer and its Q counts as fused (older releases drop it whatever the zero-point).
"""
from __future__ import annotations

import onnx

from ..errors import ArtifactError
from .qdq import GraphIndex

FUSED_LAYERS = {"Conv": "QLinearConv", "MatMul": "QLinearMatMul", "Gemm": "QGemm"}
FUSED_ACTIVATIONS = ("Relu", "Clip")


def check_fused_groups(model: onnx.ModelProto) -> None:
    """Raise ArtifactError naming the first fused group with a per-channel activation quantizer."""
    g = GraphIndex(model)
    graph_outputs = {o.name for o in g.graph.output}
    for node in g.graph.node:
        if node.op_type not in FUSED_LAYERS or len(node.input) < 2:
            continue
        dqs = [g.producer.get(name) for name in node.input[:2]]
        if not all(dq is not None and dq.op_type == "DequantizeLinear" for dq in dqs):
            continue  # a float input: no integer kernel
        qs = _output_quantizers(g, node, graph_outputs)
        if not qs:
            continue  # DQ → layer without a Q after it stays a float layer (or an IntegerToFloat one)
        activations = [("input", dq) for dq in dqs if dq.input[0] not in g.inits] + [("output", q) for q in qs]
        for side, qdq in activations:  # weights (DQ of an initializer) may be per-channel
            if _channels(g, qdq) > 1:
                _refuse(node, side, qdq, _channels(g, qdq))


def _output_quantizers(g: GraphIndex, node: onnx.NodeProto, graph_outputs: set[str]) -> list[onnx.NodeProto]:
    """The Q nodes ONNX Runtime would fuse as ``node``'s output (through a single Relu/Clip), or []."""
    tail = node.output[0]
    users = g.consumers.get(tail, [])
    while len(users) == 1 and users[0].op_type in FUSED_ACTIVATIONS and tail not in graph_outputs:
        tail = users[0].output[0]
        users = g.consumers.get(tail, [])
    if not users or tail in graph_outputs or any(u.op_type != "QuantizeLinear" for u in users):
        return []
    return users


def _channels(g: GraphIndex, qdq: onnx.NodeProto) -> int:
    """How many scales / zero-points a Q or DQ holds (one that is not an initializer counts as one)."""
    params = [g.array(name) for name in qdq.input[1:3] if name]
    return max([p.size for p in params if p is not None], default=1)


def _refuse(node: onnx.NodeProto, side: str, qdq: onnx.NodeProto, size: int) -> None:
    raise ArtifactError(
        f"node {node.name or node.output[0]} ({node.op_type}) would run as ONNX Runtime's "
        f"{FUSED_LAYERS[node.op_type]}, which takes one scale and zero-point per activation, but its {side} "
        f"quantizer {qdq.name or qdq.output[0]} is per-channel ({size} scales); re-quantize with "
        f"'reconstruction: {{choose_granularity: false}}' in the recipe.")
