"""The int8 graph form OpenVINO's CPU plugin fuses best, made from edgeq's QDQ export.

edgeq quantizes the inputs of convolutions and linear layers (what every runtime runs in int8). OpenVINO
can run more in int8, but only where a FakeQuantize (an ONNX Q→DQ pair) sits on the right edges. The rules,
from OpenVINO 2026.4's low-precision transformations (LPT: src/common/low_precision_transformations,
markup_precisions.cpp; CPU plugin transformation_pipeline.cpp) and what NNCF 3.4 does for the same plugin:

- **Activation × activation MatMul** (attention's Q·Kᵀ and softmax·V) runs in int8 only with a quantizer on
  BOTH inputs: input 0 u8 or i8 without a zero-point, input 1 signed symmetric i8. With both, the CPU plugin
  fuses the whole attention (MatMul-Softmax-MatMul) into one int8 "Subgraph" (Snippets MHA); with either input
  float it stays f32. So: symmetric quantizers here, i8 for signed ranges, u8 with zero-point 0 for
  non-negative ones (the softmax output).
- **Add of two activations** (residual): LPT moves the dequantization after the Add and runs it on int8 data;
  a FakeQuantize on the Add's output then fuses into the producing op (an int8 Eltwise), so the residual
  stream stays int8 between blocks. A tensor that already has edgeq's quantizer (it feeds a linear layer)
  reuses it: two different quantizers on one tensor cannot fuse and both run as f32 FakeQuantize nodes.
- **ReduceMean / GlobalAveragePool** (the classifier's pooling) reduces int8 data with a quantized input.
- **Data-movement ops are transparent**: LPT propagates dequantization through Reshape, Transpose, Split,
  Squeeze/Unsqueeze, Flatten, Slice and Gather ("precision preserved"), and NNCF propagates its quantizers up
  through them. A quantizer is moved above such an op, and above a Mul/Div by a constant scalar (attention's
  q·√scale and k·√scale), when every edge below it is quantized anyway: the qkv linear's output then carries
  one quantizer, fused into the linear (an int8 FullyConnected output), instead of an f32 FakeQuantize node
  per part after its split and the split itself in f32.
- **Never int8 in OpenVINO**: Softmax, GELU, SiLU/Swish, Sigmoid, Exp, Divide, and LayerNorm's statistics;
  a quantizer whose only consumers are these is pure overhead, so none is added there (NNCF's transformer
  preset leaves them float for the same reason).
- **Zero-points**: a quantizer with zero-point 0 (symmetric; edgeq's ``w8a8`` and ``w8a8-fast`` default)
  needs no zero-point compensation, which is why NNCF's performance preset and these recipes use them
  (fastvit_t8 1.25x → 2.0x OpenVINO FP32). edgeq writes a signed symmetric quantizer as u8 with zero-point
  128 (``qdq.unsigned_activations``; the same values): the CPU plugin's int8 convolution takes u8 input and
  folds its zero-point into the kernel (VNNI multiplies u8 by s8). **Linear layers take i8** instead
  (``signed_inputs``), as NNCF writes them: a FullyConnected whose input has rank 4 (a linear layer on an
  NHWC tensor, as in ConvNeXt-style blocks) leaves an input zero-point standing as a separate f32 Subtract
  (24 of them, 1.2 of 7 ms on edgenext_xx_small; 1.05x → 1.17x FP32 i8, one paired run, session 15), and on
  inputs of rank 3 the i8 FullyConnected ran faster than u8 with zero-point 128 on an AMD Zen 5 with
  AVX512-VNNI (session 22, two paired runs each against OpenVINO FP32: levit_128s 2.09 / 2.13x → 2.35 /
  2.23x, mobilevit_xxs 1.57 / 1.47x → 1.61 / 1.52x; efficientformerv2_s0, fastvit_t8 and edgenext_xx_small
  within noise). An earlier measurement, levit_128s 3.15x → 1.90x FP32 with every quantizer i8, was made on
  a random-init model with 20 dead residual branches that OpenVINO folds away in int8 (``models.intake``);
  with live branches all-i8 ran 2.26 / 2.13x. And a quantizer
  of edgeq's that the form shares with an activation × activation MatMul (attention's V, which also feeds a
  convolution in EfficientFormerV2's local-value branch) must stay i8 for the first rule to hold: u8 with
  zero-point 128 left those MatMuls f32, each followed by a standalone f32 FakeQuantize
  (efficientformerv2_s0: 5 of its 10 attention MatMuls; 1.40x → 1.44x FP32, mean of nine paired runs of the
  two forms, faster in seven, session 16; its convolutions read i8 as fast as u8 there).
- Convolutions keep edgeq's unsigned activations: OpenVINO's int8 convolution takes u8 input on CPUs
  without AMX (a signed input is shifted to u8 with a zero-point, slower). Depthwise convolutions can be
  slower in int8 than in f32 (fastvit_t8: NNCF's transformer preset keeps 27 of 52 convolutions f32); which
  ones is a latency question the placement search answers on this form, not a fixed rule.

- **No channels-last islands**: a ConvNeXt-style block's NHWC Transposes cost OpenVINO more than its int8 linear
  layers save; ``openvino_layout`` writes those blocks channels-first, after the quantizers are in place.
- **Head transposes inside the fused attention**: the Snippets attention subgraph takes in a Transpose on q and
  on v, not the joint transpose before a qkv split; ``attention_heads`` writes one per part.
- **One Transpose per Reshape/Transpose chain, NHWC beside the convolutions**: MobileViT's unfold/fold run as
  two generic Transposes plus a slow planar reorder of the convolution's output; ``permutes`` writes each chain
  as one Transpose, with a Transpose to/from NHWC that the convolution's own reorder absorbs.

- **Each weight dequantization is its own** (``qdq.own_weight_quantizer_params``, for every form): a scale or
  zero-point initializer shared by several layers' weights made OpenVINO, with the batch fixed, run those
  layers in f32 on weights decompressed at each inference.

The added quantizers' ranges are min/max of the tensor over the bundle's calibration samples, run through the
int8 model itself (so each range sees the quantization error upstream of it). Their nodes are named
``edgeq_ov_*`` so the placement search can take them out for its FP32 reference.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..samples import Samples
from .attention_heads import scale_before_transposes, split_heads
from .openvino_layout import channels_first
from .permutes import merge_permutation_chains
from .qdq import GraphIndex

PREFIX = "edgeq_ov_"
MOVERS = frozenset({"Reshape", "Transpose", "Split", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather"})
POOLS = frozenset({"ReduceMean", "GlobalAveragePool"})
SHAPE_READERS = frozenset({"Shape", "Size"})   # they read no values, so a quantizer may move past them
_NOT_ACTIVATIONS = frozenset({"DequantizeLinear", "QuantizeLinear", "Constant", "Shape"})


def openvino_form(model: onnx.ModelProto, samples: Samples, batch_size: int = 16) -> dict:
    """Add OpenVINO's extra int8 edges to ``model`` (in place), then write its channels-last islands
    channels-first (``openvino_layout``), its attention head splits as the fused attention takes them
    (``attention_heads``) and its Reshape/Transpose chains as one Transpose (``permutes``); returns the counts
    for the sidecar."""
    g = GraphIndex(model)
    activations = _activations(g)
    edges = _propagated(g, _wanted_edges(g, activations), activations)
    by_tensor: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node, k in edges:
        by_tensor.setdefault(node.input[k], []).append((node, k))
    by_tensor = {t: uses for t, uses in by_tensor.items() if not _after_per_channel_input(g, t)}
    shared = {t: dq for t in by_tensor if (dq := _existing_quantizer(g, t)) is not None}
    fresh = [t for t in by_tensor if t not in shared]
    ranges = _calibrate(model, fresh, samples, batch_size) if fresh else {}
    inserted = {t: _insert_quantizer(g, t, k, *ranges[t]) for k, t in enumerate(fresh)}
    for tensor, uses in by_tensor.items():
        for node, k in uses:
            node.input[k] = shared[tensor] if tensor in shared else inserted[tensor][1].output[0]
    _insert_in_order(model, inserted)
    islands = channels_first(model)
    head_splits = split_heads(model)
    chains = merge_permutation_chains(model)
    return {"openvino_quantizers_added": len(inserted), "openvino_quantizers_shared": len(shared),
            "openvino_channels_first_islands": islands, "openvino_head_splits": head_splits,
            "openvino_permutation_chains": chains, "openvino_scales_moved": scale_before_transposes(model)}


def signed_inputs(model: onnx.ModelProto) -> frozenset[str]:
    """Tensors whose symmetric int8 quantizer stays i8 (zero-point 0) in the openvino form rather than u8 with
    zero-point 128 (see the rules above): those whose every reader, through its DequantizeLinear and
    data-movement ops, is a linear layer (MatMul with a quantized weight), and those that an activation ×
    activation MatMul reads (through data-movement ops, before or after the quantizer), where the form shares
    the quantizer and OpenVINO runs the MatMul in int8 only without a zero-point."""
    g = GraphIndex(model)

    def readers(tensor: str) -> list[tuple[onnx.NodeProto, str]]:
        found = []
        for node in g.consumers.get(tensor, []):
            if node.op_type in MOVERS:
                found += [r for out in node.output for r in readers(out)]
            else:
                found.append((node, tensor))
        return found

    def is_weight(tensor: str) -> bool:
        producer = g.producer.get(tensor)
        return tensor in g.inits or (producer is not None and producer.op_type == "DequantizeLinear"
                                     and producer.input[0] in g.inits)

    def linear(node: onnx.NodeProto, tensor: str) -> bool:
        return node.op_type == "MatMul" and node.input[0] == tensor and is_weight(node.input[1])

    def activation_matmul(node: onnx.NodeProto) -> bool:
        return node.op_type == "MatMul" and not any(is_weight(t) for t in node.input[:2])

    signed = set()
    for q in g.graph.node:
        zero = g.array(q.input[2]) if q.op_type == "QuantizeLinear" and len(q.input) > 2 else None
        if zero is None or zero.dtype != np.int8 or q.input[0] in g.inits:
            continue
        uses = [r for dq in g.consumers.get(q.output[0], []) if dq.op_type == "DequantizeLinear"
                for r in readers(dq.output[0])]
        if (uses and all(linear(node, tensor) for node, tensor in uses)) \
                or any(activation_matmul(node) for node, _ in uses + readers(q.input[0])):
            signed.add(q.input[0])
    return frozenset(signed)


def _activations(g: GraphIndex) -> set[str]:
    """The tensors computed from the input values at run time, other than by a quantizer or a Shape. Subgraphs
    that depend on the input's shape only (edgenext's Fourier positional encoding and the conv projecting it)
    are constants to OpenVINO, which folds them; a quantizer added on one made the CPU plugin refuse the model
    ("empty child edge"). Nodes are in topological order, so one pass finds them."""
    live = {i.name for i in g.graph.input} - set(g.inits)
    for node in g.graph.node:
        if node.op_type not in ("Shape", "Size") and any(name in live for name in node.input):
            live.update(node.output)
    return {t for t in live if t and (t not in g.producer or g.producer[t].op_type not in _NOT_ACTIVATIONS)}


def _wanted_edges(g: GraphIndex, activations: set[str]) -> set[tuple[int, int]]:
    """(node id, input index) of every edge the rules above want quantized."""
    edges = set()
    for node in g.graph.node:
        both = len(node.input) >= 2 and all(t in activations for t in node.input[:2])
        if node.op_type in ("MatMul", "Add") and both:
            edges |= {(id(node), 0), (id(node), 1)}
        elif node.op_type in POOLS and node.input[0] in activations:
            edges.add((id(node), 0))
    return edges


def _propagated(g: GraphIndex, edges: set[tuple[int, int]],
                activations: set[str]) -> list[tuple[onnx.NodeProto, int]]:
    """Move quantizers above data-movement ops and scalar scalings whose every output edge is quantized, until
    none moves."""
    moved = True
    while moved:
        moved = False
        for node in g.graph.node:
            k = _movable_input(g, node)
            if k is None or (id(node), k) in edges or node.input[k] not in activations:
                continue
            below = {(id(user), j) for out in node.output for user in g.consumers.get(out, [])
                     if user.op_type not in SHAPE_READERS for j, name in enumerate(user.input) if name == out}
            if below and below <= edges:
                edges = (edges - below) | {(id(node), k)}
                moved = True
    by_id = {id(n): n for n in g.graph.node}
    return sorted(((by_id[i], k) for i, k in edges), key=lambda e: (e[0].name, e[1]))


def _movable_input(g: GraphIndex, node: onnx.NodeProto) -> int | None:
    """The input of ``node`` that a quantizer on its output can move to: a data-movement op's data, or the
    activation of a Mul or Div by a constant scalar. The moved quantizer's range is calibrated where it lands,
    and OpenVINO folds the scalar into the dequantization. This is what lets one quantizer on attention's qkv
    linear serve q·√scale, k·√scale and v (the exported scaled dot product scales q and k separately): the
    linear then writes int8 and its split runs on int8 data, as NNCF places it."""
    if node.op_type in MOVERS:
        return 0
    if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
        return None
    scalars = [k for k in (0, 1) if (value := g.array(node.input[k])) is not None and value.size == 1]
    if node.op_type == "Div":
        return 0 if scalars == [1] else None
    return 1 - scalars[0] if len(scalars) == 1 else None


def _after_per_channel_input(g: GraphIndex, tensor: str) -> bool:
    """Whether ``tensor`` comes (through data-movement ops) from a layer whose activation input is quantized
    per channel (a depthwise conv). A quantizer on it would be fused with that layer by ONNX Runtime into a
    QLinearConv with a per-channel input zero-point, which it refuses; the file must still run there (the
    ranges are calibrated in ONNX Runtime, and ``edgeq eval`` may run it there)."""
    producer = g.producer.get(tensor)
    while producer is not None and producer.op_type in MOVERS:
        producer = g.producer.get(producer.input[0])
    if producer is None or producer.op_type not in ("Conv", "MatMul", "Gemm"):
        return False
    dq = g.producer.get(producer.input[0])
    scale = g.array(dq.input[1]) if dq is not None and dq.op_type == "DequantizeLinear" else None
    return scale is not None and scale.size > 1


def _existing_quantizer(g: GraphIndex, tensor: str) -> str | None:
    """The DequantizeLinear output of edgeq's own per-tensor quantizer of ``tensor``, if it has one. A
    per-channel one (a depthwise conv's input) is not shared: OpenVINO wants per-tensor scales on these edges,
    and it could become the sole reader of a conv's output, which ONNX Runtime would then fuse into a
    QLinearConv with a per-channel output zero-point it refuses."""
    for q in g.consumers.get(tensor, []):
        scale = g.array(q.input[1]) if q.op_type == "QuantizeLinear" else None
        if scale is not None and scale.size == 1 and q.input[0] == tensor:
            dq = next((d for d in g.consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"), None)
            if dq is not None:
                return dq.output[0]
    return None


def _calibrate(model: onnx.ModelProto, tensors: list[str], samples: Samples,
               batch_size: int) -> dict[str, tuple[float, float]]:
    """min/max of each tensor over the samples, from the int8 model run in ONNX Runtime."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    fixed = session.get_inputs()[0].shape[0]
    fixed = fixed if isinstance(fixed, int) else None
    low = dict.fromkeys(tensors, 0.0)
    high = dict.fromkeys(tensors, 0.0)
    for _, arrays in samples.groups(fixed or batch_size):
        if fixed:   # a fixed batch axis: a short last batch repeats its samples (min/max do not change)
            arrays = tuple(np.resize(a, (fixed, *a.shape[1:])) for a in arrays)
        for t, value in zip(tensors, session.run(tensors, dict(zip(names, arrays)))):
            low[t], high[t] = min(low[t], float(value.min())), max(high[t], float(value.max()))
    return {t: (low[t], high[t]) for t in tensors}


def _insert_quantizer(g: GraphIndex, tensor: str, k: int, low: float, high: float) -> list[onnx.NodeProto]:
    """A symmetric Q→DQ pair for ``tensor`` (i8 for a signed range, u8 from zero otherwise)."""
    if low < 0:
        scale, zero = max(-low, high) / 127.0, np.array(0, np.int8)
    else:
        scale, zero = high / 255.0, np.array(0, np.uint8)
    scale_name = g.add_init(f"{PREFIX}{k}_scale", np.array(max(scale, 1e-12), np.float32))
    zero_name = g.add_init(f"{PREFIX}{k}_zero_point", zero)
    q = helper.make_node("QuantizeLinear", [tensor, scale_name, zero_name], [f"{PREFIX}{k}_q"], name=f"{PREFIX}q{k}")
    dq = helper.make_node("DequantizeLinear", [q.output[0], scale_name, zero_name], [f"{PREFIX}{k}_dq"],
                          name=f"{PREFIX}dq{k}")
    return [q, dq]


def _insert_in_order(model: onnx.ModelProto, pairs: dict[str, list[onnx.NodeProto]]) -> None:
    """Each tensor's Q/DQ pair right after the node producing it (a graph input's first): topological order."""
    ordered = [n for t in (i.name for i in model.graph.input) for n in pairs.get(t, [])]
    for node in model.graph.node:
        ordered.append(node)
        ordered += [n for out in node.output for n in pairs.get(out, [])]
    del model.graph.node[:]
    model.graph.node.extend(ordered)


def strip(model: onnx.ModelProto) -> int:
    """Take the added quantizers out again (the FP32 reference of the placement search); returns how many."""
    g = GraphIndex(model)
    dqs = [n for n in model.graph.node if n.name.startswith(PREFIX + "dq")]
    for dq in dqs:
        source = g.producer[dq.input[0]].input[0]
        for user in g.consumers.get(dq.output[0], []):
            for k, name in enumerate(user.input):
                if name == dq.output[0]:
                    user.input[k] = source
    kept = [n for n in model.graph.node if not n.name.startswith(PREFIX)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return len(dqs)
