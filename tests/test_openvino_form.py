"""The int8 graph form for OpenVINO: the extra quantized edges are where OpenVINO's rules want them, OpenVINO
really runs those ops in int8 (its compiled model says so), and the numbers stay close to the ORT form."""
import json

import numpy as np
import onnx
import pytest

from edgeq import api
from edgeq.export import openvino_form
from edgeq.export.qdq import GraphIndex
from edgeq.metrics import compare
from edgeq.runtimes import ort as ort_cpu
from edgeq.samples import Samples

ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def forms(tiny_bundle, tmp_path_factory):
    folder = tmp_path_factory.mktemp("forms")
    return {form: api.export(tiny_bundle, "onnx", folder / f"{form}.onnx", precision="int8", target=target)
            for form, target in (("ort", "x86-cpu-ort"), ("openvino", "openvino-cpu"))}


def _model(record) -> onnx.ModelProto:
    return onnx.load(record["path"])


def _dq_input(g: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """The DequantizeLinear feeding ``tensor``, looking through data-movement ops as OpenVINO does."""
    producer = g.producer.get(tensor)
    while producer is not None and producer.op_type in openvino_form.MOVERS:
        producer = g.producer.get(producer.input[0])
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


def _is_weight(g: GraphIndex, tensor: str) -> bool:
    dq = _dq_input(g, tensor)
    return tensor in g.inits or (dq is not None and dq.input[0] in g.inits)


def _attention_matmuls(g: GraphIndex) -> list[onnx.NodeProto]:
    return [n for n in g.graph.node if n.op_type == "MatMul" and not any(_is_weight(g, t) for t in n.input)]


def _source_dq(g: GraphIndex, tensor: str) -> onnx.NodeProto | None:
    """``_dq_input``, also looking through a Mul by a scalar (attention's q·√scale, k·√scale)."""
    producer = g.producer.get(tensor)
    while producer is not None and (producer.op_type in openvino_form.MOVERS or producer.op_type == "Mul"):
        data = [t for t in producer.input if t not in g.inits]
        producer = g.producer.get(data[0]) if len(data) == 1 else None
    return producer if producer is not None and producer.op_type == "DequantizeLinear" else None


def test_attention_matmuls_get_symmetric_quantizers_on_both_inputs(forms):
    g = GraphIndex(_model(forms["openvino"]))
    assert len(_attention_matmuls(g)) == 2, "the tiny hybrid's attention: Q·Kᵀ and softmax·V"
    for node in _attention_matmuls(g):
        dqs = [_source_dq(g, t) for t in node.input]
        assert all(dqs), f"{node.name}: both inputs quantized"
        zero_points = [g.array(dq.input[2]) for dq in dqs]
        assert all(int(z) == 0 for z in zero_points)       # no zero-point: what OpenVINO's int8 MatMul takes
    ort_graph = GraphIndex(_model(forms["ort"]))
    for node in _attention_matmuls(ort_graph):   # edgeq's own quantizers stop at conv/linear inputs
        assert not all(_dq_input(ort_graph, t) for t in node.input)


def test_one_quantizer_on_the_qkv_linear_and_the_head_transposes_inside_the_fused_attention(forms):
    """The exported scaled dot product scales q and k by √scale after the split; the form's quantizer moves
    above those scalar Muls (and past the Shape that reads k), so the qkv linear writes int8. The joint head
    transpose before the split becomes one Transpose per part, and OpenVINO's fused attention subgraph takes in
    q's and v's. Before, the joint transpose ran by itself (f32, or slowly on int8 data), with an f32 quantizer
    node per part after it."""
    from edgeq.runtimes.openvino import compile_model
    g = GraphIndex(_model(forms["openvino"]))
    first, second = _attention_matmuls(g)
    sources = {_source_dq(g, t).name for t in (*first.input, second.input[1])}
    assert len(sources) == 1, sources          # q, k and v: one quantizer
    dq = next(n for n in g.graph.node if n.name in sources)
    quantized = g.producer[g.producer[dq.input[0]].input[0]]
    assert quantized.op_type == "Add" and g.producer[quantized.input[0]].op_type == "MatMul"   # the qkv linear
    assert forms["openvino"]["passes"]["openvino_head_splits"] == 1
    q_heads, v_heads = g.producer[first.input[0]], g.producer[second.input[1]]
    assert q_heads.op_type == v_heads.op_type == "Transpose"   # each feeds its MatMul itself
    compiled = compile_model(forms["openvino"]["path"], threads=2, batch=1)
    fused = [op.get_rt_info()["originalLayersNames"].astype(str).split(",")
             for op in compiled.get_runtime_model().get_ordered_ops()
             if op.get_rt_info()["layerType"].astype(str) == "Subgraph"]
    attention = next(names for names in fused if first.name in names)
    assert second.name in attention and q_heads.name in attention and v_heads.name in attention


def test_the_form_is_recorded_and_close_to_the_ort_form(forms, labelled_npz):
    record = forms["openvino"]
    assert record["qdq_form"] == "openvino" and forms["ort"]["qdq_form"] == "ort"
    assert record["passes"]["openvino_quantizers_added"] > 0
    meta = {p.key: p.value for p in _model(record).metadata_props}
    assert meta["edgeq_qdq_form"] == "openvino"
    assert json.loads(open(record["path"] + ".json").read())["qdq_form"] == "openvino"
    x = np.load(labelled_npz)["x"]
    outs = {f: ort_cpu.run(ort_cpu.session(r["path"]), Samples((x,)))[0] for f, r in forms.items()}
    assert compare(outs["ort"], outs["openvino"])["cosine"] > 0.99
    assert record["fidelity_vs_torch"]["cosine"] > 0.99


def _int8_layers(path) -> dict[str, int]:
    """Layer type -> how many of them OpenVINO's compiled CPU model runs in i8/u8."""
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    counts: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["runtimePrecision"].astype(str) in ("i8", "u8"):
            kind = info["layerType"].astype(str)
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def test_openvino_runs_more_of_the_openvino_form_in_int8(forms):
    ort_form, ov_form = _int8_layers(forms["ort"]["path"]), _int8_layers(forms["openvino"]["path"])
    # the attention (a fused Subgraph or its MatMuls) and the residual adds run on int8 data only in this form
    attention = ("Subgraph", "MatMul")
    assert sum(ov_form.get(k, 0) for k in attention) > sum(ort_form.get(k, 0) for k in attention)
    assert ov_form.get("Eltwise", 0) > ort_form.get("Eltwise", 0)


def test_every_conv_and_linear_runs_int8_in_both_forms(forms):
    """Each weight's DequantizeLinear reads its own scale and zero-point: with shared ones (torch's exporter
    stores equal constants once) OpenVINO ran some layers in f32 on weights decompressed at each inference."""
    from edgeq.export.qdq import own_weight_quantizer_params
    from edgeq.runtimes.openvino import compile_model
    for record in forms.values():
        model = _model(record)
        g = GraphIndex(model)
        assert any(n.op_type == "DequantizeLinear" and n.input[0] in g.inits for n in g.graph.node)
        assert own_weight_quantizer_params(model) == 0    # nothing left to give its own copy: none is shared
        compiled = compile_model(record["path"], threads=2, batch=1)   # batch fixed, as edgeq's sessions run it
        layers = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str))
                  for op in compiled.get_runtime_model().get_ordered_ops()]
        layers = [(kind, precision) for kind, precision in layers if kind in ("Convolution", "FullyConnected")]
        assert len(layers) >= 10 and all(precision in ("i8", "u8") for _, precision in layers), layers


