"""The openvino form's attention pass (edgeq/export/attention_heads.py): head transposes per part, scales above
them; the same values."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeq.export import attention_heads


def _split_attention(perm: list[int]):
    """x [b, 4, 3, 2, 5] → Transpose ``perm`` → q, k, v by Slice + Squeeze of axis 0 → q·s @ (k·s)ᵀ, @ v."""
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("zero", [0]), ("one", [1]), ("two", [2]), ("three", [3]))]
    inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "s"))
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=perm)]
    for i, (lo, hi) in enumerate((("zero", "one"), ("one", "two"), ("two", "three"))):
        nodes += [helper.make_node("Slice", ["t", lo, hi, "zero"], [f"s{i}"]),
                  helper.make_node("Squeeze", [f"s{i}", "zero"], [f"p{i}"])]
    nodes += [helper.make_node("Mul", ["p0", "s"], ["q"]), helper.make_node("Mul", ["s", "p1"], ["k"]),
              helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMul", ["q", "kt"], ["a"]), helper.make_node("Softmax", ["a"], ["w"]),
              helper.make_node("MatMul", ["w", "p2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4, 3, 2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_vit_head_split_becomes_one_transpose_per_part_with_the_scales_above_them():
    model = _split_attention([2, 0, 3, 1, 4])
    x = np.random.default_rng(0).standard_normal((3, 4, 3, 2, 5)).astype(np.float32)
    before = _run(model, x)
    assert attention_heads.split_heads(model) == 1
    assert attention_heads.scale_before_transposes(model) == 2   # q's Mul, and k's merged with kᵀ
    producers = {o: n for n in model.graph.node for o in n.output}
    first, second = [n for n in model.graph.node if n.op_type == "MatMul"]
    perms = [list(producers[t].attribute[0].ints) for t in (*first.input, second.input[1])]
    assert perms == [[0, 2, 1, 3], [0, 2, 3, 1], [0, 2, 1, 3]]   # what OpenVINO's fused attention takes in
    assert [producers[producers[t].input[0]].op_type for t in first.input] == ["Mul", "Mul"]
    assert not any(n.op_type == "Transpose" and len(n.attribute[0].ints) == 5 for n in model.graph.node)
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("perm", [[2, 0, 3, 4, 1], [0, 2, 3, 1, 4]])
def test_other_splits_are_left_alone(perm):
    """EdgeNeXt's transposed attention ([2, 0, 3, 4, 1]: parts [0, 2, 3, 1]), and a transpose not split on
    axis 0 by its readers."""
    model = _split_attention(perm)
    assert attention_heads.split_heads(model) == 0
