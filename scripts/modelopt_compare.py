"""edgeq's TensorRT export against NVIDIA's own quantizer for TensorRT, without TensorRT.

nvidia-modelopt's ONNX PTQ (``modelopt.onnx.quantization.quantize``) runs on a CPU, but it pins onnx,
onnxruntime-gpu and cupy, so it lives in its own virtual environment (``--venv``; made by
``python -m venv .venv-modelopt && .venv-modelopt/bin/pip install "nvidia-modelopt[onnx]==0.47.0"``).
For each model this script makes, from edgeq's own FP32 ONNX and the same calibration images:
  - modelopt's int8 ONNX (its default int8 mode, calibration on the CPU execution provider),
  - edgeq's ``--to tensorrt`` export of a w8a8-fast bundle,
then lints both with ``edgeq check --target tensorrt``, lists where their Q/DQ pairs sit (per op type: how
many nodes take a quantized activation input), and, on the zoo models, scores both files in ONNX Runtime
on the 10,000 Fashion-MNIST test images next to FP32. Output: OUT/modelopt.json and OUT/modelopt.md.

    python scripts/modelopt_compare.py --venv .venv-modelopt -o reports/modelopt
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from edgeq import api
from edgeq.bench import SPEED_CALIB, ZOO_CALIB, ZOO_TEST
from edgeq.data import load_data
from edgeq.export.onnx import read_artifact
from edgeq.models.intake import InputSpec

ZOO = ("mobilevit_xxs", "edgenext_xx_small", "levit_128s")
SPEED = ("mobilevit_xxs", "efficientformerv2_s0", "levit_128s", "fastvit_t8", "edgenext_xx_small")

MODELOPT_PTQ = """
import sys, time, numpy as np
from modelopt.onnx.quantization import quantize
src, calib, out = sys.argv[1:4]
start = time.perf_counter()
quantize(onnx_path=src, quantize_mode="int8", calibration_data=np.load(calib), calibration_method="max",
         calibration_eps=["cpu"], output_path=out)
