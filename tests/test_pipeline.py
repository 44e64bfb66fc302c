"""Quantize → bundle → ONNX export → eval → profile on the tiny hybrid, with real ONNX Runtime."""
import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeq import api
from edgeq.bundle import read_bundle


def test_bundle_is_self_describing(tiny_bundle):
    names = sorted(p.name for p in tiny_bundle.iterdir())
    assert names == ["manifest.json", "model.pt2", "quant.safetensors", "samples.npz"]
    m = json.loads((tiny_bundle / "manifest.json").read_text())
    for key in ("model", "input", "recipe", "seed", "layers", "calibration", "versions", "block_map",
                "activation_quantizers", "files"):
        assert key in m
    assert m["recipe"]["name"] == "w8a8-fast" and m["input"]["shape"] == [1, 3, 32, 32]
    assert m["calibration"]["samples"] == 48
    assert all(d["quantized"] and d["precision"] == "w8a8" for d in m["layers"].values())
    assert len(m["layers"]) == 17  # stem, 3 conv blocks x 3, 6 in the hybrid stage, head
    assert m["fidelity_fakequant_vs_float"]["cosine"] > 0.99


def test_same_seed_gives_identical_weights(tiny_spec, calib_npy, tiny_bundle, tmp_path):
    again = tmp_path / "again.edgeq"
    api.quantize(tiny_spec, str(calib_npy), "w8a8-fast", again, seed=0)
    digest = lambda p: hashlib.sha256((p / "quant.safetensors").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again) == digest(tiny_bundle)


def test_weights_are_integers_on_the_grid(tiny_bundle):
    bundle = read_bundle(tiny_bundle)
    for name, t in bundle.tensors.items():
        if name.endswith(".int"):
            assert str(t.dtype) == "torch.int8"
            assert int(t.abs().max()) <= 128
            assert int(t.abs().max()) >= 64  # per-channel ranges use the grid, not a sliver of it


def test_int8_onnx_is_qdq(tiny_onnx, tiny_bundle):
    record = tiny_onnx["int8"]
    model = onnx.load(record["path"])
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    ops = record["op_counts"]
    manifest = read_bundle(tiny_bundle).manifest
    n_layers, n_act = len(manifest["layers"]), len(manifest["activation_quantizers"])
    assert ops["QuantizeLinear"] == n_act                   # weights carry no QuantizeLinear
    assert ops["DequantizeLinear"] >= n_layers + n_act       # one per weight, one per activation
    int8_weights = [i for i in model.graph.initializer
                    if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 2]  # not zero-points
    assert len(int8_weights) == n_layers
    int32_bias = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT32
                  and numpy_helper.to_array(i).ndim == 1 and numpy_helper.to_array(i).any()]
    assert int32_bias, "conv biases should be int32"
    fid = record["fidelity_vs_torch"]
    # ORT's extended QDQ fusions shift numerics slightly (exact match with fusions disabled)
    assert fid["cosine"] > 0.99 and fid["top1_agreement"] >= 0.9
    weight_bytes = sum(len(i.raw_data) for i in int8_weights)
    fp32 = onnx.load(tiny_onnx["fp32"]["path"])
    fp32_weight_bytes = sum(len(i.raw_data) for i in fp32.graph.initializer if len(i.dims) >= 2)
    assert weight_bytes * 4 == pytest.approx(fp32_weight_bytes, rel=0.02)


def test_fp32_onnx_matches_torch(tiny_onnx):
    fid = tiny_onnx["fp32"]["fidelity_vs_torch"]
    assert fid["max_abs_diff"] < 1e-4 and fid["top1_agreement"] == 1.0


def test_fp16_export(tiny_bundle, tmp_path):
    record = api.export(tiny_bundle, "onnx", tmp_path / "tiny16.onnx", precision="fp16")
    model = onnx.load(record["path"])
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert record["fidelity_vs_torch"]["cosine"] > 0.999


