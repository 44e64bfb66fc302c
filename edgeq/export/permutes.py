"""The openvino form's permutation pass: Reshape/Transpose chains written as one Transpose, with the NHWC side
next to the convolution.

MobileViT's unfold (a convolution's NCHW feature map → tokens of 2×2 patches) is Reshape-Transpose-Reshape-
Transpose-Reshape, and its fold the reverse, into the next convolution. OpenVINO's CPU plugin runs each Transpose
with its generic kernel, and before the unfold's first one it reorders the convolution's output from the
convolution's own layout (NHWC in int8, blocked in f32) to planar NCHW, with a slow reference reorder
(mobilevit_xxs at 256²: 0.34 of 4.8 ms of int8 op time, one reorder at stage 3). The same element order is a
Transpose to NHWC, which the plugin merges with the convolution's output reorder, then one 6-D Transpose; the
fold likewise ends in a Transpose to NCHW that the next convolution's input reorder absorbs. Measured on an AMD
EPYC with AVX512-VNNI (session 20, paired runs, 256×256): mobilevit_xxs's openvino form 1.28–1.43x → 1.65–1.68x
OpenVINO FP32, and the FP32 graph written the same way 1.19x (the layout's share, as for ``openvino_layout``).

Attention's Kᵀ reaches its MatMul as Reshape-Transpose-Reshape, then the scalar Mul of the exported scaled dot
product and the quantizer. The plugin folds a Transpose that feeds a MatMul into the MatMul (``transpose_b``), but
not through the Mul and Q→DQ in between: a scalar Mul and a per-tensor Q→DQ pair commute with any permutation, so
they move above the chain (same values), and the chain, now the MatMul's input, becomes that one Transpose.
Where the form quantizes the qkv linear's output instead, the scalar Mul is alone between the chain and the MatMul,
and moves the same way.

EfficientFormerV2's attention takes q, k and v from 1×1 convolutions on an NCHW map: conv → Q→DQ → Reshape
[B, heads, d, N] (→ Transpose) → MatMul. OpenVINO fuses the quantizer into the convolution, whose int8 output
is NHWC, and reordered it to planar for each Reshape. Read as NHWC instead (a Transpose the convolution's
reorder absorbs, a Reshape to [B, N, heads, d], one Transpose), efficientformerv2_s0's int8 reorders go from 24
(0.17 ms of 2.95 ms op time) to 9 (0.07 ms) for 0.07 ms more in small Transposes, and its one attention without
talking heads fuses into an int8 subgraph (MatMul-Softmax-MatMul, 0.06 ms). Measured on the AMD EPYC
with AVX512-VNNI (session 23, three paired runs against OpenVINO FP32, 224²): 1.40 → 1.48x, 1.58 → 1.65x,
1.65 → 1.65x; no other speed-suite model has such a chain.

Its attention output, (attn @ v) as [B, heads, N, d], reaches the local-value convolution's output as
Transpose(0, 1, 3, 2) → Reshape [B, heads·d, H, W] → Add. OpenVINO fuses that Add into the convolution, which
reads the other summand NHWC: the plugin ran the inner-axes Transpose with its generic kernel (23 µs for
[1, 8, 49, 128] int8, against 7 µs for a (0, 2, 1, 3) one of the same size) and then reordered its result to
NHWC. Written NHWC (Transpose(0, 2, 1, 3), Reshape [B, H, W, heads·d], Transpose to NCHW, which the reorder
absorbs), efficientformerv2_s0's int8 Transposes go from 228 to 142 µs of 4.4 ms op time; paired against
OpenVINO FP32, 1000 runs each (session 24, AMD EPYC with AVX512-VNNI, 224²): 1.51 → 1.57x.

A chain is rewritten only when its composite is a plain transpose of its input (checked element by element on
index arrays), with the batch the outermost axis on both sides, so the values are the same for every batch.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import helper, shape_inference

from .openvino_layout import TO_NCHW, TO_NHWC, _perm
from .qdq import GraphIndex, remove_unused_initializers

PREFIX = "edgeq_perm_"
CHAIN_OPS = frozenset({"Reshape", "Transpose"})


def merge_permutation_chains(model: onnx.ModelProto) -> int:
    """Rewrite ``model``'s Reshape/Transpose chains (in place; see above); returns how many."""
    outputs = {o.name for o in model.graph.output}
    _hoist_elementwise_into_matmuls(model, outputs)
    g = GraphIndex(model)
    shapes = _static_shapes(model, 1), _static_shapes(model, 2)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    retired: set[int] = set()
    for k, chain in enumerate(_chains(g, outputs)):
        nodes = _rewritten(g, chain, shapes, k)
        if nodes is not None:
            replacements[id(chain[0])] = nodes
            retired.update(id(n) for n in chain[1:])
    if not replacements:
        return 0
    gone = {t for node in model.graph.node if id(node) in retired for t in node.output}
    kept = [n for node in model.graph.node if id(node) not in retired for n in replacements.get(id(node), [node])]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    infos = [v for v in model.graph.value_info if v.name not in gone]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
    remove_unused_initializers(model)
    return len(replacements)