def test_strip_gives_back_the_ort_form_graph(forms):
    model = _model(forms["openvino"])
    added = forms["openvino"]["passes"]["openvino_quantizers_added"]
    assert openvino_form.strip(model) == added
    ops = [n.op_type for n in model.graph.node]
    ort_ops = [n.op_type for n in _model(forms["ort"]).graph.node]
    # the permutation pass wrote the attention's Kᵀ Reshape-Transpose-Reshape as one Transpose, and the head
    # pass the joint head transpose as one per part: only the Reshapes and Transposes differ
    assert forms["openvino"]["passes"]["openvino_permutation_chains"] >= 1
    moved = ("Reshape", "Transpose")
    assert sorted(op for op in ops if op not in moved) == sorted(op for op in ort_ops if op not in moved)


def test_profile_ops_says_which_ops_ran_in_int8(forms):
    result = api.profile(forms["openvino"]["path"], target="openvino-cpu", runs=5, warmup=1, ops=True)
    ran = {info["int8"] for info in result["ops"].values()}
    assert "yes" in ran and ran <= {"yes", "no", "q/dq"}
    result = api.profile(forms["ort"]["path"], target="x86-cpu-ort", runs=5, warmup=1, ops=True)
    kernels = {op: info["int8"] for op, info in result["ops"].items()}
    assert kernels.get("QLinearConv") == "yes" and all(v in ("yes", "no", "q/dq") for v in kernels.values())


