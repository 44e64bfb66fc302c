"""The openvino form's permutation pass (edgeq/export/permutes.py): Reshape/Transpose chains as one Transpose."""
import os

import numpy as np
import onnx
import pytest

from edgeq import api
from edgeq.export import openvino_form, permutes
from edgeq.runtimes import ort as ort_cpu

TINY = os.path.join(os.path.dirname(__file__), "tiny_models.py")


@pytest.mark.parametrize("dims, perm", [((2, 3, 4), (2, 0, 1)), ((16, 2, 16, 2, 8), (1, 3, 0, 2, 4)),
                                        ((4, 256, 3), (2, 0, 1)), ((5, 7), (0, 1)), ((3, 1, 4), (1, 0, 2))])
def test_a_transpose_is_read_back_from_its_index_array_with_as_few_axes_as_it_needs(dims, perm):
    source = np.arange(int(np.prod(dims))).reshape(dims).transpose(perm).ravel()
    found_dims, found_perm = permutes._as_transpose(source)
    assert np.array_equal(np.arange(source.size).reshape(found_dims).transpose(found_perm).ravel(), source)
    assert len(found_dims) <= max(len([d for d in dims if d > 1]), 1)   # axes of length 1 dropped


def test_an_order_that_is_no_transpose_is_left_alone():
    assert permutes._as_transpose(np.random.default_rng(0).permutation(24)) is None
    assert permutes._as_transpose(np.array([0, 2, 1, 3, 4, 5])) is None


def _transposes(record) -> list[tuple[int, ...]]:
    return sorted(tuple(a.ints) for n in onnx.load(record["path"]).graph.node if n.op_type == "Transpose"
                  for a in n.attribute if a.name == "perm")


def _openvino_transposes(record) -> int:
    """Transposes OpenVINO's CPU plugin runs on activations (not the ones of constant weights)."""
    from edgeq.runtimes.openvino import compile_model

    def kind(op) -> str:
        return op.get_rt_info()["layerType"].astype(str)
    compiled = compile_model(record["path"], threads=2, batch=1)
    return sum(kind(op) == "Transpose" and kind(op.input(0).get_source_output().get_node()) != "Const"
               for op in compiled.get_runtime_model().get_ordered_ops())


def test_mobilevit_unfold_and_fold_become_one_transpose_each_with_nhwc_beside_the_convolutions(
        calib_npy, tmp_path, monkeypatch):
    """timm's unfold (Reshape-Transpose-Reshape-Transpose-Reshape) after a conv and fold before one: the openvino
    form writes each as one Transpose plus a Transpose to/from NHWC, which OpenVINO merges into the
    convolution's reorder; every value is the same, at any batch."""
    bundle = tmp_path / "patches.edgeq"
    api.quantize(f"{TINY}:patch_tokens", str(calib_npy), "w8a8-fast", bundle, seed=0)
    merged = api.export(bundle, "onnx", tmp_path / "merged.onnx", precision="int8", target="openvino-cpu")
    monkeypatch.setattr(openvino_form, "merge_permutation_chains", lambda model: 0)
    kept = api.export(bundle, "onnx", tmp_path / "kept.onnx", precision="int8", target="openvino-cpu")
    assert merged["passes"]["openvino_permutation_chains"] == 2
    assert _transposes(kept) == [(0, 2, 1, 3), (0, 2, 1, 3), (0, 3, 2, 1), (0, 3, 2, 1)]
    assert _transposes(merged) == [(0, 2, 3, 1), (0, 2, 4, 1, 3, 5), (0, 3, 1, 2), (0, 3, 1, 4, 2, 5)]
    x = np.load(calib_npy)
    for batch in (1, 3):
        outputs = [ort_cpu.OrtSession(r["path"]).infer([x[:batch]])[0] for r in (kept, merged)]
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=0, atol=1e-6)
    assert (_openvino_transposes(kept), _openvino_transposes(merged)) == (4, 2)