def test_eval_with_labels_and_fp32_reference(tiny_onnx, labelled_npz):
    import onnxruntime as ort
    result = api.evaluate(tiny_onnx["int8"]["path"], str(labelled_npz))
    assert result["samples"] == 40
    assert result["vs_fp32"]["cosine"] > 0.99
    # independent check: run the file in a plain ORT session and count hits ourselves
    with np.load(labelled_npz) as data:
        x, y = data["x"], data["y"]
    sess = ort.InferenceSession(tiny_onnx["int8"]["path"], providers=["CPUExecutionProvider"])
    hits = sum(int(sess.run(None, {"input": x[i:i + 1]})[0].argmax() == y[i]) for i in range(len(y)))
    assert result["top1"] == round(hits / len(y), 4)
    assert "torch float model" in result["vs_fp32"]["reference"]


def test_eval_without_labels_uses_reference(tiny_onnx, calib_npy):
    result = api.evaluate(tiny_onnx["int8"]["path"], str(calib_npy),
                          reference=tiny_onnx["fp32"]["path"])
    assert "top1" not in result
    assert result["vs_fp32"]["sqnr_db"] > 15


def test_profile_reports_percentiles(tiny_onnx):
    result = api.profile(tiny_onnx["int8"]["path"], runs=20, warmup=2, threads=1)
    assert result["schema"] == "edgeq.measurement/1" and result["measured"] and result["runs"] == 20
    assert [b["batch"] for b in result["batches"]] == [1, 8]   # the default target's batch sizes
    for b in result["batches"]:
        assert 0 < b["p50_ms"] <= b["p90_ms"] <= b["p99_ms"] and len(b["samples_ms"]) == 20
        assert b["throughput_per_s"] == pytest.approx(b["batch"] * 1000 / b["mean_ms"], rel=0.01)
    assert result["fingerprint"]["onnxruntime"] and result["bytes"] > 0


def test_calibration_from_image_folder(tiny_spec, tmp_path):
    from PIL import Image
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    result = api.quantize(tiny_spec, str(folder), "w8a8-fast", tmp_path / "img.edgeq", batch_size=4)
    manifest = json.loads((tmp_path / "img.edgeq" / "manifest.json").read_text())
    assert manifest["calibration"]["samples"] == 6 and result["quantized_layers"] == 17


def test_recipe_override_keeps_layers_float(tiny_spec, calib_npy, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("edgeq_recipe: 1\nname: keep-head\noverrides:\n"
                      "  - match: 're:head.*'\n    float: true\n"
                      "  - match: 'type:dwconv'\n    activations: {observer: percentile}\n")
    out = tmp_path / "o.edgeq"
    result = api.quantize(tiny_spec, str(calib_npy), str(recipe), out, latency_search=False)
    assert result["float_layers"] == 1
    layers = json.loads((out / "manifest.json").read_text())["layers"]
    head = [d for d in layers.values() if d["module"] == "head"][0]
    assert head["precision"] == "fp32" and "override" in head["reason"]
    dw = [d for d in layers.values() if d["op"] == "dwconv"]
    assert all(d["act_spec"]["observer"] == "percentile" for d in dw)
    record = api.export(out, "onnx", tmp_path / "o.onnx")
    assert record["op_counts"]["DequantizeLinear"] < 2 * 17 + 20


def test_sub_8bit_observer_recipe_exports_exactly(tiny_spec, calib_npy, tmp_path):
    recipe = tmp_path / "w6.yaml"
    recipe.write_text("edgeq_recipe: 1\nname: w6a5\nbase: w8a8-fast\nweights: {bits: 6}\nactivations: {bits: 5}\n")
    api.quantize(tiny_spec, str(calib_npy), str(recipe), tmp_path / "w6.edgeq")
    manifest = json.loads((tmp_path / "w6.edgeq" / "manifest.json").read_text())
    assert {d["precision"] for d in manifest["layers"].values()} == {"w6a5"}
    assert manifest["reconstruction"] is None
    record = api.export(tmp_path / "w6.edgeq", "onnx", tmp_path / "w6.onnx")
    assert record["layer_precisions"] == {"w6a5": 17}
    assert record["fidelity_vs_torch"]["cosine"] > 0.9999
