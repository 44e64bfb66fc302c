"""Models beyond image classifiers: text labels, user metrics, CTC, several outputs and inputs, dynamic width."""
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgeq import api
from edgeq.cli import main

import seq_models

TESTS = Path(__file__).resolve().parent
RECOGNIZER = f"{TESTS / 'seq_models.py'}:build_recognizer"
WEIGHTS = TESTS / "data" / "recognizer.pt"   # seq_models.train_recognizer(300), CER 0.0 on fresh lines


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def one_error(code, output, fragment):
    assert code == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], output
    assert "Traceback" not in output


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """Calibration and held-out text lines (widths 40..100 px), transcripts stored as strings."""
    folder = tmp_path_factory.mktemp("lines")
    seq_models.write_lines(folder / "calib.npz", 64, seed=1)
    seq_models.write_lines(folder / "val.npz", 150, seed=2)
    (folder / "charset.txt").write_text("\n".join(seq_models.CHARSET) + "\n")
    return folder


@pytest.fixture(scope="module")
def recognizer_w8a8(tmp_path_factory, lines):
    out = tmp_path_factory.mktemp("rec") / "rec.edgeq"
    result = api.quantize(RECOGNIZER, str(lines / "calib.npz"), "w8a8", out, weights=str(WEIGHTS), iters=20,
                          latency_search=False)
    return out, result