print(round(time.perf_counter() - start, 2))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", required=True, help="the virtual environment nvidia-modelopt is installed in")
    parser.add_argument("-o", "--out", default="reports/modelopt")
    parser.add_argument("--work", default="/tmp/edgeq-modelopt")
    parser.add_argument("--suites", default="zoo,speed")
    args = parser.parse_args()
    python = Path(args.venv) / "bin" / "python"
    version = subprocess.run([str(python), "-c", "import modelopt; print(modelopt.__version__)"],
                             capture_output=True, text=True, check=True).stdout.strip()
    rows = []
    for suite in args.suites.split(","):
        for name in ZOO if suite == "zoo" else SPEED:
            rows.append(compare(suite, name, python, Path(args.work) / f"{suite}-{name}"))
            print(json.dumps(rows[-1]["summary"]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"modelopt": version, "rows": rows}
    (out / "modelopt.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "modelopt.md").write_text(markdown(report))


def compare(suite: str, name: str, python: Path, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    spec = f"zoo:{name}" if suite == "zoo" else f"timm:{name}"
    calib_size = 256 if suite == "zoo" else SPEED_CALIB
    bundle = work / "fast.edgeq"
    if not bundle.exists():
        api.quantize(spec, ZOO_CALIB, "w8a8-fast", bundle, calib_size=None if suite == "zoo" else calib_size)
    fp32, trt = work / "fp32.onnx", work / "edgeq-trt"
    if not fp32.exists():
        api.export(bundle, "onnx", fp32, precision="fp32")
    if not trt.exists():
        api.export(bundle, "tensorrt", trt)
    record = read_artifact(fp32)
    calib = load_data(ZOO_CALIB, InputSpec.from_dict(record["input"]), limit=calib_size).samples.inputs[0]
    np.save(work / "calib.npy", calib.astype(np.float32))
    theirs = work / "modelopt.onnx"
    done = subprocess.run([str(python), "-c", MODELOPT_PTQ, str(fp32), str(work / "calib.npy"), str(theirs)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return {"suite": suite, "model": name, "summary": {"model": name, "modelopt": "failed"},
                "error": done.stderr.strip().splitlines()[-5:]}
    ptq_seconds = float(done.stdout.strip().splitlines()[-1])
    # the same input description as the FP32 file it was made from, so edgeq eval reads the zoo images for it
    (work / "modelopt.onnx.json").write_text(json.dumps(
        {**record, "path": str(theirs), "precision": "int8", "bundle": None, "made_by": "nvidia-modelopt"}))
    files = {"edgeq": trt / "model.onnx", "modelopt": theirs}
    row = {"suite": suite, "model": name, "ptq_seconds_modelopt": ptq_seconds,
           "check": {k: _check(p) for k, p in files.items()},
           "quantized_inputs": {k: quantized_inputs(onnx.load(str(p))) for k, p in files.items()}}
    if suite == "zoo":
        row["top1"] = {k: api.evaluate(p, ZOO_TEST)["metric"]["value"]
                       for k, p in {"fp32": fp32, **files}.items()}
    row["summary"] = {"model": f"{suite}:{name}", "modelopt_check_errors": row["check"]["modelopt"]["errors"],
                      "edgeq_check_errors": row["check"]["edgeq"]["errors"], **row.get("top1", {})}
    return row


def _check(path: Path) -> dict:
    result = api.check(path, "tensorrt")
    kinds: dict[str, int] = {}
    for f in result["findings"]:
        kinds[f["rule"]] = kinds.get(f["rule"], 0) + 1
    return {"errors": result["errors"], "warnings": result["warnings"], "by_rule": kinds,
            "examples": [f"{f['node']}: {f['message']}" for f in result["findings"][:6]]}


def quantized_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """Per op type: nodes with a dequantized activation input / nodes of that type."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    total: dict[str, int] = {}
    quantized: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        total[node.op_type] = total.get(node.op_type, 0) + 1
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] not in inits:
                quantized[node.op_type] = quantized.get(node.op_type, 0) + 1
                break
    return {op: f"{quantized.get(op, 0)}/{n}" for op, n in sorted(total.items()) if quantized.get(op)}


def markdown(report: dict) -> str:
    lines = [f"# edgeq `--to tensorrt` vs nvidia-modelopt {report['modelopt']} ONNX int8 PTQ", "",
             f"Made by `scripts/modelopt_compare.py` on {time.strftime('%Y-%m-%d')}; accuracy: ONNX Runtime (CPU) "
             f"running each file on the 10,000 Fashion-MNIST test images. TensorRT itself cannot run here.", "",
             "| model | top-1 fp32 / edgeq / modelopt | `edgeq check --target tensorrt` errors edgeq / modelopt "
             "| modelopt findings by rule | modelopt PTQ s |", "|---|---|---|---|---|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['suite']}:{r['model']} | modelopt failed: {r['error'][-1]} | | | |")
            continue
        top1 = " / ".join(f"{r['top1'][k]:.2f}" for k in ("fp32", "edgeq", "modelopt")) if "top1" in r else "–"
        rules = ", ".join(f"{k} {v}" for k, v in r["check"]["modelopt"]["by_rule"].items()) or "none"
        lines.append(f"| {r['suite']}:{r['model']} | {top1} | {r['check']['edgeq']['errors']} / "
                     f"{r['check']['modelopt']['errors']} | {rules} | {r['ptq_seconds_modelopt']} |")
    lines += ["", "## Where the quantized activation inputs sit (nodes with a quantized input / nodes)", ""]
    for r in report["rows"]:
        if "quantized_inputs" in r:
            lines.append(f"- **{r['suite']}:{r['model']}** edgeq: {_ops(r['quantized_inputs']['edgeq'])}; "
                         f"modelopt: {_ops(r['quantized_inputs']['modelopt'])}")
    return "\n".join(lines) + "\n"


def _ops(counts: dict) -> str:
    return ", ".join(f"{op} {v}" for op, v in counts.items())


if __name__ == "__main__":
    sys.exit(main())
