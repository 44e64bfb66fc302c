"""End to end through the real CLI on a bundled zoo model, plus help for every command."""
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgeq.cli import main

COMMANDS = sorted(main.commands)   # every command the group has, so a new one cannot miss its help


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "--json" in result.output and len(result.output) > 200


def edgeq(*args):
    proc = subprocess.run([sys.executable, "-m", "edgeq.cli", *map(str, args), "--json"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_zoo_quantize_export_eval_profile(tmp_path):
    bundle = tmp_path / "mvit.edgeq"
    q = edgeq("quantize", "--model", "zoo:mobilevit_xxs", "--calib", "zoo", "--calib-size", "128",
              "--iters", "100", "--no-latency-search", "-o", bundle)
    # the default recipe (reconstruction), shortened for CI; every unit int8 (placement is tested elsewhere)
    assert q["quantized_layers"] == 72 and q["blocks"]["bridge"] == 6
    assert q["fallback"]["placement"] is None and q["fallback"]["outliers"] == 0
    assert q["recipe"] == "w8a8" and q["reconstruction"]["regions"] == 13 and not q["reconstruction"]["fallbacks"]
    exported = {p: edgeq("export", bundle, "--to", "onnx", "--precision", p, "-o", tmp_path / f"{p}.onnx")
                for p in ("int8", "fp32")}
    assert exported["int8"]["bytes"] < 0.6 * exported["fp32"]["bytes"]
    assert exported["int8"]["fidelity_vs_torch"]["top1_agreement"] >= 0.95
    result = edgeq("eval", tmp_path / "int8.onnx", "--data", "zoo:test", "--limit", "2000")
    assert result["samples"] == 2000
    assert result["fp32_top1"] > 0.85
    assert result["drop_pp"] <= 1.0, result
    assert result["vs_fp32"]["cosine"] > 0.99
    prof = edgeq("profile", tmp_path / "int8.onnx", "--runs", "30", "--warmup", "3")
    assert prof["batches"][0]["p50_ms"] > 0 and prof["batches"][0]["batch"] == 1


def test_inspect_zoo_json():
    result = edgeq("inspect", "zoo:mobilevit_xxs")
    assert result["input"]["shape"] == [1, 1, 32, 32]
    assert result["kinds"]["attention"] == 9 and result["kinds"]["bridge"] == 6


@pytest.mark.slow
def test_demo_writes_report(tmp_path):
    result = edgeq("demo", "-o", tmp_path / "demo")
    for name in ("report.md", "report.json", "report.html"):
        assert (tmp_path / "demo" / name).is_file()
    rows = {(r["variant"], r["target"]): r for r in result["rows"]}
    for target in ("x86-cpu-ort", "x86-cpu-openvino"):
        assert rows[("w8a8-fast", target)]["drop"] <= 1.0 and rows[("fp32", target)]["score"] > 85
        assert rows[("w8a8-fast", target)]["bytes"] < 0.6 * rows[("fp32", target)]["bytes"]
    assert not rows[("w8a8", "jetson-orin-trt")]["measured"]
    exports = {e["target"].split(" ")[0]: e for e in result["exports"]}
    assert "0 lint findings" in exports["TensorRT"]["check"]
    assert (tmp_path / "demo" / "model_tensorrt" / "model.onnx").is_file()


@pytest.mark.slow
def test_bench_one_zoo_model(tmp_path):
    result = edgeq("bench", "--suite", "zoo", "--models", "mobilevit_xxs", "--recipes", "w8a8-fast",
                   "--eval-limit", "1000", "--runs", "20", "--seeds", "2", "--out-dir", tmp_path)
    from edgeq.baselines import nncf_missing
    nncf = set() if nncf_missing() else {("nncf", "ort"), ("nncf", "openvino"), ("nncf-ov", "openvino"),
                                         ("nncf-ov-transformer", "openvino")}   # IR rows: OpenVINO only
    assert {(r["variant"], r["runtime"]) for r in result["rows"]} == {
        (v, rt) for v in ("fp32", "ort-minmax", "w8a8-fast") for rt in ("ort", "openvino")} | nncf
    assert all(r["eval_samples"] == 1000 and r["drop_pp"] is not None for r in result["rows"])
    for row in result["rows"]:   # seed 0 is the row's own artifact; seed 1 a second quantization
        seeded = row["variant"] == "w8a8-fast"
        assert ("drop_seeds" in row) == seeded
        if seeded:
            assert len(row["drop_seeds"]) == 2 and row["drop_seeds"][0] == row["drop"]
            assert row["drop_mean"] == round(sum(row["drop_seeds"]) / 2, 4)
    assert " ± " in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.md").read_text().startswith("# edgeq bench")
    report = json.loads((tmp_path / "models" / "zoo-mobilevit_xxs" / "report.json").read_text())
    assert report["schema"] == "edgeq.report/1" and len(report["rows"]) == 6 + (2 * 3 if nncf else 0)
    assert (tmp_path / "models" / "zoo-mobilevit_xxs" / "report.html").is_file()