def test_string_labels_are_ignored_for_calibration(tmp_path):
    """The OCR user's archive: inputs under x, transcripts like '$1078.68' under labels."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "lines.npz", x=rng.standard_normal((16, 1, 12, 64)).astype(np.float32),
             labels=np.array([f"${rng.integers(100, 9999)}.{rng.integers(10, 99)}" for _ in range(16)]))
    code, output = run("quantize", "--model", RECOGNIZER, "--input-shape", "1x1x12x64",
                       "--calib", f"{tmp_path / 'lines.npz'}:x", "--recipe", "w8a8", "--iters", "5",
                       "--batch-size", "8", "--no-latency-search", "-o", tmp_path / "rec.edgeq")
    assert code == 0, output
    manifest = json.loads((tmp_path / "rec.edgeq" / "manifest.json").read_text())
    assert manifest["calibration"]["labelled"] is False and manifest["reconstruction"]["regions"]
    # without a key the archive's labels are read, kept as the strings they are, and calibration ignores them
    code, output = run("quantize", "--model", RECOGNIZER, "--input-shape", "1x1x12x64", "--calib",
                       tmp_path / "lines.npz", "--recipe", "w8a8-fast", "-o", tmp_path / "fast.edgeq")
    assert code == 0, output
    labels = json.loads((tmp_path / "fast.edgeq" / "manifest.json").read_text())["calibration"]["labels"]
    assert labels.startswith("<U") and labels.endswith("[16]")


def test_ctc_model_w8a8_keeps_cer_and_exports_a_dynamic_width(recognizer_w8a8, lines, tmp_path):
    bundle, _ = recognizer_w8a8
    onnx_path = tmp_path / "rec.onnx"
    record = api.export(bundle, "onnx", onnx_path)
    assert record["lengths_checked"] and len(record["lengths_checked"]) >= 3
    assert record["fidelity_vs_torch"]["cosine"] > 0.999
    width = onnx.load(str(onnx_path)).graph.input[0].type.tensor_type.shape.dim[3]
    assert width.dim_param, "the width axis must stay symbolic in the ONNX"
    charset = lines / "charset.txt"
    code, output = run("eval", onnx_path, "--data", lines / "val.npz", "--metric", "ctc-cer", "--charset",
                       charset, "--json")
    assert code == 0, output
    result = json.loads(output)
    cer = result["metric"]
    assert cer["name"] == "ctc-cer" and cer["fp32"] < 5.0, cer   # the float model reads the lines
    assert cer["drop"] <= 0.5, cer                                   # the target: within 0.5 points
    widths = np.load(lines / "val.npz")["lengths"]
    assert len(set(widths.tolist())) >= 3                            # evaluated at several widths


def test_max_drop_in_cer_points_chooses_fallbacks(lines, tmp_path):
    """2-bit weights cost this recogniser about 6 CER points; a 0.5-point budget floats units until it holds."""
    (tmp_path / "w2a4.yaml").write_text("edgeq_recipe: 1\nname: w2a4\nbase: w8a8-fast\n"
                                        "weights: {bits: 2}\nactivations: {bits: 4}\n")
    code, output = run("quantize", "--model", RECOGNIZER, "--weights", WEIGHTS, "--calib", lines / "calib.npz",
                       "--recipe", tmp_path / "w2a4.yaml", "--max-drop", "0.5", "--eval", lines / "val.npz",
                       "--metric", "ctc-cer", "--charset", lines / "charset.txt", "-o", tmp_path / "rec.edgeq")
    assert code == 0, output
    budget = json.loads((tmp_path / "rec.edgeq" / "manifest.json").read_text())["fallback"]["budget"]
    assert budget["metric"] == "ctc-cer" and budget["budget"] == "ctc-cer drop ≤ 0.5 points"
    assert budget["start"]["drop"] > 2.0 and budget["reverted"], budget
    assert budget["final"]["drop"] <= 0.5 and budget["met"]


def test_user_metric_from_a_file(recognizer_w8a8, lines, tmp_path):
    (tmp_path / "my_metric.py").write_text(
        "import numpy as np\n"
        "def frames_wrong(outputs, labels):\n"
        "    # outputs: one [T, C] array per line (widths differ), labels: the transcripts\n"
        "    assert len(outputs) == len(labels)\n"
        "    return float(sum(int(o.argmax(-1)[0] != 0) for o in outputs))\n"
        "frames_wrong.higher_is_better = False\n")
    bundle, _ = recognizer_w8a8
    code, output = run("eval", bundle, "--data", lines / "val.npz", "--metric",
                       f"{tmp_path / 'my_metric.py'}:frames_wrong", "--json")
    assert code == 0, output
    metric = json.loads(output)["metric"]
    assert metric["name"] == "frames_wrong" and metric["higher_is_better"] is False
    assert metric["value"] == metric["fp32"] + metric["drop"]


def test_two_output_model_end_to_end(tmp_path):
    model = f"{TESTS / 'seq_models.py'}:build_two_heads"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((32, 3, 16, 16)).astype(np.float32),
             y=rng.integers(0, 5, 32))
    result = api.quantize(model, str(tmp_path / "d.npz"), "w8a8", tmp_path / "m.edgeq", iters=5, batch_size=8,
                          latency_search=False)
    assert [o["name"] for o in result["fidelity_fakequant_vs_float"]["outputs"]] == [0, 1]
    record = api.export(tmp_path / "m.edgeq", "onnx", tmp_path / "m.onnx")
    assert record["outputs"] == ["logits", "box"]
    assert [o.name for o in onnx.load(str(tmp_path / "m.onnx")).graph.output] == ["logits", "box"]
    assert all(o["cosine"] > 0.99 for o in record["fidelity_vs_torch"]["outputs"])
    (tmp_path / "both.py").write_text(
        "def box_error(outputs, labels):\n"
        "    logits, box = outputs   # several outputs: the metric receives them all\n"
        "    return float(abs(box).mean()) + 0 * len(labels)\n")
    evaluated = api.evaluate(tmp_path / "m.onnx", str(tmp_path / "d.npz"),
                             metric=api.MetricChoice(f"{tmp_path / 'both.py'}:box_error"))
    assert evaluated["metric"]["name"] == "box_error" and len(evaluated["vs_fp32"]["outputs"]) == 2
    assert "top1" not in evaluated   # the metric asked for was the box error, not top-1


def test_two_input_model_end_to_end(tmp_path):
    model = f"{TESTS / 'seq_models.py'}:build_two_inputs"
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", image=rng.standard_normal((24, 3, 16, 16)).astype(np.float32),
             meta=rng.standard_normal((24, 6)).astype(np.float32), y=rng.integers(0, 5, 24))
    result = api.quantize(model, str(tmp_path / "d.npz"), "w8a8", tmp_path / "m.edgeq", iters=5, batch_size=8,
                          latency_search=False)   # inputs found by name; reconstruction caches both
    assert result["reconstruction"]["regions"] >= 2
    record = api.export(tmp_path / "m.edgeq", "onnx", tmp_path / "m.onnx")
    assert [i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.input] == ["image", "meta"]
    assert record["fidelity_vs_torch"]["cosine"] > 0.999
    evaluated = api.evaluate(tmp_path / "m.onnx", f"{tmp_path / 'd.npz'}:image,meta",
                             labels=f"{tmp_path / 'd.npz'}:y")
    assert evaluated["metric"]["name"] == "top1" and evaluated["samples"] == 24


def test_sequence_and_token_inputs_skip_image_preprocessing(tmp_path):
    """Features [B, T, F] with a dynamic time axis, and integer token ids: no image handling anywhere."""
    rng = np.random.default_rng(0)
    feats = tmp_path / "feats"
    feats.mkdir()
    for i, frames in enumerate((40, 40, 50, 60) * 4):   # a folder of .npy samples of several lengths
        np.save(feats / f"{i:02d}.npy", rng.standard_normal((frames, 20)).astype(np.float32))
    model = f"{TESTS / 'seq_models.py'}:build_conformer"
    result = api.quantize(model, str(feats), "w8a8", tmp_path / "c.edgeq", iters=5, batch_size=4,
                          latency_search=False)
    assert result["fidelity_fakequant_vs_float"]["cosine"] > 0.99
    record = api.export(tmp_path / "c.edgeq", "onnx", tmp_path / "c.onnx")
    assert record["lengths_checked"] == [40, 50, 60] and record["fidelity_vs_torch"]["cosine"] > 0.999
    ids = tmp_path / "ids.npz"
    np.savez(ids, x=rng.integers(0, 50, (24, 16)), y=rng.integers(0, 3, 24))
    tokens = f"{TESTS / 'seq_models.py'}:build_token_classifier"
    api.quantize(tokens, str(ids), "w8a8-fast", tmp_path / "t.edgeq")
    record = api.export(tmp_path / "t.edgeq", "onnx", tmp_path / "t.onnx")
    assert onnx.load(str(tmp_path / "t.onnx")).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert api.evaluate(tmp_path / "t.onnx", str(ids))["samples"] == 24


def test_a_graph_converted_from_onnx_quantizes_exports_and_keeps_cer(tmp_path):
    """The OCR user's path: onnx2torch-converted model, transcripts in the archive, the default recipe."""
    seq_models.write_lines(tmp_path / "lines.npz", 48, seed=3, lengths=(5, 5))   # 5 characters: width 64
    arrays = dict(np.load(tmp_path / "lines.npz"))
    np.savez(tmp_path / "lines64.npz", x=arrays["x"], labels=arrays["labels"])
    (tmp_path / "charset.txt").write_text("\n".join(seq_models.CHARSET) + "\n")
    model = f"{TESTS / 'seq_models.py'}:build_converted_recognizer"
    result = api.quantize(model, f"{tmp_path / 'lines64.npz'}:x", "w8a8", tmp_path / "c.edgeq",
                          input_shape=(1, 1, seq_models.HEIGHT, 64), iters=5, batch_size=1, latency_search=False)
    assert result["quantized_layers"] == 7 and result["reconstruction"]["regions"]   # MatMul+Add became linear
    api.export(tmp_path / "c.edgeq", "onnx", tmp_path / "c.onnx")
    cer = api.evaluate(tmp_path / "c.onnx", str(tmp_path / "lines64.npz"),
                       metric=api.MetricChoice("ctc-cer", str(tmp_path / "charset.txt")))["metric"]
    assert cer["fp32"] < 5.0 and cer["drop"] <= 1.0, cer


