"""The openvino form's attention pass: head transposes written where OpenVINO's fused attention takes them in.

ViT-style attention (timm's ``Attention``, as in MobileViT) splits its qkv linear's output into heads as Reshape
[B, N, 3, H, D] → one Transpose [2, 0, 3, 1, 4] → q, k, v [B, H, N, D] by Slice and Squeeze, then scales q and k by
√scale (torch's exported scaled dot product). OpenVINO's CPU plugin fuses attention (MatMul → Softmax → MatMul)
into one Snippets subgraph, and that subgraph also takes in a Transpose [0, 2, 1, 3] on q and v and a Transpose
[0, 2, 3, 1] on k that feed the MatMuls directly (OpenVINO's ``TokenizeMHASnippets``; in 2026.4 on int8
mobilevit_xxs it took in q's and v's, and ran k's beside it). The joint transpose before
the split it cannot take in: it runs as a Transpose of its own, and a slow one once the form quantizes the qkv
linear's output (int8, 16-byte rows; mobilevit_xxs at 256²: 60 µs against 13 µs in f32 for the first block).

So the joint transpose becomes a Slice and Squeeze of each part of its input, then that part's own Transpose
[0, 2, 1, 3] (``split_heads``), and a scalar Mul between such a Transpose and a MatMul or a second Transpose moves
above it, the two Transposes becoming one (``scale_before_transposes``): q·√scale → Transpose → MatMul and
k·√scale → Transpose [0, 2, 3, 1] → MatMul. The values are the same (a scalar commutes with any permutation).
Measured on an AMD EPYC with AVX512-VNNI, four paired runs at 256²: mobilevit_xxs's openvino form 1.45–1.50x →
1.48–1.55x OpenVINO FP32 (session 22, with the qkv quantizer of ``openvino_form._movable_input``).

Only a split whose parts come out [0, 2, 1, 3] of their slice is rewritten: EdgeNeXt's transposed attention
(parts [0, 2, 3, 1], normalised before their MatMul) gains nothing from it.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .openvino_layout import _perm
from .qdq import GraphIndex, remove_unused_initializers

PREFIX = "edgeq_heads_"
HEAD_ORDER = [0, 2, 1, 3]   # [B, N, H, D] → [B, H, N, D]


def split_heads(model: onnx.ModelProto) -> int:
    """Rewrite each joint head transpose followed by a split (in place; see above); returns how many."""
    g = GraphIndex(model)
    before: dict[int, list[onnx.NodeProto]] = {}
    retired: set[int] = set()
    count = 0
    for node in [n for n in model.graph.node if n.op_type == "Transpose"]:
        parts = _unit_slices(g, node)
        perm = _perm(node)
        if parts is None or perm is None or _part_order(perm) != HEAD_ORDER:
            continue
        count += 1
        for k, (slice_node, squeeze, start) in enumerate(parts):
            name = f"{PREFIX}{count}_{k}"
            bounds = [g.add_init(f"{name}_{what}", np.array([value], np.int64)) for what, value in
                      (("start", start), ("end", start + 1), ("axis", perm[0]))]
            before.setdefault(id(node), []).extend([
                helper.make_node("Slice", [node.input[0], *bounds], [f"{name}_slice"], name=f"{name}_slice"),
                helper.make_node("Squeeze", [f"{name}_slice", bounds[2]], [f"{name}_part"], name=f"{name}_squeeze"),
                helper.make_node("Transpose", [f"{name}_part"], [squeeze.output[0]], name=f"{name}_heads",
                                 perm=HEAD_ORDER)])
            retired.update({id(slice_node), id(squeeze)})
        retired.add(id(node))
    if count:
        _replace_nodes(model, before, retired)
    return count


def scale_before_transposes(model: onnx.ModelProto) -> int:
    """Move each scalar Mul that reads a Transpose and feeds only a MatMul or a Transpose above that Transpose
    (in place; see above), merging two Transposes in a row; returns how many moved."""
    moved = 0
    while (found := _next_scaled_transpose(GraphIndex(model))) is not None:
        transpose, mul, below = found
        _move_above(model, transpose, mul, below)
        moved += 1
    if moved:
        remove_unused_initializers(model)
    return moved


def _unit_slices(g: GraphIndex, node: onnx.NodeProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto, int]] | None:
    """(Slice, Squeeze, start) for each reader of ``node``'s output when every one takes one index of axis 0 and
    squeezes it away; None otherwise."""
    parts = []
    for user in g.consumers.get(node.output[0], []):
        args = [_scalar(g, t) for t in user.input[1:]] if user.op_type == "Slice" else []
        if len(args) < 3 or None in args or args[2] != 0 or args[1] != args[0] + 1 or args[3:] not in ([], [1]):
            return None
        squeezes = g.consumers.get(user.output[0], [])
        axis = _scalar(g, squeezes[0].input[1]) if len(squeezes) == 1 and squeezes[0].op_type == "Squeeze" \
            and len(squeezes[0].input) > 1 else None
        if axis != 0:
            return None
        parts.append((user, squeezes[0], args[0]))
    return parts or None


def _scalar(g: GraphIndex, name: str) -> int | None:
    value = g.array(name)
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _part_order(perm: list[int]) -> list[int]:
    """The transpose each slice of the split axis ``perm[0]`` needs: ``perm`` without it, renumbered."""
    return [a - (a > perm[0]) for a in perm[1:]]


def _next_scaled_transpose(g: GraphIndex):
    for mul in g.graph.node:
        if mul.op_type != "Mul" or len(mul.input) != 2:
            continue
        scalars = [k for k in (0, 1) if (v := g.array(mul.input[k])) is not None and v.size == 1]
        if len(scalars) != 1:
            continue
        transpose = g.producer.get(mul.input[1 - scalars[0]])
        users = g.consumers.get(mul.output[0], [])
        if transpose is not None and _perm(transpose) is not None and len(users) == 1 \
                and (users[0].op_type == "MatMul" or _perm(users[0]) is not None):
            return transpose, mul, users[0]
    return None


def _move_above(model: onnx.ModelProto, transpose: onnx.NodeProto, mul: onnx.NodeProto,
                below: onnx.NodeProto) -> None:
    """transpose → mul → below becomes mul → transpose' → below (transpose' merged into ``below`` when that is a
    Transpose); ``transpose`` stays for its other readers, if any."""
    data = list(mul.input).index(transpose.output[0])
    mul.input[data] = transpose.input[0]
    perm = _perm(transpose)
    if below.op_type == "Transpose":
        merged = [perm[p] for p in _perm(below)]   # x.transpose(perm).transpose(q) == x.transpose(perm[q])
        del below.attribute[:]
        below.attribute.append(helper.make_attribute("perm", merged))
        nodes = list(model.graph.node)
    else:
        moved = helper.make_node("Transpose", [mul.output[0]], [f"{mul.output[0]}_{PREFIX}t"],
                                 name=f"{mul.name}_{PREFIX}t", perm=perm)
        below.input[list(below.input).index(mul.output[0])] = moved.output[0]
        nodes = [m for n in model.graph.node for m in ((n, moved) if n is mul else (n,))]
    still_read = any(transpose.output[0] in n.input for n in nodes)
    del model.graph.node[:]
    model.graph.node.extend(n for n in nodes if still_read or n is not transpose)
    infos = [v for v in model.graph.value_info if v.name != mul.output[0]]   # its shape is the untransposed one
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)


def _replace_nodes(model: onnx.ModelProto, before: dict[int, list[onnx.NodeProto]], retired: set[int]) -> None:
    gone = {t for n in model.graph.node if id(n) in retired for t in n.output}
    nodes = [m for n in model.graph.node for m in (*before.get(id(n), []), n) if id(m) not in retired]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    infos = [v for v in model.graph.value_info if v.name not in gone]
    del model.graph.value_info[:]
    model.graph.value_info.extend(infos)
