"""Only quantizer forms ONNX Runtime's fused int8 kernels accept; the exporter checks the fused groups; a failure
after reconstruction never loses the learned model (issue 11, part 5)."""
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeq import api
from edgeq.bundle import read_bundle
from edgeq.cli import main
from edgeq.errors import ArtifactError, BudgetError, StageError
from edgeq.export.fusion_check import check_fused_groups
from edgeq.fallback import placement
from edgeq.fallback.run import keep_learned, learned_path, stage
from edgeq.reconstruct import engine
from edgeq.reconstruct.state import resume_dir

from conftest import TESTS

FUSED = f"{TESTS / 'tiny_models.py'}:fused_depthwise"
FAST = dict(iters=5, batch_size=16)
ORT_REFUSAL = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running QLinearConv node. "
               "Name:'node_conv2d_token_29' Status Message: /onnxruntime_src/qlinearconv.cc:77 "
               "IsScalarOr1ElementVector(Y_zero_point) was false. QLinearConv : result zero point must be a "
               "scalar or 1D tensor of size 1")


@pytest.fixture(autouse=True)
def latency_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEQ_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32))
    return path


def offered(gm_records):
    """module name of each layer -> the activation candidate labels of its input quantizer."""
    from edgeq.quant.fakequant import add_act_candidates
    gm, records, block_map = gm_records
    add_act_candidates(gm, records, choose_granularity=True, choose_scheme=True)
    return {block_map.layers[name].module: set(gm.get_submodule(rec.act_module).candidates)
            for name, rec in records.items()}


@pytest.fixture
def fused_graph():
    from edgeq.models.intake import load_model
    from edgeq.quant.fakequant import insert_quantizers, plan_layers
    from edgeq.quant.recipe import load_recipe
    from edgeq.trace.blocks import build_block_map
    from edgeq.trace.capture import capture, fold_batchnorm, to_graph_module
    loaded = load_model(FUSED, None, None, None, None, False)
    gm = to_graph_module(capture(loaded))
    fold_batchnorm(gm)
    block_map = build_block_map(gm)
    plan, _ = plan_layers(block_map, load_recipe("w8a8"))
    return gm, insert_quantizers(gm, plan), block_map


def test_per_channel_is_offered_only_where_ort_fusion_accepts_it(fused_graph):
    candidates = offered(fused_graph)
    assert not any(label.startswith("per_channel") for label in candidates["dw_a"])  # conv → ReLU → dwconv
    assert not any(label.startswith("per_channel") for label in candidates["dw_b"])  # conv → dwconv
    assert {"per_channel/asym", "per_channel/sym"} <= candidates["dw_c"]             # GELU → dwconv
    assert candidates["dw_a"] == {"per_tensor/asym"}  # the scheme choice is still offered (w8a8: sym first)


def test_reconstruction_placement_and_export_run_in_onnxruntime(tmp_path, calib):
    from edgeq.runtimes import ort as ort_cpu
    out = tmp_path / "f.edgeq"
    result = api.quantize(FUSED, str(calib), "w8a8", out, target="ort-cpu", **FAST)
    assert result["fallback"]["target"] == "x86-cpu-ort" and result["fallback"]["placement"]
    m = json.loads((out / "manifest.json").read_text())
    dw_c = next(name for name, d in m["layers"].items() if d["module"] == "dw_c")
    per_channel = {(r["name"], name) for r in m["reconstruction"]["regions"] for name, c in r["choices"].items()
                   if any(label.startswith("per_channel") for label in c["losses"])}
    assert len(per_channel) == 1  # only dw_c's input was offered per-channel scales
    region = next(r for r in m["reconstruction"]["regions"] if r["name"] == next(iter(per_channel))[0])
    assert dw_c in region["layers"]
    record = api.export(out, "onnx", tmp_path / "f.onnx")
    assert record["fidelity_vs_torch"]["cosine"] > 0.999
    outputs = ort_cpu.run(ort_cpu.session(tmp_path / "f.onnx"), np.load(calib))[0]
    assert np.isfinite(outputs).all()


