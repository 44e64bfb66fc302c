"""The ONNX passes that turn torch's fake-quant export into integer QDQ weights and biases."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeq.export.qdq import fold_weight_quantizers, quantize_biases, toposort


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def two_heads_sharing_a_bias() -> onnx.ModelProto:
    """x → Q/DQ → two Gemm heads whose weights are fake-quantized and whose bias is one initializer."""
    rng = np.random.default_rng(0)
    inits = [_init("xs", np.float32(0.05)), _init("xz", np.uint8(128)),
             _init("bias", rng.standard_normal(3).astype(np.float32))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"])]
    for i in range(2):
        w = rng.standard_normal((3, 4)).astype(np.float32)
        scale = (np.abs(w).max(1) / 127).astype(np.float32)
        inits += [_init(f"w{i}", np.round(w / scale[:, None]) * scale[:, None]),
                  _init(f"ws{i}", scale), _init(f"wz{i}", np.zeros(3, np.int8))]
        nodes += [helper.make_node("QuantizeLinear", [f"w{i}", f"ws{i}", f"wz{i}"], [f"wq{i}"], axis=0),
                  helper.make_node("DequantizeLinear", [f"wq{i}", f"ws{i}", f"wz{i}"], [f"wd{i}"], axis=0),
                  helper.make_node("Gemm", ["xd", f"wd{i}", "bias"], [f"y{i}"], transB=1, name=f"head{i}")]
    nodes.append(helper.make_node("Add", ["y0", "y1"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_weights_fold_and_shared_bias_gets_one_copy_per_node():
    model = two_heads_sharing_a_bias()
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    before = run(model, x)
    assert fold_weight_quantizers(model) == 2
    assert quantize_biases(model) == 2
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 1          # only the activation is quantized at run time
    int8 = [i for i in model.graph.initializer if i.data_type == TensorProto.INT8 and len(i.dims) == 2]
    int32 = [i for i in model.graph.initializer if i.data_type == TensorProto.INT32 and np.any(numpy_helper.to_array(i))]
    assert len(int8) == 2 and len(int32) == 2
    np.testing.assert_allclose(run(model, x), before, atol=0.05)  # int32 bias rounding only


def test_toposort_orders_appended_nodes():
    model = two_heads_sharing_a_bias()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(reversed(nodes))
    toposort(model)
    onnx.checker.check_model(model)