def test_attention_operands_from_quantized_convolutions_are_read_as_nhwc_and_the_attention_fuses(
        calib_npy, tmp_path, monkeypatch):
    """EfficientFormerV2's q, k, v: 1×1 conv → its Q→DQ → flatten (→ transpose) → attention MatMul. The form reads
    each as the convolution's NHWC output (a Transpose to NHWC first, which OpenVINO merges into the
    convolution's reorder); OpenVINO then fuses the attention's MatMuls into one int8 subgraph, which it did not
    with the planar reads. Every value is the same, at any batch."""
    from edgeq.export.openvino_layout import TO_NHWC
    from edgeq.export.qdq import GraphIndex
    from edgeq.runtimes.openvino import compile_model
    bundle = tmp_path / "lva.edgeq"
    api.quantize(f"{TINY}:local_value_attention", str(calib_npy), "w8a8-fast", bundle, seed=0)
    merged = api.export(bundle, "onnx", tmp_path / "merged.onnx", precision="int8", target="openvino-cpu")
    monkeypatch.setattr(openvino_form, "merge_permutation_chains", lambda model: 0)
    kept = api.export(bundle, "onnx", tmp_path / "kept.onnx", precision="int8", target="openvino-cpu")
    assert merged["passes"]["openvino_permutation_chains"] == 4   # q, k, v and the output
    g = GraphIndex(onnx.load(merged["path"]))
    to_nhwc = [n for n in g.graph.node if n.op_type == "Transpose" and list(n.attribute[0].ints) == TO_NHWC]
    assert len(to_nhwc) == 3
    for t in to_nhwc:   # each reads a convolution's quantized output
        dq = g.producer[t.input[0]]
        assert dq.op_type == "DequantizeLinear" and g.producer[g.producer[dq.input[0]].input[0]].op_type == "Conv"
    x = np.load(calib_npy)
    for batch in (1, 3):
        outputs = [ort_cpu.OrtSession(r["path"]).infer([x[:batch]])[0] for r in (kept, merged)]
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=0, atol=1e-6)

    def matmuls(record) -> int:   # MatMuls OpenVINO runs on their own, not inside a fused subgraph
        ops = compile_model(record["path"], threads=2, batch=1).get_runtime_model().get_ordered_ops()
        return sum(op.get_rt_info()["layerType"].astype(str) == "MatMul" for op in ops)
    assert (matmuls(kept), matmuls(merged)) == (2, 0)


def test_an_attention_output_added_to_a_convolution_output_is_written_nhwc(calib_npy, tmp_path, monkeypatch):
    """EfficientFormerV2's attention output, [B, heads, N, d] transposed to [B, heads, d, N] and reshaped to the
    map, is added to the local-value convolution's output (an Add OpenVINO fuses into that convolution, NHWC):
    the form writes it NHWC, a (0, 2, 1, 3) Transpose instead of the inner-axes one, then a Transpose to NCHW
    (which the convolution's reorder absorbs). Every value is the same, at any batch."""
    from edgeq.export.openvino_layout import TO_NCHW
    from edgeq.export.qdq import GraphIndex
    bundle = tmp_path / "mhlva.edgeq"
    api.quantize(f"{TINY}:multi_head_local_value_attention", str(calib_npy), "w8a8-fast", bundle, seed=0)
    merged = api.export(bundle, "onnx", tmp_path / "merged.onnx", precision="int8", target="openvino-cpu")
    monkeypatch.setattr(openvino_form, "merge_permutation_chains", lambda model: 0)
    kept = api.export(bundle, "onnx", tmp_path / "kept.onnx", precision="int8", target="openvino-cpu")
    assert (0, 1, 3, 2) in _transposes(kept) and (0, 1, 3, 2) not in _transposes(merged)
    g = GraphIndex(onnx.load(merged["path"]))
    added = [g.producer.get(i) for n in g.graph.node if n.op_type == "Add" for i in n.input]
    to_nchw = [p for p in added if p is not None and p.op_type == "Transpose" and list(p.attribute[0].ints) == TO_NCHW]
    assert len(to_nchw) == 1   # the attention output, beside the local value's convolution output
    x = np.load(calib_npy)
    for batch in (1, 3):
        outputs = [ort_cpu.OrtSession(r["path"]).infer([x[:batch]])[0] for r in (kept, merged)]
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=0, atol=1e-6)