def _qdq_graph(output_scales: int, relu: bool) -> onnx.ModelProto:
    """x → Q/DQ → Conv (int8 weights) [→ Relu] → Q/DQ with ``output_scales`` scales → depthwise Conv."""
    c = 4
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("s", np.array(0.05, np.float32)), ("z", np.array(0, np.uint8)),
        ("w", np.ones((c, 3, 3, 3), np.int8)), ("ws", np.full(c, 0.01, np.float32)), ("wz", np.zeros(c, np.int8)),
        ("dw", np.ones((c, 1, 3, 3), np.int8)),
        ("ys", np.full(output_scales, 0.02, np.float32).reshape(() if output_scales == 1 else -1)),
        ("yz", np.zeros(output_scales, np.uint8).reshape(() if output_scales == 1 else -1))]]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="x_q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="x_dq"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="w_dq", axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="node_conv2d_29", pads=[1, 1, 1, 1])]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    nodes += [helper.make_node("QuantizeLinear", ["r" if relu else "c", "ys", "yz"], ["yq"], name="y_q", axis=1),
              helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["yd"], name="y_dq", axis=1),
              helper.make_node("DequantizeLinear", ["dw", "ws", "wz"], ["dwd"], name="dw_dq", axis=0),
              helper.make_node("Conv", ["yd", "dwd"], ["out"], name="dwconv", group=c, pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, c, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("relu", [False, True])
def test_fusion_check_names_a_per_channel_quantizer_after_a_fused_conv(relu):
    with pytest.raises(ArtifactError) as err:
        check_fused_groups(_qdq_graph(output_scales=4, relu=relu))
    message = str(err.value)
    assert "node node_conv2d_29 (Conv)" in message and "QLinearConv" in message
    assert "output quantizer y_q is per-channel (4 scales)" in message and message.count(". ") == 0
    check_fused_groups(_qdq_graph(output_scales=1, relu=relu))  # per-tensor output, per-channel weights: fine


def test_fusion_check_names_a_per_channel_input_of_a_fused_depthwise_conv():
    model = _qdq_graph(output_scales=4, relu=False)
    model.graph.node[3].input[0] = "x"     # the first conv reads float: only the depthwise group remains
    out_q = [helper.make_node("QuantizeLinear", ["out", "s", "z"], ["oq"], name="out_q"),
             helper.make_node("DequantizeLinear", ["oq", "s", "z"], ["out2"], name="out_dq")]
    model.graph.node.extend(out_q)
    model.graph.output[0].name = "out2"
    with pytest.raises(ArtifactError, match="node dwconv .*input quantizer y_dq is per-channel"):
        check_fused_groups(model)


def test_placement_failure_keeps_the_learned_model_and_resume_skips_reconstruction(tmp_path, calib, monkeypatch):
    out = tmp_path / "m.edgeq"
    learned_regions, learn, search = [], engine._learn_region, placement.search
    monkeypatch.setattr(engine, "_learn_region", lambda *a, **k: learned_regions.append(a[1].name) or learn(*a, **k))

    def refused(*args, **kwargs):
        raise RuntimeError(ORT_REFUSAL)

    monkeypatch.setattr(placement, "search", refused)
    args = ["quantize", "--model", FUSED, "--calib", str(calib), "-o", str(out), "--iters", "5", "--batch-size", "16"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    message = errors[0]
    assert message.startswith("error: the latency placement stage failed: ONNX Runtime refused node "
                              "node_conv2d_token_29 (QLinearConv : result zero point must be a scalar")
    regions = len(learned_regions)
    assert regions > 0 and f"{learned_path(out)}" in message and f"skips the {regions} learned blocks" in message
    assert message.count(". ") == 0 and message.endswith(".")
    assert not out.exists() and resume_dir(out).is_dir()
    learned = read_bundle(learned_path(out))
    assert learned.manifest["fallback"]["failed_stage"] == "latency placement"
    assert all(d["quantized"] for d in learned.manifest["layers"].values())  # no fallback decision applied

    monkeypatch.setattr(placement, "search", search)
    learned_regions.clear()
    again = api.quantize(FUSED, str(calib), "w8a8", out, resume=True, **FAST)
    assert learned_regions == []  # every block loaded from the saved state, none learned again
    assert again["bundle"] == str(out) and again["reconstruction"]["regions"] == regions
    assert not resume_dir(out).exists() and not learned_path(out).exists()   # superseded by the finished bundle
    recon = json.loads((out / "manifest.json").read_text())["reconstruction"]["regions"]
    assert recon == learned.manifest["reconstruction"]["regions"]


def test_an_edgeq_error_keeps_its_sentence_and_says_where_the_learned_model_is(tmp_path):
    out, written = tmp_path / "m.edgeq", []
    with pytest.raises(ArtifactError) as err:
        with keep_learned(out, lambda path, report: written.append((path, report)), 3):
            with stage("latency placement"):
                raise ArtifactError("node n1 (Conv) would run as ONNX Runtime's QLinearConv, which takes one scale.")
    sentence = "node n1 (Conv) would run as ONNX Runtime's QLinearConv, which takes one scale"
    assert str(err.value) == (f"{sentence}; the learned model is in {learned_path(out)}, and rerunning with "
                              f"--resume --no-latency-search skips the 3 learned blocks.")
    assert written == [(learned_path(out), {"failed_stage": "latency placement", "error": sentence})]
    with pytest.raises(StageError, match=r"^the bundle write stage failed: OSError: disk full; the learned model "
                                         r"could not be written either \(OSError: disk full\), and rerunning"):
        with keep_learned(out, _disk_full, 3):
            with stage("bundle write"):
                raise OSError("disk full")


def _disk_full(path, report):
    raise OSError("disk full")


def test_a_missed_budget_is_a_result_not_a_failure(tmp_path):
    budget = BudgetError("the accuracy budget (cosine ≥ 1.0) cannot be met; the best model found is in b.")
    written = []
    with pytest.raises(BudgetError) as err:
        with keep_learned(tmp_path / "m.edgeq", lambda path, report: written.append(path), 3):
            with stage("accuracy budget"):
                raise budget
    assert err.value is budget and written == []