def _static_shapes(model: onnx.ModelProto, batch: int) -> dict[str, tuple[int, ...]]:
    """Each tensor's static shape with the graph inputs' leading (batch) axis set to ``batch``."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]
    for tensor in fixed.graph.input:
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    try:   # data propagation reads the reshapes' targets that the exporter computes from Shape and Concat
        inferred = shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:   # noqa: BLE001 (onnx raises several kinds; without it the constant targets are still known)
        inferred = shape_inference.infer_shapes(fixed)
    shapes = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        if dims and all(dims):
            shapes[v.name] = tuple(dims)
    return shapes


def _hoist_elementwise_into_matmuls(model: onnx.ModelProto, outputs: set[str]) -> None:
    """Move [scalar Mul →] per-tensor Q → DQ, or a scalar Mul alone, that sit between a chain with a Transpose
    and a MatMul above the chain (see above): the chain then feeds the MatMul itself."""
    g = GraphIndex(model)
    moves = []
    for matmul in [n for n in model.graph.node if n.op_type == "MatMul"]:
        for slot, name in enumerate(matmul.input):
            ops = _elementwise_above(g, name, outputs)
            chain = _chain_above(g, ops[-1].input[_data_slot(g, ops[-1])], outputs) if ops else []
            if any(n.op_type == "Transpose" for n in chain):
                moves.append((matmul, slot, ops, chain))
    if not moves:
        return
    before: dict[int, list[onnx.NodeProto]] = {}   # the moved nodes, now in order just before each chain
    for matmul, slot, ops, chain in moves:   # ops: [DQ, Q][, Mul], from the MatMul up
        top = ops[-1]
        top.input[_data_slot(g, top)], chain[0].input[0] = chain[0].input[0], ops[0].output[0]
        matmul.input[slot] = chain[-1].output[0]
        before[id(chain[0])] = ops[::-1]
    moved = {id(op) for ops in before.values() for op in ops}
    nodes = [m for n in model.graph.node if id(n) not in moved for m in (*before.get(id(n), []), n)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    reshaped = {op.output[0] for ops in before.values() for op in ops}   # their shapes are the chain's input's now
    infos = [v for v in model.graph.value_info if v.name not in reshaped]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)


def _elementwise_above(g: GraphIndex, name: str, outputs: set[str]) -> list[onnx.NodeProto]:
    """A per-tensor DQ and Q, a Mul by a scalar constant, or all three, producing ``name``, each read only by
    the next (from the MatMul up); [] when the tensor is not made so. The quantizer is absent where the form
    quantizes the qkv linear's output instead (``openvino_form._movable_input``)."""
    ops = []
    for op in ("DequantizeLinear", "QuantizeLinear", "Mul"):   # each one optional; the kinds found decide
        node = g.producer.get(name)
        if node is None or node.op_type != op or len(g.consumers.get(node.output[0], [])) != 1 \
                or node.output[0] in outputs:
            continue
        data = _data_slot(g, node)
        if any(p is None or p.size != 1 for p in (g.array(i) for k, i in enumerate(node.input) if k != data)):
            continue
        ops.append(node)
        name = node.input[data]
    kinds = [n.op_type for n in ops]
    return ops if kinds in (["DequantizeLinear", "QuantizeLinear"], ["DequantizeLinear", "QuantizeLinear", "Mul"],
                            ["Mul"]) else []


def _data_slot(g: GraphIndex, node: onnx.NodeProto) -> int:
    """Which input of a Q, DQ or Mul is the tensor (a Mul may have its constant first)."""
    return 1 if node.op_type == "Mul" and node.input[0] in g.inits else 0


def _chain_above(g: GraphIndex, name: str, outputs: set[str]) -> list[onnx.NodeProto]:
    """The Reshape/Transpose run ending in ``name``, each node read only by the next (first node first)."""
    chain = []
    while (node := g.producer.get(name)) is not None and node.op_type in CHAIN_OPS and node.output[0] not in outputs \
            and len(g.consumers.get(node.output[0], [])) == 1:
        chain.insert(0, node)
        name = node.input[0]
    return chain


