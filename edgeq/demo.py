"""``edgeq demo``: the whole path on a bundled model, ending in a latency-accuracy report."""
from __future__ import annotations

import json
from pathlib import Path

from . import api
from .envinfo import machine, package_versions
from .errors import ArtifactError
from .fsutil import atomic_path, check_output
from .profile.latency import measure_interleaved
from .quant.recipe import DEFAULT_RECIPE

PORTABLE_RECIPE = "w8a8-fast"   # observers only: seconds, and no target-specific placement


def run_demo(model: str, out: str | Path, force: bool) -> dict:
    out = check_output(out, force, is_dir=True)
    with atomic_path(out, is_dir=True) as tmp:
        bundle = tmp / "model.edgeq"
        quant = api.quantize(model, "zoo", DEFAULT_RECIPE, bundle)
        artifacts = {p: tmp / f"model_{p}.onnx" for p in ("fp32", "int8")}
        exports = {p: api.export(bundle, "onnx", path, precision=p) for p, path in artifacts.items()}
        evals = {p: api.evaluate(path, "zoo:test") for p, path in artifacts.items()}
        latency = measure_interleaved(artifacts, runs=200, warmup=20)
        rows = [{"variant": p, "top1": evals[p]["top1"],
                 "drop_pp": round(100 * (evals["fp32"]["top1"] - evals[p]["top1"]), 2),
                 "latency_ms_p50": latency[p].p50_ms, "latency_ms_p90": latency[p].p90_ms,
                 "speedup_vs_fp32": round(latency["fp32"].p50_ms / latency[p].p50_ms, 3),
                 "artifact_bytes": exports[p]["bytes"],
                 "fidelity_cosine_vs_torch": exports[p]["fidelity_vs_torch"]["cosine"]}
                for p in artifacts]
        report = {"schema_version": 1, "model": model, "recipe": quant["recipe"],
                  "ptq_seconds": quant["ptq_seconds"], "fallback": quant["fallback"], "rows": rows,
                  "targets": _vendor_targets(model, tmp),
                  "env": {"machine": machine(), "versions": package_versions()}}
        markdown = _markdown(report)
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "report.md").write_text(markdown)
    return {**report, "markdown": markdown, "report_md": str(out / "report.md"), "output": str(out)}


def _vendor_targets(model: str, tmp: Path) -> list[dict]:
    """TensorRT and CoreML exports: what can be checked on this machine, and what cannot. They start from a
    bundle without the ONNX Runtime latency placement (that placement says nothing about those runtimes)."""
    bundle = tmp / f"model_{PORTABLE_RECIPE}.edgeq"
    api.quantize(model, "zoo", PORTABLE_RECIPE, bundle)
    trt = api.export(bundle, "tensorrt", tmp / "model_tensorrt")
    engine = trt["engine"]
    targets = [{"target": "TensorRT (explicit-quantization ONNX)", "artifact": "model_tensorrt/model.onnx",
                "bytes": trt["bytes"],
                "check": f"{len(trt['lint'])} lint findings; top-1 in ONNX Runtime "
                         f"{100 * api.evaluate(trt['path'], 'zoo:test')['top1']:.2f} %; "
                         + ("engine built" if engine["built"] else f"engine not built: {engine['reason']}")}]
    try:
        coreml = api.export(bundle, "coreml", tmp / "model_w8a8.mlpackage")
    except ArtifactError as exc:   # coremltools is an optional extra
        return targets + [{"target": "CoreML ML program (w8a8)", "artifact": None, "bytes": None,
                           "check": f"skipped: {exc}"}]
    ops = coreml["mil_ops"]
    return targets + [{"target": "CoreML ML program (w8a8)", "artifact": "model_w8a8.mlpackage",
                       "bytes": coreml["bytes"],
                       "check": f"{ops.get('quantize', 0)} quantize ops and {ops.get('constexpr_affine_dequantize', 0)} "
                                f"int8 weights, as in the bundle; "
                                f"{coreml['fidelity_vs_torch'].get('reason', 'predictions match torch')}"}]


def _markdown(report: dict) -> str:
    env = report["env"]["machine"]
    lines = [f"# edgeq demo: {report['model']} ({report['recipe']}, PTQ {report['ptq_seconds']} s)", "",
             f"ONNX Runtime CPU, batch 1, 2 threads, on {env['processor']} ({env['cpu_count']} cores). "
             f"Top-1 on the bundled Fashion-MNIST test set (10,000 images).", "",
             "| variant | top-1 % | drop pp | p50 ms | p90 ms | speed-up vs FP32 | size MB | cosine vs torch |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['variant']} | {100 * r['top1']:.2f} | {r['drop_pp']} | {r['latency_ms_p50']:.3f} | "
                     f"{r['latency_ms_p90']:.3f} | {r['speedup_vs_fp32']:.2f}x | {r['artifact_bytes'] / 1e6:.2f} | "
                     f"{r['fidelity_cosine_vs_torch']} |")
    fb = report["fallback"]
    if fb["placement"]:
        lines += ["", f"Placement on {fb['target']} (measured): {fb['reverted_units']} of {fb['units']} units in "
                      f"float; {fb['placement']}. Every decision and its timings: model.edgeq/manifest.json "
                      f"(fallback.placement)."]
    lines += ["", f"Other targets, from a {PORTABLE_RECIPE} bundle of the same model (the placement above was "
                  f"measured on ONNX Runtime and does not carry over):", "",
              "| target | artifact | size MB | checked here |",
              "|---|---|---|---|"]
    for t in report["targets"]:
        size = f"{t['bytes'] / 1e6:.2f}" if t["bytes"] else "–"
        lines.append(f"| {t['target']} | {t['artifact'] or '–'} | {size} | {t['check']} |")
    return "\n".join(lines) + "\n"
