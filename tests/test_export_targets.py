"""TensorRT and CoreML export, the TensorRT lint, ONNX extras and reparameterization."""
import importlib.util
import json
import platform
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from edgeq import api
from edgeq.cli import main
from edgeq.errors import ArtifactError
from edgeq.export.trt_rules import lint

TESTS = Path(__file__).resolve().parent
OUTLIER = f"{TESTS / 'tiny_models.py'}:outlier_net"
# levit_128s runs in the slow suite only (CI time); mobilevit_xxs has attention and convolutions too
ZOO = ("mobilevit_xxs", pytest.param("levit_128s", marks=pytest.mark.slow))
ZOO_COREML = (*ZOO, "edgenext_xx_small")   # edgenext: a quantizer on a shape-only (constant) tensor


class _Bundles(dict):
    """Zoo bundles quantized when a test first asks for one (a deselected model costs nothing)."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = folder

    def __missing__(self, name: str) -> Path:
        path = self.folder / f"{name}.edgeq"
        api.quantize(f"zoo:{name}", "zoo", "w8a8-fast", path, calib_size=128)
        self[name] = path
        return path


@pytest.fixture(scope="module")
def zoo_bundles(tmp_path_factory):
    return _Bundles(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def floated_bundle(tmp_path_factory):
    """A bundle whose accuracy budget put exactly one layer (``fragile``) back in float."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("outlier")
    calib, evaluation = folder / "calib.npy", folder / "eval.npy"
    np.save(calib, rng.standard_normal((64, 3, 16, 16)).astype(np.float32))
    np.save(evaluation, rng.standard_normal((64, 3, 16, 16)).astype(np.float32))
    out = folder / "o.edgeq"
    api.quantize(OUTLIER, str(calib), "w8a8-fast", out, min_cosine=0.999, eval_data=str(evaluation))
    floated = [n for n, d in json.loads((out / "manifest.json").read_text())["layers"].items() if not d["quantized"]]
    assert len(floated) == 1
    return out


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --- TensorRT -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO)
def test_tensorrt_export_passes_lint_and_keeps_ort_accuracy(tmp_path, zoo_bundles, name):
    bundle = zoo_bundles[name]
    record = api.export(bundle, "tensorrt", tmp_path / "trt")
    model = onnx.load(str(tmp_path / "trt" / "model.onnx"))
    assert lint(model) == [] and record["lint"] == []
    zps = [numpy_helper.to_array(i) for i in model.graph.initializer if "zero_point" in i.name]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    acts = json.loads((bundle / "manifest.json").read_text())["activation_quantizers"].values()
    unsigned_or_per_channel = sum(1 for a in acts if a["qmin"] >= 0 or a["axis"] is not None)
    assert record["passes"]["made_symmetric_int8"]["activations"] == unsigned_or_per_channel  # re-expressed
    assert record["fidelity_vs_torch"]["cosine"] > 0.99
    result = cli("check", tmp_path / "trt")
    assert result.exit_code == 0 and "0 errors, 0 warnings" in result.output

    api.export(bundle, "onnx", tmp_path / "ort.onnx")
    ort = api.evaluate(str(tmp_path / "ort.onnx"), "zoo:test", limit=3000)["top1"]   # ±0.2 pp is 6 images
    trt = api.evaluate(str(tmp_path / "trt" / "model.onnx"), "zoo:test", limit=3000)["top1"]
    assert abs(trt - ort) * 100 <= 0.2, (name, trt, ort)


def test_tensorrt_export_makes_asymmetric_activations_symmetric(tmp_path, calib_npy):
    """w8a8-minmax keeps asymmetric uint8 activations (the built-in w8a8 recipes are symmetric since session
    15): TensorRT takes signed int8 with zero-point 0 only, so every one is re-expressed."""
    bundle = tmp_path / "asym.edgeq"
    api.quantize(f"{TESTS / 'tiny_models.py'}:tiny_hybrid", str(calib_npy), "w8a8-minmax", bundle, seed=0)
    record = api.export(bundle, "tensorrt", tmp_path / "trt")
    acts = json.loads((bundle / "manifest.json").read_text())["activation_quantizers"]
    assert record["passes"]["made_symmetric_int8"]["activations"] == len(acts) > 0
    assert record["lint"] == [] and record["fidelity_vs_torch"]["cosine"] > 0.99