def test_a_flat_converted_graph_reconstructs_as_blocks(tmp_path):
    """37 layers converted from ONNX (no module hierarchy left): residual spans become blocks (attention and
    MLP branches, residual conv blocks), the chain before them the stem, the one after the head; reconstruction
    learns 16 regions, not 37 one-layer ones."""
    model = f"{TESTS / 'seq_models.py'}:build_converted_flat_hybrid"
    info = api.inspect(model, input_shape="1x3x32x32")
    kinds = [b["kind"] for b in info["blocks"]]
    assert sum(len(b["layers"]) for b in info["blocks"]) == 37
    assert kinds == ["stem", *["conv"] * 5, "bridge", *["attention", "mlp"] * 4, "head"], kinds
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32))
    result = api.quantize(model, str(tmp_path / "x.npy"), "w8a8", tmp_path / "f.edgeq", input_shape="1x3x32x32",
                          iters=2, time_budget=0, latency_search=False)
    recon = json.loads((tmp_path / "f.edgeq" / "manifest.json").read_text())["reconstruction"]
    assert result["quantized_layers"] == 37 and len(recon["regions"]) == 15   # the bridge joins the block before it
    assert max(len(r["layers"]) for r in recon["regions"]) >= 5


def test_a_fixed_batch_program_reconstructs_in_batches_of_its_size(tmp_path):
    """Reconstruction's evaluation subsets used to run all at once, which a fixed-batch program refuses."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32))
    result = api.quantize(f"{TESTS / 'seq_models.py'}:build_fixed_batch", str(tmp_path / "x.npy"), "w8a8",
                          tmp_path / "f.edgeq", iters=3, latency_search=False)
    manifest = json.loads((tmp_path / "f.edgeq" / "manifest.json").read_text())
    assert manifest["dynamic_batch"] is False and result["reconstruction"]["regions"] == 2


def test_inspect_shows_a_conformer_block_map():
    result = api.inspect(f"{TESTS / 'seq_models.py'}:build_conformer")
    blocks = {b["name"]: b["kind"] for b in result["blocks"]}
    assert [n for n in blocks if n.startswith("blocks.0.")] == [
        "blocks.0.feed_forward_macaron", "blocks.0.self_attn", "blocks.0.conv_module", "blocks.0.feed_forward"]
    assert blocks["blocks.0.self_attn"] == "attention" and blocks["blocks.0.feed_forward"] == "mlp"
    assert result["inputs"][0]["dynamic"] == [1, 8, 3000]


# ---- bad input: one sentence, exit 2, nothing written ----------------------------------------------

@pytest.mark.parametrize("spec, fragment", [
    ("missing.py:fn", "does not exist"),
    ("{dir}/m.py:nope", "no function"),
    ("{dir}/m.py:raises", "metric raises raised ZeroDivisionError"),
    ("{dir}/m.py:text", "returned 'abc' (str), not a number"),
])
def test_bad_user_metric(tiny_onnx, labelled_npz, tmp_path, spec, fragment):
    (tmp_path / "m.py").write_text("def raises(o, l):\n    return 1 / 0\ndef text(o, l):\n    return 'abc'\n")
    code, output = run("eval", tiny_onnx["int8"]["path"], "--data", labelled_npz, "--metric",
                       spec.format(dir=tmp_path))
    one_error(code, output, fragment)


def test_labels_count_must_match(tiny_onnx, labelled_npz, tmp_path):
    np.save(tmp_path / "y.npy", np.arange(7))
    one_error(*run("eval", tiny_onnx["int8"]["path"], "--data", labelled_npz, "--labels", tmp_path / "y.npy"),
              "has 40 samples but 7 labels")


def test_dynamic_range_must_include_the_example(lines, tmp_path):
    code, output = run("quantize", "--model", RECOGNIZER, "--dynamic", "3:100..200", "--calib",
                       lines / "calib.npz", "--recipe", "w8a8-fast", "-o", tmp_path / "out.edgeq")
    one_error(code, output, "excludes the example shape")
    assert not (tmp_path / "out.edgeq").exists()


def test_lengths_without_dynamic_axis(tmp_path):
    model = f"{TESTS / 'tiny_models.py'}:tiny_hybrid"
    for i, width in enumerate((32, 32, 40)):
        np.save(tmp_path / f"s{i}.npy", np.zeros((3, 32, width), dtype=np.float32))
    code, output = run("quantize", "--model", model, "--calib", tmp_path, "--recipe", "w8a8-fast",
                       "-o", tmp_path / "out.edgeq")
    one_error(code, output, "no dynamic axis; add --dynamic")
    assert not (tmp_path / "out.edgeq").exists()