def _chains(g: GraphIndex, outputs: set[str]) -> list[list[onnx.NodeProto]]:
    """Maximal runs of Reshape/Transpose nodes, each feeding only the next, with two Transposes or more, one
    Transpose next to a convolution or into a MatMul, or any run from a convolution into a MatMul."""
    found = []
    for node in g.graph.node:
        producer = g.producer.get(node.input[0]) if node.op_type in CHAIN_OPS else None
        if node.op_type not in CHAIN_OPS or (producer is not None and _next_in_chain(g, producer, outputs)):
            continue
        chain = [node]
        while (nxt := _next_in_chain(g, chain[-1], outputs)) is not None:
            chain.append(nxt)
        transposes = sum(n.op_type == "Transpose" for n in chain)
        near = len(chain) > 1 and (_from_conv(g, chain) or _into_conv(g, chain) or _into_matmul(g, chain))
        attention_operand = _from_conv(g, chain) and _into_matmul(g, chain)   # even a lone Reshape
        if transposes >= 2 or (transposes == 1 and near) or attention_operand:
            found.append(chain)
    return found


def _next_in_chain(g: GraphIndex, node: onnx.NodeProto, outputs: set[str]) -> onnx.NodeProto | None:
    users = g.consumers.get(node.output[0], []) if node.op_type in CHAIN_OPS else []
    if len(users) != 1 or node.output[0] in outputs or users[0].op_type not in CHAIN_OPS:
        return None
    return users[0] if users[0].input[0] == node.output[0] else None


def _from_conv(g: GraphIndex, chain: list[onnx.NodeProto]) -> bool:
    """Whether the chain reads a convolution's output (directly or through its quantizer's Q→DQ pair, which
    OpenVINO fuses into the convolution: the chain then reads the convolution's NHWC int8 output)."""
    return _made_by_conv(g, chain[0].input[0])


def _made_by_conv(g: GraphIndex, name: str) -> bool:
    """Whether ``name`` is a convolution's output, directly or through its quantizer's Q→DQ pair."""
    producer = g.producer.get(name)
    if producer is not None and producer.op_type == "DequantizeLinear":
        q = g.producer.get(producer.input[0])
        producer = g.producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
    return producer is not None and producer.op_type == "Conv"


def _into_conv(g: GraphIndex, chain: list[onnx.NodeProto]) -> bool:
    """Whether the chain's output is read only by convolutions (directly or through its own Q→DQ pair), or is
    added to a convolution's output (the plugin fuses that Add into the convolution, which reads the other
    summand in its own NHWC layout)."""
    out = chain[-1].output[0]
    users = g.consumers.get(out, [])
    if len(users) == 1 and users[0].op_type == "Add" and len(users[0].input) == 2:
        other = next(i for i in users[0].input if i != out)   # fused only where the Add is its one reader
        return _made_by_conv(g, other) and len(g.consumers.get(other, [])) == 1
    if len(users) == 1 and users[0].op_type == "QuantizeLinear":
        dqs = g.consumers.get(users[0].output[0], [])
        users = [u for dq in dqs if dq.op_type == "DequantizeLinear" for u in g.consumers.get(dq.output[0], [])]
    return bool(users) and all(u.op_type == "Conv" for u in users)


def _into_matmul(g: GraphIndex, chain: list[onnx.NodeProto]) -> bool:
    users = g.consumers.get(chain[-1].output[0], [])
    return len(users) == 1 and users[0].op_type == "MatMul"


def _steps(chain: list[onnx.NodeProto], shapes: dict) -> list[tuple[str, list[int]]] | None:
    """The chain as (transpose, perm) and (reshape, output shape) steps at the batch ``shapes`` were inferred at."""
    steps = []
    for node in chain:
        if node.op_type == "Transpose":
            perm = _perm(node)
            if perm is None:
                return None
            steps.append(("transpose", perm))
        elif node.output[0] in shapes:
            steps.append(("reshape", list(shapes[node.output[0]])))
        else:
            return None
    return steps


