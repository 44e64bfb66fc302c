"""ONNX graph passes after torch's exporter: integer weights and biases for the QDQ format.

torch exports a fake-quantized weight as ``QuantizeLinear(float W) → DequantizeLinear``. These
passes store W as an int8 initializer read by the DequantizeLinear (what runtimes fuse into
integer kernels), fold a following 2-D Transpose into it, and quantize Conv/Gemm biases to int32
with scale = input scale × weight scale, as ONNX Runtime's own quantizer does.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphIndex:
    def __init__(self, model: onnx.ModelProto):
        self.graph = model.graph
        self.inits = {i.name: i for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def array(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.inits[name]) if name in self.inits else None

    def add_init(self, name: str, value: np.ndarray) -> str:
        base, k = name, 0
        while name in self.inits:
            k += 1
            name = f"{base}_{k}"
        tensor = numpy_helper.from_array(value, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = tensor
        return name


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _broadcast(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if param.ndim == 0 or param.size == 1:
        return param.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return param.reshape(shape)


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """Replace QuantizeLinear(float initializer) with the integer initializer it would produce."""
    g = GraphIndex(model)
    folded = []
    for node in list(g.graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in g.inits:
            continue
        w, scale = g.array(node.input[0]), g.array(node.input[1])
        zp = g.array(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        if scale is None or zp is None:
            continue
        axis = _axis(node)
        q = np.round(w / _broadcast(scale, w.ndim, axis)) + _broadcast(zp.astype(np.int64), w.ndim, axis)
        info = np.iinfo(zp.dtype)
        q = np.clip(q, info.min, info.max).astype(zp.dtype)
        name = g.add_init(node.input[0] + "_quantized", q)
        for consumer in g.consumers.get(node.output[0], []):
            for k, inp in enumerate(consumer.input):
                if inp == node.output[0]:
                    consumer.input[k] = name
        folded.append(node)
    for node in folded:
        g.graph.node.remove(node)
    fold_weight_transposes(model)
    own_weight_quantizer_params(model)
    remove_unused_initializers(model)
    return len(folded)


def own_weight_quantizer_params(model: onnx.ModelProto) -> int:
    """Give every weight's DequantizeLinear its own scale and zero-point initializers.

    torch's exporter stores equal constants once, so the all-zero zero-points of every layer with the same
    output width end up shared (edgenext_xx_small: one [24] array read by six layers, conv and linear
    alike). OpenVINO then no longer sees a plain per-layer dequantization: with static shapes it runs those
    layers in f32 on weights decompressed at every inference (edgenext: 15 of 31 linear layers and 15 of 20
    convolutions; with own copies all of them run int8: 0.79x → 1.09x OpenVINO FP32 in the session-14 speed
    bench). Returns copies made."""
    g = GraphIndex(model)
    readers: dict[str, int] = {}
    for node in g.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    copies = 0
    for dq in [n for n in g.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in g.inits]:
        for k in range(1, len(dq.input)):
            name = dq.input[k]
            if name in g.inits and readers[name] > 1:
                readers[name] -= 1
                dq.input[k] = g.add_init(f"{dq.input[0]}_{'scale' if k == 1 else 'zero_point'}", g.array(name))
                copies += 1
    return copies


def fold_weight_transposes(model: onnx.ModelProto) -> int:
    """DQ(int W, axis 0) → Transpose(perm 1,0) becomes DQ(int Wᵀ, axis 1): MatMul then sees a DQ input."""
    g = GraphIndex(model)
    count = 0
    for dq in list(g.graph.node):
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in g.inits:
            continue
        users = g.consumers.get(dq.output[0], [])
        if len(users) != 1 or users[0].op_type != "Transpose":
            continue
        transpose = users[0]
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        w = g.array(dq.input[0])
        if w.ndim != 2 or perm not in (None, [1, 0]):
            continue
        dq.input[0] = g.add_init(dq.input[0] + "_t", np.ascontiguousarray(w.T))
        scale = g.array(dq.input[1])
        if scale is not None and scale.size > 1:
            _set_axis(dq, 1 - (_axis(dq) % 2))
        dq.output[0] = transpose.output[0]
        g.graph.node.remove(transpose)
        count += 1
    return count


def _set_axis(node: onnx.NodeProto, axis: int) -> None:
    for attr in node.attribute:
        if attr.name == "axis":
            attr.i = axis
            return
    node.attribute.append(helper.make_attribute("axis", axis))


def quantize_biases(model: onnx.ModelProto) -> int:
    """Float biases of Conv/Gemm whose input and weight are dequantized become int32 + DQ."""
    g = GraphIndex(model)
    count = 0
    for node in list(g.graph.node):
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3 or node.input[2] not in g.inits:
            continue
        if node.op_type == "Gemm" and not _gemm_weight_rows_are_outputs(node):
            continue
        x_dq, w_dq = g.producer.get(node.input[0]), g.producer.get(node.input[1])
        if not (x_dq and w_dq and x_dq.op_type == w_dq.op_type == "DequantizeLinear"):
            continue
        x_scale, w_scale = g.array(x_dq.input[1]), g.array(w_dq.input[1])
        bias = g.array(node.input[2])
        if x_scale is None or w_scale is None or x_scale.size != 1:
            continue
        scale = (x_scale.reshape(()) * w_scale.reshape(-1)).astype(np.float32)
        scale = np.broadcast_to(scale, bias.shape).copy() if scale.size == 1 else scale
        q = np.clip(np.round(bias / scale), -2 ** 31, 2 ** 31 - 1).astype(np.int32)
        # one int32 copy per consumer: a shared float bias gets a different scale in each node
        base = f"{node.input[2]}_{node.name}"
        q_name = g.add_init(base + "_int32", q)
        s_name = g.add_init(base + "_scale", scale)
        z_name = g.add_init(base + "_zero_point", np.zeros_like(q))
        out = base + "_dequantized"
        dq = helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out],
                              name=node.name + "_bias_dq", axis=0)
        g.graph.node.insert(list(g.graph.node).index(node), dq)
        node.input[2] = out
        count += 1
    remove_unused_initializers(model)
    return count


def unsigned_activations(model: onnx.ModelProto, keep_signed: frozenset[str] = frozenset()) -> int:
    """Symmetric int8 activations become uint8 with zero-point 128: the same values (q + 128 on both
    sides), and the u8 form is what x86 int8 kernels run fast (ONNX Runtime takes s8 activations on a
    slower path). Quantizers of the tensors in ``keep_signed`` stay int8."""
    g = GraphIndex(model)
    renamed: dict[str, str] = {}
    stale: set[str] = set()
    count = 0
    for q in [n for n in g.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in g.inits]:
        zp = g.array(q.input[2]) if len(q.input) > 2 and q.input[2] else None
        if zp is None or zp.dtype != np.int8 or q.input[0] in keep_signed:
            continue
        if q.input[2] not in renamed:
            renamed[q.input[2]] = g.add_init(q.input[2] + "_u8", (zp.astype(np.int16) + 128).astype(np.uint8))
        new_zp = renamed[q.input[2]]
        for dq in g.consumers.get(q.output[0], []):
            if dq.op_type == "DequantizeLinear" and len(dq.input) > 2 and dq.input[2] == q.input[2]:
                dq.input[2] = new_zp
        q.input[2] = new_zp
        stale.add(q.output[0])
        count += 1
    kept = [v for v in g.graph.value_info if v.name not in stale]  # their recorded type is int8
    del g.graph.value_info[:]
    g.graph.value_info.extend(kept)
    remove_unused_initializers(model)
    return count


def _gemm_weight_rows_are_outputs(node: onnx.NodeProto) -> bool:
    return next((a.i for a in node.attribute if a.name == "transB"), 0) == 1


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def count_ops(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def toposort(model: onnx.ModelProto) -> None:
    """Reorder nodes topologically (converters such as float16 append casts out of order)."""
    nodes = list(model.graph.node)
    available = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer} | {""}
    ordered, pending = [], nodes
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("graph has a cycle or an undefined input")
        for n in ready:
            available.update(n.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
