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

A chain is rewritten only when its composite is a plain transpose of its input (checked element by element on
index arrays), with the batch the outermost axis on both sides, so the values are the same for every batch.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, shape_inference

from .openvino_layout import TO_NCHW, TO_NHWC, _perm
from .qdq import GraphIndex, remove_unused_initializers

PREFIX = "edgeq_perm_"
CHAIN_OPS = frozenset({"Reshape", "Transpose"})


def merge_permutation_chains(model: onnx.ModelProto) -> int:
    """Rewrite ``model``'s Reshape/Transpose chains (in place; see above); returns how many."""
    g = GraphIndex(model)
    outputs = {o.name for o in model.graph.output}
    shapes = _static_shapes(model, 1), _static_shapes(model, 2)
    replacements: dict[int, list[onnx.NodeProto]] = {}
    retired: set[int] = set()
    for k, chain in enumerate(_chains(g, outputs)):
        nodes = _rewritten(g, chain, [s.get(chain[0].input[0]) for s in shapes], k)
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
    inferred = shape_inference.infer_shapes(fixed)
    shapes = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input]:
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
        if dims and all(dims):
            shapes[v.name] = tuple(dims)
    return shapes


def _chains(g: GraphIndex, outputs: set[str]) -> list[list[onnx.NodeProto]]:
    """Maximal runs of Reshape/Transpose nodes, each feeding only the next, with two Transposes or more, or one
    Transpose next to a convolution."""
    found = []
    for node in g.graph.node:
        producer = g.producer.get(node.input[0]) if node.op_type in CHAIN_OPS else None
        if node.op_type not in CHAIN_OPS or (producer is not None and _next_in_chain(g, producer, outputs)):
            continue
        chain = [node]
        while (nxt := _next_in_chain(g, chain[-1], outputs)) is not None:
            chain.append(nxt)
        transposes = sum(n.op_type == "Transpose" for n in chain)
        near_conv = len(chain) > 1 and (_from_conv(g, chain) or _into_conv(g, chain))
        if transposes >= 2 or (transposes == 1 and near_conv):
            found.append(chain)
    return found


def _next_in_chain(g: GraphIndex, node: onnx.NodeProto, outputs: set[str]) -> onnx.NodeProto | None:
    users = g.consumers.get(node.output[0], []) if node.op_type in CHAIN_OPS else []
    if len(users) != 1 or node.output[0] in outputs or users[0].op_type not in CHAIN_OPS:
        return None
    return users[0] if users[0].input[0] == node.output[0] else None


def _from_conv(g: GraphIndex, chain: list[onnx.NodeProto]) -> bool:
    producer = g.producer.get(chain[0].input[0])
    return producer is not None and producer.op_type == "Conv"


def _into_conv(g: GraphIndex, chain: list[onnx.NodeProto]) -> bool:
    """Whether the chain's output is read only by convolutions (directly or through its own Q→DQ pair)."""
    users = g.consumers.get(chain[-1].output[0], [])
    if len(users) == 1 and users[0].op_type == "QuantizeLinear":
        dqs = g.consumers.get(users[0].output[0], [])
        users = [u for dq in dqs if dq.op_type == "DequantizeLinear" for u in g.consumers.get(dq.output[0], [])]
    return bool(users) and all(u.op_type == "Conv" for u in users)


def _steps(g: GraphIndex, chain: list[onnx.NodeProto]) -> list[tuple[str, list[int]]] | None:
    steps = []
    for node in chain:
        if node.op_type == "Transpose":
            perm = _perm(node)
            if perm is None:
                return None
            steps.append(("transpose", perm))
        else:
            shape = g.array(node.input[1])
            allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
            if shape is None or (allowzero and 0 in shape.tolist()):
                return None
            steps.append(("reshape", shape.astype(int).tolist()))
    return steps


def _composite(shape: tuple[int, ...], steps) -> np.ndarray | None:
    """The chain applied to an array of flat indices of shape ``shape``: which input element each output
    element is (None where a step does not apply)."""
    index = np.arange(int(np.prod(shape))).reshape(shape)
    try:
        for kind, arg in steps:
            if kind == "transpose":
                index = index.transpose(arg)
            else:   # ONNX Reshape: 0 copies the input's dimension, -1 is inferred
                index = index.reshape([index.shape[i] if d == 0 else d for i, d in enumerate(arg)])
    except ValueError:
        return None
    return index


def _rewritten(g: GraphIndex, chain: list[onnx.NodeProto], in_shapes, k: int) -> list[onnx.NodeProto] | None:
    """The chain's replacement, given its input's shapes at batch 1 and 2; None when it is no transpose."""
    steps = _steps(g, chain)
    if steps is None or None in in_shapes:
        return None
    one, two = (_composite(shape, steps) for shape in in_shapes)
    if one is None or two is None or not _batch_outermost(one, two):
        return None
    source = one.ravel()   # output position -> input flat index, for one sample
    nhwc_in = len(in_shapes[0]) == 4 and in_shapes[0][0] == 1 and _from_conv(g, chain)
    nhwc_out = one.ndim == 4 and one.shape[0] == 1 and _into_conv(g, chain)
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
    return nodes


def _batch_outermost(one: np.ndarray, two: np.ndarray) -> bool:
    """Whether two samples' chain is one sample's chain per sample, the batch folded into the leading axis."""
    n = one.size
    return (two.shape[1:] == one.shape[1:] and two.shape[0] == 2 * one.shape[0]
            and np.array_equal(two.ravel(), np.concatenate([one.ravel(), one.ravel() + n])))


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