def _composite(shape: tuple[int, ...], steps) -> np.ndarray | None:
    """The chain applied to an array of flat indices of shape ``shape``: which input element each output
    element is (None where a step does not apply)."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    try:
        for kind, arg in steps:
            index = index.transpose(arg) if kind == "transpose" else index.reshape(arg)
    except ValueError:
        return None
    return index


def _rewritten(g: GraphIndex, chain: list[onnx.NodeProto], shapes, k: int) -> list[onnx.NodeProto] | None:
    """The chain's replacement, given the tensors' static shapes at batch 1 and 2; None when it is no transpose."""
    in_shapes = [s.get(chain[0].input[0]) for s in shapes]
    steps = [_steps(chain, s) for s in shapes]
    if None in in_shapes or None in steps:
        return None
    one, two = (_composite(shape, s) for shape, s in zip(in_shapes, steps))
    if one is None or two is None or not _batch_outermost(one, two):
        return None
    nhwc_in = len(in_shapes[0]) == 4 and in_shapes[0][0] == 1 and _from_conv(g, chain)
    nhwc_out = one.ndim == 4 and one.shape[0] == 1 and _into_conv(g, chain)
    axes = None if nhwc_in or nhwc_out else _axes_perm(in_shapes[0], one)
    if axes is not None:   # a permutation of the input's own axes: one Transpose (a MatMul folds it)
        return [helper.make_node("Transpose", [chain[0].input[0]], [chain[-1].output[0]], name=f"{PREFIX}{k}_0",
                                 perm=axes)]
    source = one.ravel()   # output position -> input flat index, for one sample
    if nhwc_in:    # the input read as the NHWC tensor the first Transpose makes
        source = np.argsort(_nhwc_order(in_shapes[0][1:]))[source]
    if nhwc_out:   # the output written NHWC, then a Transpose to NCHW
        source = source.reshape(one.shape[1:]).transpose(1, 2, 0).ravel()
    found = _as_transpose(source)
    if found is None:
        return None
    dims, perm = found
    out_shape = (one.shape[2], one.shape[3], one.shape[1]) if nhwc_out else one.shape[1:]
    names = iter(f"{PREFIX}{k}_{i}" for i in range(8))
    nodes, tensor = [], chain[0].input[0]

    def add(op: str, inputs: list[str], **attrs) -> None:
        nonlocal tensor
        name = next(names)
        nodes.append(helper.make_node(op, [tensor, *inputs], [name], name=name, **attrs))
        tensor = name

    if nhwc_in:
        add("Transpose", [], perm=TO_NHWC)
    if perm != sorted(perm):
        add("Reshape", [_shape(g, [-1, *dims])])
        add("Transpose", [], perm=[0, *(p + 1 for p in perm)])
    add("Reshape", [_shape(g, [-1, *out_shape])])
    if nhwc_out:
        add("Transpose", [], perm=TO_NCHW)
    nodes[-1].output[0] = chain[-1].output[0]
    if len(nodes) >= len(chain) and not (nhwc_in or nhwc_out):
        return None   # no shorter (attention's output Transpose-Reshape would become a 5-D Reshape-Transpose-Reshape)
    return nodes


def _batch_outermost(one: np.ndarray, two: np.ndarray) -> bool:
    """Whether two samples' chain is one sample's chain per sample, the batch folded into the leading axis."""
    n = one.size
    return (two.shape[1:] == one.shape[1:] and two.shape[0] == 2 * one.shape[0]
            and np.array_equal(two.ravel(), np.concatenate([one.ravel(), one.ravel() + n])))


def _axes_perm(shape: tuple[int, ...], composite: np.ndarray) -> list[int] | None:
    """The permutation of ``shape``'s axes, batch axis first, that ``composite`` is; None when it is none."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    for rest in itertools.permutations(range(1, len(shape))):
        perm = [0, *rest]
        if index.transpose(perm).shape == composite.shape and np.array_equal(index.transpose(perm), composite):
            return perm
    return None


def _nhwc_order(chw: tuple[int, ...]) -> np.ndarray:
    """NCHW flat index of each element of the NHWC tensor, in NHWC order (one sample)."""
    return np.arange(int(np.prod(chw))).reshape(chw).transpose(1, 2, 0).ravel()


def _as_transpose(source: np.ndarray) -> tuple[list[int], list[int]] | None:
    """``(dims, perm)`` with ``arange(n).reshape(dims).transpose(perm).ravel() == source``, dims as few as can
    be; None when ``source`` is no transpose. Output axes are read off innermost first: each one's stride is
    the step in input index from one block to the next, its length how long that step holds."""
    n, axes, block = source.size, [], 1   # axes: (length, stride), innermost output axis first
    if source[0] != 0:
        return None
    while block < n:
        stride, length = int(source[block]), 1
        while block * (length + 1) <= n and source[block * length] == stride * length:
            length += 1
        while (n // block) % length:   # a run past a divisor of the size left: back to the last one
            length -= 1
        if length == 1:
            return None
        axes.append((length, stride))
        block *= length
    by_stride = sorted(axes, key=lambda a: a[1])   # the input's axes, innermost first
    expected = 1
    for length, stride in by_stride:
        if stride != expected:
            return None
        expected *= length
    dims = [length for length, _ in reversed(by_stride)]
    order = [by_stride[::-1].index(a) for a in reversed(axes)]   # outermost output axis first
    if not np.array_equal(np.arange(n).reshape(dims).transpose(order).ravel(), source):
        return None
    return dims, order


def _shape(g: GraphIndex, dims: list[int]) -> str:
    name = PREFIX + "shape_" + "_".join(str(d).replace("-", "m") for d in dims)
    return name if name in g.inits else g.add_init(name, np.array(dims, np.int64))
