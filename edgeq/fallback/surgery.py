"""Turn quantized units of an exported QDQ ONNX model back to float, by graph surgery.

The torch exporter records the module each ONNX node came from (``pkg.torch.onnx.name_scopes``), so
the Q/DQ chain of activation quantizer ``edgeq_act_N`` and the weight DequantizeLinear of
``edgeq_weight_<layer>`` can be found without guessing. Placement search uses this to build candidate
models in milliseconds instead of re-exporting; the final artifact is always re-exported from the bundle.
"""
from __future__ import annotations

import ast
import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..export.qdq import _axis, _broadcast, GraphIndex, remove_unused_initializers


def scope(node: onnx.NodeProto) -> str | None:
    """The edgeq module a node was exported from (``edgeq_act_3``, ``edgeq_weight_conv2d``), if any."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return next((s for s in scopes if isinstance(s, str) and s.startswith("edgeq_")), None)
    return None


def float_units(model: onnx.ModelProto, act_modules: set[str], layers: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the given activation quantizers and the weights of ``layers`` in float."""
    model = copy.deepcopy(model)
    for name in act_modules:
        _bypass_chain(model, name)
    for layer in layers:
        _float_weight(model, f"edgeq_weight_{layer}")
    _float_orphan_biases(model)
    remove_unused_initializers(model)
    return model


def _bypass_chain(model: onnx.ModelProto, name: str) -> None:
    chain = [n for n in model.graph.node if scope(n) == name]
    if not chain:
        raise ValueError(f"no nodes of {name} in the ONNX graph")
    produced = {o for n in chain for o in n.output}
    source = next(i for n in chain for i in n.input[:1] if i not in produced)
    ends = {o for n in chain for o in n.output} - {i for n in chain for i in n.input}
    graph_outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for k, inp in enumerate(node.input):
            if inp in ends:
                node.input[k] = source
    for end in ends & graph_outputs:
        model.graph.node.append(helper.make_node("Identity", [source], [end]))
    for node in chain:
        model.graph.node.remove(node)


def _float_weight(model: onnx.ModelProto, name: str) -> None:
    g = GraphIndex(model)
    for dq in [n for n in model.graph.node if scope(n) == name and n.op_type == "DequantizeLinear"]:
        q = g.array(dq.input[0])
        if q is None:
            continue
        model.graph.initializer.append(numpy_helper.from_array(_dequantize(g, dq, q), dq.output[0]))
        model.graph.node.remove(dq)


def _dequantize(g: GraphIndex, dq: onnx.NodeProto, q: np.ndarray) -> np.ndarray:
    scale = g.array(dq.input[1])
    zp = g.array(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else np.zeros((), np.int64)
    axis = _axis(dq)
    return ((q.astype(np.float64) - _broadcast(zp.astype(np.float64), q.ndim, axis))
            * _broadcast(scale.astype(np.float64), q.ndim, axis)).astype(np.float32)


def _float_orphan_biases(model: onnx.ModelProto) -> None:
    """int32 bias DQs of layers whose weight is float again become float biases."""
    g = GraphIndex(model)
    for dq in [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.name.endswith("_bias_dq")]:
        users = g.consumers.get(dq.output[0], [])
        if users and all(len(u.input) > 1 and u.input[1] in g.inits for u in users):
            q = g.array(dq.input[0])
            model.graph.initializer.append(numpy_helper.from_array(_dequantize(g, dq, q), dq.output[0]))
            model.graph.node.remove(dq)