def test_tensorrt_without_tensorrt_writes_trtexec_command(tmp_path, zoo_bundles):
    result = cli("export", zoo_bundles["mobilevit_xxs"], "--to", "tensorrt", "-o", tmp_path / "trt")
    assert result.exit_code == 0, result.output
    assert "engine not built: the tensorrt Python package is not installed" in result.output
    script = (tmp_path / "trt" / "trtexec.sh").read_text()
    assert "--onnx=model.onnx" in script and "--int8" in script and "--fp16" in script
    assert "--minShapes=input:1x1x32x32" in script   # the bundle has a dynamic batch axis
    record = json.loads((tmp_path / "trt" / "model.onnx.json").read_text())
    assert record["engine"]["built"] is False and record["format"] == "onnx-tensorrt"
    assert not (tmp_path / "trt" / "model.engine").exists()
    for command in (["eval", tmp_path / "trt", "--limit", "200"], ["profile", tmp_path / "trt", "--runs", "5"]):
        result = cli(*command, "--json")   # the folder stands for its model.onnx
        assert result.exit_code == 0 and "model.onnx" in result.output, result.output


def test_tensorrt_keeps_fallback_units_float(tmp_path, floated_bundle):
    record = api.export(floated_bundle, "tensorrt", tmp_path / "trt")
    model = onnx.load(str(tmp_path / "trt" / "model.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    float_convs = [n for n in convs if getattr(producers.get(n.input[1]), "op_type", None) != "DequantizeLinear"]
    assert len(float_convs) == 1 and "FP16" in record["float_layers"]["precision"]
    assert len(record["float_layers"]["layers"]) == 1


def test_placement_from_another_runtime_is_flagged():
    from types import SimpleNamespace

    from edgeq.export.artifact import placement_note
    layers = {"a": {"quantized": False, "stage": "latency", "target": "ort-cpu", "reason": "…"},
              "b": {"quantized": False, "stage": "budget", "target": None, "reason": "…"},
              "c": {"quantized": True, "stage": "recipe", "target": None, "reason": "x"}}
    v2 = lambda layers, target: SimpleNamespace(manifest={"layers": layers}, target=target)  # noqa: E731
    note = placement_note(v2(layers, "TensorRT"))   # a format-2 bundle: its one placement is in the layers
    assert note.startswith("1 layers are float because the latency placement measured on ort-cpu")
    assert "--no-latency-search" in note
    assert placement_note(v2({"c": layers["c"]}, "CoreML")) is None
    assert placement_note(v2(layers, "ort-cpu")) is None   # placed for it
    # format 3: a target the bundle has no placement for gets the recipe's placement, and says so
    v3 = lambda target: SimpleNamespace(target=target, manifest={  # noqa: E731
        "recipe": {"name": "w8a8"}, "layers": {}, "fallback": {"placements": {
            "x86-cpu-ort": {"float_layers": {"a": "…", "b": "…"}}, "x86-cpu-openvino": {"float_layers": {}}}}})
    note = placement_note(v3("rpi4-ort"))
    assert "no latency placement for rpi4-ort" in note and "x86-cpu-ort (2 layers float there)" in note
    assert "x86-cpu-openvino (" not in note and "--target rpi4-ort" in note
    assert placement_note(v3("x86-cpu-openvino")) is None and placement_note(v3(None)) is None


def test_export_for_a_target_takes_its_form(tiny_bundle, tmp_path):
    from edgeq import api
    from edgeq.errors import ArtifactError
    result = api.export(tiny_bundle, None, tmp_path / "m.onnx", target="x86-cpu-openvino")
    assert result["format"] == "onnx" and result["target"] == "x86-cpu-openvino" and result["placement_note"] is None
    with pytest.raises(ArtifactError, match="--to tensorrt does not match target x86-cpu-ort, which runs onnx"):
        api.export(tiny_bundle, "tensorrt", tmp_path / "t", target="x86-cpu-ort")
    assert not (tmp_path / "t").exists()


# --- the TensorRT lint ----------------------------------------------------------------------------------

def _conv_graph(x_zp=np.int8(0), w_axis=0, residual="float", extra_nodes=()):
    """input → Q/DQ → Conv(DQ weight) → Add(residual) → output, with the parts a test breaks."""
    w = np.ones((4, 4, 1, 1), np.int8)
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.asarray(x_zp), "zp"),
             numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.full(4, 0.1, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(4, np.int8), "wzp"),
             numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "wf")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq_in"),
             helper.make_node("DequantizeLinear", ["w", "ws", "wzp"], ["wd"], name="dq_w", axis=w_axis),
             helper.make_node("Conv", ["xd", "wd"], ["c"], name="conv")]
    if residual == "quantized":
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["rq"], name="q_res"),
                  helper.make_node("DequantizeLinear", ["rq", "s", "zp"], ["rd"], name="dq_res"),
                  helper.make_node("Add", ["c", "rd"], ["y"], name="add")]
    else:
        nodes.append(helper.make_node("Add", ["c", "x"], ["y"], name="add"))
    nodes += list(extra_nodes)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 2])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _rules(model):
    return {(f.rule, f.node) for f in lint(model)}