def test_attention_key_transpose_reaches_its_matmul_with_the_scale_and_quantizer_above_it(
        tiny_bundle, calib_npy, tmp_path, monkeypatch):
    """The exported scaled dot product writes Kᵀ as Reshape-Transpose-Reshape, then a scalar Mul (the form
    quantizes k once, on the qkv linear's output): the pass moves the Mul above it and leaves one Transpose
    into the MatMul (which OpenVINO folds into the MatMul), and the head pass merges the head transpose into
    it: [0, 2, 3, 1] of k's [B, N, H, D] slice; every value is the same, at any batch."""
    from edgeq.export.qdq import GraphIndex
    merged = api.export(tiny_bundle, "onnx", tmp_path / "merged.onnx", precision="int8", target="openvino-cpu")
    for rewrite in ("merge_permutation_chains", "split_heads", "scale_before_transposes"):
        monkeypatch.setattr(openvino_form, rewrite, lambda model: 0)
    kept = api.export(tiny_bundle, "onnx", tmp_path / "kept.onnx", precision="int8", target="openvino-cpu")
    g = GraphIndex(onnx.load(merged["path"]))
    fed = [g.producer.get(n.input[1]) for n in g.graph.node if n.op_type == "MatMul"   # Q·Kᵀ
           and any(u.op_type == "Softmax" for u in g.consumers.get(n.output[0], []))]
    key_transposes = [p for p in fed if p is not None and p.op_type == "Transpose"]
    assert merged["passes"]["openvino_permutation_chains"] >= 1 and key_transposes
    for t in key_transposes:   # one Transpose on the already scaled keys
        assert list(t.attribute[0].ints) == [0, 2, 3, 1] and g.producer[t.input[0]].op_type == "Mul"
    x = np.load(calib_npy)
    for batch in (1, 3):
        outputs = [ort_cpu.OrtSession(r["path"]).infer([x[:batch]])[0] for r in (kept, merged)]
        np.testing.assert_allclose(outputs[1], outputs[0], rtol=0, atol=1e-6)
    assert _openvino_transposes(merged) < _openvino_transposes(kept)


def test_a_scale_and_quantizer_between_a_key_chain_and_its_matmul_move_above_the_chain():
    """Where k keeps its own quantizer (the form could not move it to the qkv linear), the chain's Mul and Q→DQ
    move above it together, and the one Transpose left feeds the MatMul; same values."""
    from onnx import TensorProto, helper, numpy_helper
    inits = [numpy_helper.from_array(np.array(v, dtype), n) for n, v, dtype in (
        ("split", [-1, 2, 4, 6], np.int64), ("merged", [-1, 2, 6, 4], np.int64), ("s", 0.25, np.float32),
        ("qs", 0.02, np.float32), ("qz", 0, np.int8))]
    nodes = [helper.make_node("Reshape", ["k", "split"], ["k1"]),
             helper.make_node("Transpose", ["k1"], ["k2"], perm=[0, 1, 3, 2]),
             helper.make_node("Reshape", ["k2", "merged"], ["k3"]),
             helper.make_node("Mul", ["k3", "s"], ["k4"]),
             helper.make_node("QuantizeLinear", ["k4", "qs", "qz"], ["k5"]),
             helper.make_node("DequantizeLinear", ["k5", "qs", "qz"], ["k6"]),
             helper.make_node("MatMul", ["q", "k6"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("q", TensorProto.FLOAT, ["b", 2, 5, 6]),
                                           helper.make_tensor_value_info("k", TensorProto.FLOAT, ["b", 2, 4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 2, 5, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    rng = np.random.default_rng(0)
    feed = {"q": rng.standard_normal((1, 2, 5, 6)).astype(np.float32),
            "k": rng.standard_normal((1, 2, 4, 6)).astype(np.float32)}
    import onnxruntime as ort
    before = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    assert permutes.merge_permutation_chains(model) == 1
    producers = {o: n for n in model.graph.node for o in n.output}
    transpose = producers[next(n for n in model.graph.node if n.op_type == "MatMul").input[1]]
    assert transpose.op_type == "Transpose" and producers[transpose.input[0]].op_type == "DequantizeLinear"
    after = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_array_equal(after, before)
