"""The openvino form's layout pass on hand-written graphs: a channels-last island is rewritten channels-first
and computes the same in ONNX Runtime; anything it cannot rewrite is left exactly as it was."""
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgeq.export.openvino_layout import channels_first

C, HIDDEN = 8, 16
SHAPES = {"y": [1, C, 6, 5], "u": [1, 6, 5, C]}


def _graph(island: list[onnx.NodeProto], inits: list[onnx.TensorProto], outputs=("y",)) -> onnx.ModelProto:
    """x (NCHW) → conv → Transpose to NHWC → ``island`` (reads ``t``, ends in ``u``) → Transpose back → y."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]), *island,
             helper.make_node("Transpose", ["u"], ["y"], perm=[0, 3, 1, 2])]
    inits = [numpy_helper.from_array(rng.standard_normal((C, 3, 3, 3)).astype(np.float32), "w0"), *inits]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 5])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPES[o]) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto) -> list[np.ndarray]:
    x = np.random.default_rng(1).standard_normal((1, 3, 6, 5)).astype(np.float32)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def _mlp_block() -> onnx.ModelProto:
    """LayerNorm, a linear layer with an int8 per-channel weight and a per-tensor activation quantizer, GELU
    (erf form), a float linear layer, a layer scale shaped [C] and a bias shaped [1, 1, 1, C]."""
    rng = np.random.default_rng(2)
    arrays = {"ln_s": rng.uniform(0.5, 1.5, C), "ln_b": rng.standard_normal(C),
              "w1_q": rng.integers(-127, 128, (C, HIDDEN)), "w1_s": rng.uniform(0.005, 0.02, HIDDEN),
              "w1_z": np.zeros(HIDDEN), "b1": rng.standard_normal(HIDDEN), "a_s": np.array(0.05),
              "a_z": np.array(0), "root2": np.array(np.sqrt(2.0)), "one": np.array(1.0), "half": np.array(0.5),
              "w2": rng.standard_normal((HIDDEN, C)) * 0.2, "gamma": rng.uniform(0.1, 1.0, C),
              "b2": rng.standard_normal((1, 1, 1, C))}
    dtypes = {"w1_q": np.int8, "w1_z": np.int8, "a_z": np.int8}
    inits = [numpy_helper.from_array(np.asarray(v).astype(dtypes.get(k, np.float32)), k) for k, v in arrays.items()]
    island = [helper.make_node("LayerNormalization", ["t", "ln_s", "ln_b"], ["n"], axis=-1, epsilon=1e-6),
              helper.make_node("QuantizeLinear", ["n", "a_s", "a_z"], ["nq"]),
              helper.make_node("DequantizeLinear", ["nq", "a_s", "a_z"], ["nd"]),
              helper.make_node("DequantizeLinear", ["w1_q", "w1_s", "w1_z"], ["w1"], axis=1),
              helper.make_node("MatMul", ["nd", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h"]),
              helper.make_node("Div", ["h", "root2"], ["e0"]), helper.make_node("Erf", ["e0"], ["e1"]),
              helper.make_node("Add", ["e1", "one"], ["e2"]), helper.make_node("Mul", ["h", "e2"], ["e3"]),
              helper.make_node("Mul", ["e3", "half"], ["g"]),
              helper.make_node("MatMul", ["g", "w2"], ["o0"]), helper.make_node("Mul", ["gamma", "o0"], ["o1"]),
              helper.make_node("Add", ["o1", "b2"], ["u"])]
    return _graph(island, inits)


def test_a_channels_last_mlp_block_runs_channels_first_and_computes_the_same():
    model = _mlp_block()
    before = _run(model)[0]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    assert channels_first(rewritten) == 1
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Transpose" not in ops and "MatMul" not in ops and "LayerNormalization" not in ops
    assert ops.count("Conv") == 3
    weight_dq = next(n for n in rewritten.graph.node if n.op_type == "DequantizeLinear" and "w1_q" in n.input[0])
    assert [a.i for a in weight_dq.attribute if a.name == "axis"] == [0]   # per output channel of the conv
    after = _run(rewritten)[0]
    assert after.shape == before.shape == (1, C, 6, 5)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def _unchanged(model: onnx.ModelProto) -> None:
    before = model.SerializeToString()
    assert channels_first(model) == 0
    assert model.SerializeToString() == before


def test_an_island_with_a_reshape_or_a_tensor_from_outside_is_left_as_it_was():
    shape = numpy_helper.from_array(np.array([1, 30, C], np.int64), "shape")
    back = numpy_helper.from_array(np.array([1, 6, 5, C], np.int64), "back")
    _unchanged(_graph([helper.make_node("Reshape", ["t", "shape"], ["r"]),
                       helper.make_node("Reshape", ["r", "back"], ["u"])], [shape, back]))
    _unchanged(_graph([helper.make_node("Add", ["t", "c"], ["u"])], []))   # c is NCHW: not channels-last
    scale = numpy_helper.from_array(np.ones(C, np.float32), "s")
    _unchanged(_graph([helper.make_node("Mul", ["t", "s"], ["u"])], [scale], outputs=("y", "u")))  # NHWC output


def test_a_closing_transpose_that_is_a_graph_output_keeps_its_name():
    scale = numpy_helper.from_array(np.arange(1, C + 1, dtype=np.float32), "s")
    model = _graph([helper.make_node("Mul", ["t", "s"], ["u"])], [scale])
    before = _run(model)[0]
    assert channels_first(model) == 1
    assert [o.name for o in model.graph.output] == ["y"] and model.graph.node[-1].op_type == "Identity"
    np.testing.assert_allclose(_run(model)[0], before, rtol=1e-6)
