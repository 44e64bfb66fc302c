"""``edgeq demo``: the whole path on a bundled model, ending in a latency-accuracy report."""
from __future__ import annotations

from pathlib import Path

from . import api
from .errors import ArtifactError
from .fsutil import atomic_path, check_output
from .report import ReportSpec, build_report, write_report
from .report.render import to_markdown

DEMO_RECIPES = ("w8a8-fast", "w8a8")
# the two CPU targets that run here, side by side; a Jetson and an Apple target show what is left to the device
DEMO_TARGETS = ("x86-cpu-ort", "x86-cpu-openvino", "jetson-orin-trt", "apple-m-coreml")


def run_demo(model: str, out: str | Path, force: bool) -> dict:
    """The latency-accuracy report of ``model`` (FP32, FP16, ONNX Runtime's quantizer, w8a8-fast and w8a8
    placed per target) on both CPU targets, plus the TensorRT and CoreML exports and what can be checked here."""
    out = check_output(out, force, is_dir=True)
    with atomic_path(out, is_dir=True) as tmp:
        work = tmp / "artifacts"
        report = build_report(ReportSpec(model, DEMO_TARGETS, DEMO_RECIPES, runs=200), work)
        report["exports"] = _vendor_targets(work / "w8a8.edgeq", tmp)
        write_report(report, tmp)
    files = {n: str(out / f"report.{n}") for n in ("json", "md", "html")}
    return {**report, "markdown": to_markdown(report), "files": files, "output": str(out)}


def _vendor_targets(bundle: Path, tmp: Path) -> list[dict]:
    """TensorRT and CoreML exports for the Jetson and Apple targets: what can be checked on this machine, and
    what cannot. The bundle holds no placement for them (nothing here can time them), so they carry the
    recipe's: every candidate layer int8 (a placement measured on a CPU runtime says nothing about those)."""
    trt = api.export(bundle, None, tmp / "model_tensorrt", target="jetson-orin-trt")
    engine = trt["engine"]
    targets = [{"target": "TensorRT (explicit-quantization ONNX)", "artifact": "model_tensorrt/model.onnx",
                "bytes": trt["bytes"],
                "check": f"{len(trt['lint'])} lint findings; top-1 in ONNX Runtime "
                         f"{100 * api.evaluate(trt['path'], 'zoo:test')['top1']:.2f} %; "
                         + ("engine built" if engine["built"] else f"engine not built: {engine['reason']}")}]
    try:
        coreml = api.export(bundle, None, tmp / "model_w8a8.mlpackage", target="apple-m-coreml")
    except ArtifactError as exc:   # coremltools is an optional extra
        return targets + [{"target": "CoreML ML program (w8a8)", "artifact": None, "bytes": None,
                           "check": f"skipped: {exc}"}]
    ops = coreml["mil_ops"]
    return targets + [{"target": "CoreML ML program (w8a8)", "artifact": "model_w8a8.mlpackage",
                       "bytes": coreml["bytes"],
                       "check": f"{ops.get('quantize', 0)} quantize ops and {ops.get('constexpr_affine_dequantize', 0)} "
                                f"int8 weights, as in the bundle; "
                                f"{coreml['fidelity_vs_torch'].get('reason', 'predictions match torch')}"}]
