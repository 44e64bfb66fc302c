"""The openvino form's layout pass: ConvNeXt-style channels-last islands rewritten channels-first.

ConvNeXt-style blocks (EdgeNeXt, ConvNeXt, Next-ViT's MLPs written that way) permute a convolution's NCHW
output to NHWC, run a LayerNorm and an MLP of linear layers over the last axis, and permute back. OpenVINO's
CPU plugin runs each such Transpose with its generic kernel plus a layout reorder on each side, and the
linear layers as FullyConnected on a rank-4 input: on edgenext_xx_small the Transposes and reorders took 1.7
of 6.9 ms in int8, more than the int8 linear layers saved. The same computation written channels-first has
no Transpose: LayerNorm over the channel axis (ReduceMean statistics), each linear layer a 1×1 convolution
(OpenVINO's int8 convolution, with the GELU, bias and requantization fused into it), per-channel constants
reshaped to broadcast over [C, H, W]. Paired runs on an AVX512-VNNI Xeon (session 17, 256×256):
edgenext_xx_small's openvino form 1.17x → 1.9x OpenVINO FP32 (the FP32 graph rewritten the same way:
1.19–1.31x). ONNX Runtime runs the channels-first form slower (all-int8 0.80x → 0.67x its FP32), so only the
openvino form gets it.

An island is everything between a Transpose to NHWC and the Transposes back to NCHW, provided every node in
it works on the last axis or element-wise: per-tensor Quantize/DequantizeLinear, element-wise math with
constants, LayerNormalization over the last axis, MatMul by a constant (or dequantized constant) 2-D weight.
Anything else (a Reshape, an attention, a graph output, a tensor from outside) leaves the island as it is.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .qdq import GraphIndex, _axis, remove_unused_initializers

PREFIX = "edgeq_nchw_"
TO_NHWC, TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]
ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Pow"})
UNARY = frozenset({"Erf", "Sqrt", "Relu", "Sigmoid", "Tanh", "Gelu", "HardSigmoid", "HardSwish", "Clip",
                   "Identity", "Neg", "Abs", "Exp", "Softplus", "Mish", "Cast"})
QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})


def channels_first(model: onnx.ModelProto) -> int:
    """Rewrite ``model``'s channels-last islands channels-first (in place); returns how many."""
    g = GraphIndex(model)
    outputs = {o.name for o in model.graph.output}
    islands = [island for node in model.graph.node if _perm(node) == TO_NHWC
               if (island := _island(g, node, outputs)) is not None]
    if not islands:
        return 0
    replacements: dict[int, list[onnx.NodeProto]] = {}
    retired: set[int] = set()
    for opener, members, closers in islands:
        _rewrite(g, opener, members, closers, outputs, replacements, retired)
    nodes = [n for node in model.graph.node for n in replacements.get(id(node), [node]) if id(n) not in retired]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    changed = {t for _, members, _ in islands for node in members for t in node.output}
    kept = [v for v in model.graph.value_info if v.name not in changed]   # their shapes are NCHW now
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    remove_unused_initializers(model)
    return len(islands)