def test_lint_accepts_a_clean_graph():
    assert lint(_conv_graph(residual="quantized")) == []


@pytest.mark.parametrize("model, expected", [
    (lambda: _conv_graph(x_zp=np.uint8(128), residual="quantized"), {("unsigned-int8", "q_in"),
                                                                    ("asymmetric-zero-point", "q_in")}),
    (lambda: _conv_graph(x_zp=np.int8(5), residual="quantized"), {("asymmetric-zero-point", "q_in")}),
    (lambda: _conv_graph(w_axis=1, residual="quantized"), {("per-channel-axis", "dq_w")}),
    (lambda: _conv_graph(), {("unquantized-residual", "add")}),
    (lambda: _conv_graph(residual="quantized", extra_nodes=[
        helper.make_node("Conv", ["xd", "wf"], ["c2"], name="conv_float_weight")]),
     {("half-quantized", "conv_float_weight")}),
    (lambda: _conv_graph(residual="quantized", extra_nodes=[
        helper.make_node("Softmax", ["xd"], ["sm"], name="softmax")]), {("qdq-in-norm", "dq_in")}),
    (lambda: _conv_graph(residual="quantized", extra_nodes=[
        helper.make_node("QLinearConv", ["xq", "s", "zp", "w", "ws", "wzp", "s", "zp"], ["qc"], name="qlinear")]),
     {("unsupported-op", "qlinear")}),
])
def test_lint_names_each_broken_node(model, expected):
    found = _rules(model())
    assert expected <= found, found
    assert all(f.fix for f in lint(model()))


def test_check_cli_on_bad_graph_and_bad_input(tmp_path):
    bad = tmp_path / "bad.onnx"
    onnx.save(_conv_graph(x_zp=np.uint8(128)), str(bad))
    result = cli("check", bad, "--target", "tensorrt")
    assert result.exit_code == 1
    assert "asymmetric-zero-point" in result.output and "q_in" in result.output and "fix:" in result.output
    payload = json.loads(cli("check", bad, "--json").output)
    assert payload["errors"] >= 2 and payload["warnings"] == 1
    (tmp_path / "junk.onnx").write_text("not a model")
    for args, fragment in ([bad, "--target", "coreml"], "unknown check target"), \
                          ([tmp_path / "missing.onnx"], "does not exist"), \
                          ([tmp_path / "junk.onnx"], "is not an ONNX file"):
        result = cli("check", *args)
        assert result.exit_code == 2 and fragment in result.output