def test_a_per_channel_quantizer_is_not_shared_with_a_residual_add():
    """conv → t; t → per-channel Q/DQ → depthwise conv → t2; t + t2. Sharing the per-channel quantizer with the
    Add would leave it the conv's only reader, and a quantizer on t2 would be the depthwise conv's: ONNX Runtime
    would fuse either into a QLinearConv it then refuses."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)

    def init(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [init("xs", np.float32(0.05)), init("xz", np.uint8(128)),
             init("w1", rng.integers(-20, 20, (4, 4, 1, 1)).astype(np.int8)), init("w1s", np.float32(0.01)),
             init("w1z", np.int8(0)),
             init("cs", np.full(4, 0.02, np.float32)), init("cz", np.full(4, 128, np.uint8)),
             init("w2", rng.integers(-20, 20, (4, 1, 3, 3)).astype(np.int8)), init("w2s", np.float32(0.01)),
             init("w2z", np.int8(0))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w1", "w1s", "w1z"], ["w1d"]),
             helper.make_node("Conv", ["xd", "w1d"], ["t"]),
             helper.make_node("QuantizeLinear", ["t", "cs", "cz"], ["tq"], axis=1),
             helper.make_node("DequantizeLinear", ["tq", "cs", "cz"], ["td"], axis=1),
             helper.make_node("DequantizeLinear", ["w2", "w2s", "w2z"], ["w2d"]),
             helper.make_node("Conv", ["td", "w2d"], ["t2"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["t", "t2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = rng.standard_normal((8, 4, 8, 8)).astype(np.float32)
    counts = openvino_form.openvino_form(model, Samples((x,)), batch_size=1)
    assert counts == {"openvino_quantizers_added": 1, "openvino_quantizers_shared": 0,   # t only
                      "openvino_channels_first_islands": 0, "openvino_head_splits": 0,
                      "openvino_permutation_chains": 0, "openvino_scales_moved": 0}
    add = next(n for n in model.graph.node if n.op_type == "Add")
    assert "td" not in add.input
    import onnxruntime as ort
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": x[:1]})[0].shape == (1, 4, 8, 8)   # no QLinearConv it refuses


def test_channels_last_blocks_run_channels_first_in_the_openvino_form(calib_npy, tmp_path):
    """A ConvNeXt-style block (NHWC permute, LayerNorm, MLP, permute back): the openvino form writes it
    channels-first — no Transpose, its linear layers 1×1 convolutions OpenVINO runs in int8, no zero-point
    Subtract left standing — and computes the same as the ORT form, which keeps the linear layers (u8 input)."""
    import os
    from edgeq.runtimes.openvino import compile_model
    bundle = tmp_path / "nhwc.edgeq"
    api.quantize(f"{os.path.dirname(__file__)}/tiny_models.py:nhwc_block", str(calib_npy), "w8a8-fast", bundle,
                 seed=0)
    forms = {form: api.export(bundle, "onnx", tmp_path / f"{form}.onnx", precision="int8", target=target)
             for form, target in (("ort", "x86-cpu-ort"), ("openvino", "openvino-cpu"))}
    ops = {form: [n.op_type for n in _model(record).graph.node] for form, record in forms.items()}
    assert ops["ort"].count("Transpose") == 2 and ops["ort"].count("MatMul") == 2   # fc1, fc2 (the head: Gemm)
    g = GraphIndex(_model(forms["ort"]))
    for node in (n for n in g.graph.node if n.op_type == "MatMul"):
        assert g.array(_dq_input(g, node.input[0]).input[2]).dtype == np.uint8   # ONNX Runtime's fast kernels
    assert "Transpose" not in ops["openvino"] and "LayerNormalization" not in ops["openvino"]
    assert "MatMul" not in ops["openvino"] and ops["openvino"].count("Conv") == 4   # stem, dw, fc1, fc2
    assert forms["openvino"]["passes"]["openvino_channels_first_islands"] == 1
    compiled = compile_model(forms["openvino"]["path"], threads=2, batch=1)
    kernels = [(op.get_rt_info()["layerType"].astype(str), op.get_rt_info()["runtimePrecision"].astype(str),
                op.get_friendly_name()) for op in compiled.get_runtime_model().get_ordered_ops()]
    assert not [k for k in kernels if k[0] == "Transpose" or k[2].endswith("DequantizationSubtract")], kernels
    convs = [k for k in kernels if k[0] == "Convolution"]
    assert len(convs) == 4 and all(k[1] in ("u8", "i8") for k in convs), convs   # int8 kernels
    outputs = {form: ort_cpu.OrtSession(record["path"]).infer([np.load(calib_npy)[:8]])[0]
               for form, record in forms.items()}
    assert compare(outputs["ort"], outputs["openvino"])["cosine"] > 0.99


def test_linear_layers_read_signed_activations_in_the_openvino_form_only(forms):
    """OpenVINO's i8 FullyConnected (what NNCF writes) ran faster than u8 with zero-point 128 on rank-3 tokens
    too (levit_128s, mobilevit_xxs); ONNX Runtime's fast path takes u8."""
    for form, expected in (("openvino", np.int8), ("ort", np.uint8)):
        g = GraphIndex(_model(forms[form]))
        dtypes = {g.array(_dq_input(g, n.input[0]).input[2]).dtype for n in g.graph.node
                  if n.op_type == "MatMul" and _is_weight(g, n.input[1]) and _dq_input(g, n.input[0]) is not None}
        assert dtypes == {np.dtype(expected)}, (form, dtypes)