def _perm(node: onnx.NodeProto) -> list[int] | None:
    if node.op_type != "Transpose":
        return None
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _island(g: GraphIndex, opener: onnx.NodeProto, outputs: set[str]):
    """(opener, members, closers) when everything reading the NHWC tensor, transitively, until the Transposes
    back, can be rewritten; else None."""
    tensors, members, closers = {opener.output[0]}, [], []
    seen: set[int] = set()
    queue = [opener.output[0]]
    while queue:
        tensor = queue.pop()
        if tensor in outputs:
            return None
        for node in g.consumers.get(tensor, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if _perm(node) == TO_NCHW:
                closers.append(node)
                continue
            if not _works_on_last_axis(g, node, tensor):
                return None
            members.append(node)
            tensors.update(node.output)
            queue.extend(node.output)
    inputs_ok = all(name in tensors or _constant_input(g, node, k)
                    for node in members for k, name in enumerate(node.input) if name)
    return (opener, members, closers) if closers and inputs_ok else None


def _works_on_last_axis(g: GraphIndex, node: onnx.NodeProto, tensor: str) -> bool:
    if node.op_type in ELEMENTWISE or node.op_type in UNARY:
        return True
    if node.op_type in QDQ:
        scale = g.array(node.input[1])
        return node.input[0] == tensor and scale is not None and scale.size == 1
    if node.op_type == "LayerNormalization":
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        extra_outputs = [o for o in node.output[1:] if o]
        return node.input[0] == tensor and axis in (-1, 3) and not extra_outputs
    if node.op_type == "MatMul":
        return node.input[0] == tensor and _weight(g, node.input[1]) is not None
    return False


def _constant_input(g: GraphIndex, node: onnx.NodeProto, k: int) -> bool:
    """Whether input ``k`` of an island member is a constant the rewrite can keep or reshape."""
    name = node.input[k]
    if node.op_type == "MatMul":
        return k == 1 and _weight(g, name) is not None
    value = g.array(name)
    if value is None:
        return False
    if node.op_type == "LayerNormalization":
        return value.ndim == 1
    return value.ndim <= 4   # broadcast against NHWC: transposed with it


def _weight(g: GraphIndex, name: str) -> tuple[np.ndarray, onnx.NodeProto | None] | None:
    """A MatMul's 2-D [in, out] weight: a float initializer, or the integer initializer of its own
    DequantizeLinear (per tensor or per output channel)."""
    value = g.array(name)
    if value is not None:
        return (value, None) if value.ndim == 2 else None
    dq = g.producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or len(g.consumers.get(name, [])) != 1:
        return None
    value, scale = g.array(dq.input[0]), g.array(dq.input[1])
    if value is None or value.ndim != 2 or scale is None or (scale.size > 1 and _axis(dq) % 2 != 1):
        return None
    return value, dq


def _rewrite(g: GraphIndex, opener, members, closers, outputs, replacements, retired) -> None:
    """Drop the Transposes and write each member channels-first."""
    nhwc = opener.output[0]
    for node in members:
        node.input[:] = [opener.input[0] if name == nhwc else name for name in node.input]
    retired.add(id(opener))
    for closer in closers:
        if closer.output[0] in outputs:   # kept as an Identity: the graph output keeps its name
            replacements[id(closer)] = [helper.make_node("Identity", [closer.input[0]], list(closer.output),
                                                         name=closer.name)]
            continue
        for user in g.consumers.get(closer.output[0], []):
            user.input[:] = [closer.input[0] if name == closer.output[0] else name for name in user.input]
        retired.add(id(closer))
    for node in members:
        if node.op_type == "MatMul":
            replacements[id(node)] = _as_conv(g, node, retired)
        elif node.op_type == "LayerNormalization":
            replacements[id(node)] = _channel_layer_norm(g, node)
        elif node.op_type in ELEMENTWISE:
            node.input[:] = [_per_channel(g, name) if g.array(name) is not None else name for name in node.input]


def _per_channel(g: GraphIndex, name: str) -> str:
    """A constant broadcast over NHWC's last axis, made to broadcast over NCHW's channel axis."""
    value = g.array(name)
    if value.size == 1:
        return name
    nchw = value.reshape((1,) * (4 - value.ndim) + value.shape).transpose(TO_NCHW)
    return _constant(g, f"{PREFIX}{name}", np.ascontiguousarray(nchw))


def _constant(g: GraphIndex, name: str, value: np.ndarray) -> str:
    """An initializer made once per name (constants shared by several islands stay shared)."""
    return name if name in g.inits else g.add_init(name, value)


def _as_conv(g: GraphIndex, matmul: onnx.NodeProto, retired: set[int]) -> list[onnx.NodeProto]:
    """``x @ W`` on NHWC as a 1×1 convolution on NCHW; a dequantized weight keeps its scales (per output
    channel: axis 0 of the convolution's weight) and the scope the placement search finds it by."""
    value, dq = _weight(g, matmul.input[1])
    kernel = np.ascontiguousarray(value.T[:, :, None, None])
    nodes = []
    if dq is None:
        weight = g.add_init(f"{PREFIX}{matmul.input[1]}", kernel)
    else:
        integers = g.add_init(f"{PREFIX}{dq.input[0]}", kernel)
        weight = f"{PREFIX}{dq.output[0]}"
        new_dq = helper.make_node("DequantizeLinear", [integers, *dq.input[1:]], [weight], name=f"{PREFIX}{dq.name}",
                                  axis=0)
        new_dq.metadata_props.extend(dq.metadata_props)
        nodes.append(new_dq)
        retired.add(id(dq))
    conv = helper.make_node("Conv", [matmul.input[0], weight], list(matmul.output), name=matmul.name)
    conv.metadata_props.extend(matmul.metadata_props)
    return nodes + [conv]


def _channel_layer_norm(g: GraphIndex, ln: onnx.NodeProto) -> list[onnx.NodeProto]:
    """LayerNorm over the channel axis of NCHW: (x - mean) / sqrt(var + eps) * scale + bias."""
    eps = next((a.f for a in ln.attribute if a.name == "epsilon"), 1e-5)
    x, y = ln.input[0], ln.output[0]
    t = f"{PREFIX}{y}_"   # this node's intermediate tensors
    axes = _constant(g, f"{PREFIX}channel_axis", np.array([1], np.int64))
    epsilon = _constant(g, f"{PREFIX}epsilon_{eps:g}", np.array(eps, np.float32))
    scale = _per_channel(g, ln.input[1])
    has_bias = len(ln.input) > 2 and ln.input[2]
    steps = [("ReduceMean", [x, axes], "mean"), ("Sub", [x, t + "mean"], "centred"),
             ("Mul", [t + "centred", t + "centred"], "squared"), ("ReduceMean", [t + "squared", axes], "variance"),
             ("Add", [t + "variance", epsilon], "variance_eps"), ("Sqrt", [t + "variance_eps"], "std"),
             ("Div", [t + "centred", t + "std"], "normalized"), ("Mul", [t + "normalized", scale], "scaled")]
    nodes = [helper.make_node(op, inputs, [t + out], name=f"{PREFIX}{ln.name}_{out}", **(
        {"keepdims": 1} if op == "ReduceMean" else {})) for op, inputs, out in steps]
    if has_bias:
        nodes.append(helper.make_node("Add", [t + "scaled", _per_channel(g, ln.input[2])], [y],
                                      name=f"{PREFIX}{ln.name}_bias"))
    else:
        nodes[-1].output[0] = y
    return nodes