# --- CoreML ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO_COREML)
def test_coreml_flavours_hold_edgeq_quantizers(tmp_path, zoo_bundles, name):
    pytest.importorskip("coremltools")
    manifest = json.loads((zoo_bundles[name] / "manifest.json").read_text())
    acts = len(manifest["activation_quantizers"])
    layers = sum(d["quantized"] for d in manifest["layers"].values())
    for flavour in ("w8a8", "w8", "fp16"):
        out = tmp_path / f"{flavour}.mlpackage"
        record = api.export(zoo_bundles[name], "coreml", out, precision=flavour)
        ops, expected = record["mil_ops"], record["expected_quant_ops"]
        assert out.is_dir() and (out / "Manifest.json").is_file()
        assert ops.get("quantize", 0) == ops.get("dequantize", 0) == expected["activation_quantize"]
        assert ops.get("constexpr_affine_dequantize", 0) == expected["int8_constants"]
        assert expected["int8_weights"] == (layers if flavour != "fp16" else 0)
        folded = expected["int8_constants"] - expected["int8_weights"]   # quantizers of constant tensors
        assert expected["activation_quantize"] + folded == (acts if flavour == "w8a8" else 0)
        if name != "edgenext_xx_small":
            assert folded == 0
        assert all(set(d) == {"FLOAT16"} for d in record["mil_op_dtypes"].values())
        if platform.system() != "Darwin":
            assert record["fidelity_vs_torch"]["verifiable"] is False
            assert "not verifiable on this OS" in record["fidelity_vs_torch"]["reason"]


def test_coreml_fallback_unit_stays_fp16(tmp_path, floated_bundle):
    pytest.importorskip("coremltools")
    record = api.export(floated_bundle, "coreml", tmp_path / "m.mlpackage", compute_units="CPU_AND_NE")
    manifest = json.loads((floated_bundle / "manifest.json").read_text())
    quantized = sum(d["quantized"] for d in manifest["layers"].values())
    assert record["mil_ops"]["constexpr_affine_dequantize"] == quantized
    assert quantized == 4 and record["mil_ops"]["conv"] == 4 and record["mil_ops"]["linear"] == 1
    # 4 int8 weights (3 convs + the linear) for 5 layers: the fragile conv has a plain FP16 weight
    assert set(record["mil_op_dtypes"]["conv"]) == {"FLOAT16"} and record["compute_units"] == "CPU_AND_NE"


@pytest.mark.skipif(platform.system() != "Darwin", reason="CoreML prediction needs macOS")
def test_coreml_predicts_like_torch_on_macos(tmp_path, zoo_bundles):
    record = api.export(zoo_bundles["mobilevit_xxs"], "coreml", tmp_path / "m.mlpackage")
    assert record["fidelity_vs_torch"]["verifiable"] and record["fidelity_vs_torch"]["cosine"] > 0.99


# --- ONNX extras ----------------------------------------------------------------------------------------