def test_linear_layers_left_on_rank_4_inputs_take_signed_activations_and_no_zero_point_subtract(calib_npy, tmp_path):
    """A channels-last block the layout pass cannot rewrite (a norm over its spatial axes): OpenVINO's
    FullyConnected cannot fold an input zero-point when its input has rank 4, and left a separate f32 Subtract.
    Linear layers' quantizers stay i8 in the openvino form; the ORT form keeps u8."""
    import os
    from edgeq.runtimes.openvino import compile_model
    bundle = tmp_path / "grn.edgeq"
    api.quantize(f"{os.path.dirname(__file__)}/tiny_models.py:nhwc_grn_block", str(calib_npy), "w8a8-fast",
                 bundle, seed=0)
    forms = {form: api.export(bundle, "onnx", tmp_path / f"{form}.onnx", precision="int8", target=target)
             for form, target in (("ort", "x86-cpu-ort"), ("openvino", "openvino-cpu"))}
    assert forms["openvino"]["passes"]["openvino_channels_first_islands"] == 0
    for form, record in forms.items():
        g = GraphIndex(_model(record))
        dtypes = {node.name: g.array(_dq_input(g, node.input[0]).input[2]).dtype
                  for node in g.graph.node if node.op_type == "MatMul" and _is_weight(g, node.input[1])}
        assert len(dtypes) == 2   # fc1, fc2 (the head is a Gemm on the pooled features)
        signed = [name for name, dtype in dtypes.items() if dtype == np.int8]
        assert len(signed) == (2 if form == "openvino" else 0)
        compiled = compile_model(record["path"], threads=2, batch=1)
        names = [op.get_friendly_name() for op in compiled.get_runtime_model().get_ordered_ops()]
        subtracts = [n for n in names if n.endswith("DequantizationSubtract")]
        assert (subtracts == []) == (form == "openvino"), subtracts


def test_a_quantizer_shared_with_an_attention_matmul_stays_signed_and_the_matmuls_run_int8(calib_npy, tmp_path):
    """V read by the attention MatMul and by a depthwise conv (EfficientFormerV2's local-value branch): the
    form shares edgeq's quantizer of V with the MatMul, which OpenVINO runs in int8 only without a zero-point;
    as u8 with zero-point 128 (ONNX Runtime's fast form) that MatMul ran f32."""
    import os
    from edgeq.runtimes.openvino import compile_model
    bundle = tmp_path / "lva.edgeq"
    api.quantize(f"{os.path.dirname(__file__)}/tiny_models.py:local_value_attention", str(calib_npy), "w8a8-fast",
                 bundle, seed=0)
    record = api.export(bundle, "onnx", tmp_path / "ov.onnx", precision="int8", target="openvino-cpu")
    compiled = compile_model(record["path"], threads=2, batch=1)
    kernels: dict[str, list[str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kernels.setdefault(info["layerType"].astype(str), []).append(info["primitiveType"].astype(str))
    assert not any(k.endswith("f32") for k in kernels.get("MatMul", [])), kernels   # int8, or fused into an MHA
    g = GraphIndex(_model(record))
    matmuls = _attention_matmuls(g)
    assert len(matmuls) == 2
    for node in matmuls:
        assert all(int(g.array(_dq_input(g, t).input[2])) == 0 for t in node.input[:2]), node.name
    assert record["passes"]["openvino_signed_inputs"] == 1 and record["passes"]["openvino_quantizers_shared"] >= 1


def test_constant_subgraphs_get_no_added_quantizer_and_openvino_loads_the_form(calib_npy, tmp_path):
    """A conv on a tensor made from the input's shape only (edgenext's positional encoding) is a constant to
    OpenVINO; a quantizer the form added on its output made the CPU plugin refuse the model."""
    import os
    from edgeq.runtimes.openvino import compile_model
    bundle = tmp_path / "pos.edgeq"
    api.quantize(f"{os.path.dirname(__file__)}/tiny_models.py:shape_derived_positions", str(calib_npy),
                 "w8a8-fast", bundle, seed=0)
    record = api.export(bundle, "onnx", tmp_path / "pos.onnx", precision="int8", target="openvino-cpu")
    g = GraphIndex(_model(record))
    sin = next(n for n in g.graph.node if n.op_type == "Sin")
    projection = next(n for n in g.graph.node if n.op_type == "Conv"
                      and g.producer[_dq_input(g, n.input[0]).input[0]].input[0] == sin.output[0])
    added = [n for n in g.graph.node if n.name.startswith(openvino_form.PREFIX + "q")]
    assert added and all(q.input[0] != projection.output[0] for q in added)
    assert compile_model(record["path"], threads=2, batch=1) is not None