def test_onnx_fp16_simplified_and_dynamic_batch(tmp_path, tiny_bundle):
    r = api.export(tiny_bundle, "onnx", tmp_path / "s.onnx", simplify=True)
    assert r["passes"]["simplified"]["kept"] and r["passes"]["simplified"]["max_abs_diff"] <= 1e-4
    assert r["fidelity_vs_torch"]["cosine"] > 0.99
    r16 = api.export(tiny_bundle, "onnx", tmp_path / "h.onnx", precision="fp16", simplify=True)
    model = onnx.load(str(tmp_path / "h.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT   # float I/O kept
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    assert r16["fidelity_vs_torch"]["top1_agreement"] == 1.0


def _static_bundle(tmp_path, factory: str, shape: tuple) -> Path:
    """A bundle captured at batch 1 (from a statically exported .pt2 program)."""
    sys.path.insert(0, str(TESTS))
    import tiny_models
    program = tmp_path / f"{factory}.pt2"
    torch.export.save(torch.export.export(getattr(tiny_models, factory)(), (torch.randn(*shape),)), program)
    calib = tmp_path / f"{factory}.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((32, *shape[1:])).astype(np.float32))
    bundle = tmp_path / f"{factory}.edgeq"
    api.quantize(str(program), str(calib), "w8a8-fast", bundle)
    assert json.loads((bundle / "manifest.json").read_text())["dynamic_batch"] is False
    return bundle


def test_dynamic_batch_on_a_fixed_batch_bundle(tmp_path):
    bundle = _static_bundle(tmp_path, "outlier_net", (1, 3, 16, 16))
    r = api.export(bundle, "onnx", tmp_path / "d.onnx", dynamic_batch=True)
    dim = onnx.load(str(tmp_path / "d.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch" and r["dynamic_batch"]
    assert r["passes"]["batch_axis_made_dynamic"]["max_abs_diff"] <= 1e-4

    fixed = _static_bundle(tmp_path, "tiny_hybrid", (1, 3, 32, 32))   # its attention reshape holds batch 1
    result = cli("export", fixed, "-o", tmp_path / "f.onnx", "--dynamic-batch")
    assert result.exit_code == 2 and "fixes its batch size" in result.output and "node_view" in result.output
    assert not (tmp_path / "f.onnx").exists()


# --- reparameterization ---------------------------------------------------------------------------------

def test_fastvit_reparameterized_matches_training_form():
    import timm

    from edgeq.models.intake import InputSpec, LoadedModel
    from edgeq.trace.reparam import reparameterize
    torch.manual_seed(0)
    model = timm.create_model("fastvit_t8", pretrained=False, num_classes=10).eval()
    loaded = LoadedModel("timm:fastvit_t8", model, InputSpec((1, 3, 64, 64)))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    fused, record = reparameterize(loaded, x)
    assert record["applied"] and record["max_abs_diff"] <= 1e-4 and record["modules"] > 0
    assert sum(isinstance(m, torch.nn.Conv2d) for m in fused.module.modules()) < convs


def test_reparameterization_is_recorded(tiny_bundle):
    trace = json.loads((tiny_bundle / "manifest.json").read_text())["trace"]
    assert trace["reparameterized"] == {"applied": False, "reason": "no timm module with a deploy form"}


# --- bad input ------------------------------------------------------------------------------------------

def test_export_bad_input(tmp_path, tiny_bundle, monkeypatch):
    cases = [(["--to", "tflite", "-o", tmp_path / "a"], "unknown export target"),
             (["--to", "coreml", "-o", tmp_path / "a.onnx"], "folder ending in .mlpackage"),
             (["--to", "tensorrt", "--precision", "fp16", "-o", tmp_path / "t"], "writes int8"),
             (["--to", "coreml", "--precision", "int4", "-o", tmp_path / "b.mlpackage"], "must be one of")]
    (tmp_path / "exists").mkdir()
    cases.append((["--to", "tensorrt", "-o", tmp_path / "exists"], "already exists; pass --force"))
    for args, fragment in cases:
        result = cli("export", tiny_bundle, *args)
        assert result.exit_code == 2 and fragment in result.output, (args, result.output)
    assert list((tmp_path / "exists").iterdir()) == []

    newer = tmp_path / "newer.edgeq"
    newer.mkdir()
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    (newer / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    for to, out in (("tensorrt", tmp_path / "n"), ("coreml", tmp_path / "n.mlpackage")):
        result = cli("export", newer, "--to", to, "-o", out)
        assert result.exit_code == 2 and "newer than this edgeq" in result.output and not out.exists()

    monkeypatch.setitem(sys.modules, "coremltools", None)   # import fails as if not installed
    with pytest.raises(ArtifactError, match=r'pip install "edgeq\[coreml\]"'):
        api.export(tiny_bundle, "coreml", tmp_path / "c.mlpackage")
    assert not (tmp_path / "c.mlpackage").exists()


def test_unsupported_op_is_named_per_target(tmp_path):
    calib = tmp_path / "c.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32))
    bundle = tmp_path / "u.edgeq"
    api.quantize(f"{TESTS / 'tiny_models.py'}:unsupported_op", str(calib), "w8a8-fast", bundle)
    cases = [("onnx", tmp_path / "u.onnx", "op prims.bessel_i0 (node bessel_i0)"),
             ("tensorrt", tmp_path / "u_trt", "op prims.bessel_i0 (node bessel_i0)")]
    if importlib.util.find_spec("coremltools"):
        cases.append(("coreml", tmp_path / "u.mlpackage", "op 'i0' (node special_i0"))
    for to, out, fragment in cases:
        result = cli("export", bundle, "--to", to, "-o", out)
        assert result.exit_code == 2 and fragment in result.output, result.output
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy", "u.edgeq"]
