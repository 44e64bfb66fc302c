"""``edgeq bench``: models × variants → reports/bench.json and reports/bench.md.

Variants per model: ``fp32`` (ONNX), ``ort-minmax`` (ONNX Runtime's quantize_static, the peer)
and one row per edgeq recipe. Accuracy is top-1 on the bundled Fashion-MNIST test set (zoo suite),
measured on the exported ONNX in ONNX Runtime and, for edgeq recipes, also on the bundle's fake-quant
torch model (``top1_torch``): the two must agree. Sub-8-bit recipes run in ONNX Runtime on 8-bit
kernels with their narrow integer ranges (exact: Clip before QuantizeLinear, weights on the narrow grid).
Latency is ONNX Runtime CPU, batch 1, 2 threads, with all variants of a model measured round-robin in
one run so that the speed ratios are fair on a noisy machine. The speed suite (random-init 224×224
models) shortens block reconstruction to SPEED_ITERS iterations: latency does not depend on the
learned values, only on the graph, which the shortened run produces identically.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from . import ui
from .envinfo import machine, package_versions
from .errors import EdgeqError
from .fsutil import write_text_atomic

ZOO_SUITE = ("mobilevit_xxs", "edgenext_xx_small", "levit_128s")
SPEED_SUITE = ("mobilevit_xxs", "efficientformerv2_s0", "levit_128s", "fastvit_t8", "edgenext_xx_small")
ROW_FIELDS = ("model", "variant", "runtime", "top1", "drop_pp", "top1_torch", "latency_ms_p50",
              "speedup_vs_fp32", "ptq_seconds", "artifact_bytes")
SPEED_CALIB = 32
SPEED_ITERS = 10


def run_bench(suite: str, models: list[str] | None, recipes: list[str], runs: int,
              eval_limit: int | None, out_dir: str | Path) -> dict:
    from .quant.recipe import load_recipe
    has_recon = {r: load_recipe(r).reconstruction is not None for r in recipes}  # fail fast on a bad name
    plan = _plan(suite, models)
    if not plan:
        raise EdgeqError(f"no models selected; the {suite} suite has "
                         f"{', '.join(ZOO_SUITE if suite == 'zoo' else SPEED_SUITE)}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="edgeq-bench-"))
    try:
        for suite_name, name in ui.track(plan, "benchmarking"):
            rows += bench_model(suite_name, name, recipes, runs, eval_limit, work / name, has_recon)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = _merge(out_dir / "bench.json", rows)
    write_text_atomic(out_dir / "bench.json", json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    write_text_atomic(out_dir / "bench.md", markdown)
    return {"rows": rows, "markdown": markdown, "json": str(out_dir / "bench.json")}


def _plan(suite: str, models: list[str] | None) -> list[tuple[str, str]]:
    suites = {"zoo": ZOO_SUITE, "speed": SPEED_SUITE}
    chosen = ("zoo", "speed") if suite == "all" else (suite,)
    known = {n for s in chosen for n in suites[s]}
    unknown = [m for m in models or [] if m not in known]
    if unknown:
        raise EdgeqError(f"{unknown[0]!r} is not in the {suite} suite ({', '.join(sorted(known))}).")
    return [(s, n) for s in chosen for n in suites[s] if not models or n in models]


def bench_model(suite: str, name: str, recipes: list[str], runs: int, eval_limit: int | None,
                work: Path, has_recon: dict[str, bool]) -> list[dict]:
    from . import api
    from .baselines import ort_minmax
    from .data import load_data
    from .export.onnx import read_artifact
    from .metrics import top1
    from .models.intake import InputSpec
    from .profile import ort_cpu

    work.mkdir(parents=True)
    spec = f"zoo:{name}" if suite == "zoo" else f"timm:{name}"
    calib_size = None if suite == "zoo" else SPEED_CALIB
    artifacts: dict[str, dict] = {}
    for i, recipe in enumerate(recipes):
        bundle = work / f"{recipe}.edgeq"
        short = {"iters": SPEED_ITERS, "batch_size": 8} if suite == "speed" and has_recon[recipe] else {}
        q = api.quantize(spec, "zoo", recipe, bundle, calib_size=calib_size, **short)
        api.export(bundle, "onnx", work / f"{recipe}.onnx", precision="int8")
        artifacts[recipe] = {"path": work / f"{recipe}.onnx", "ptq_seconds": q["ptq_seconds"], "bundle": bundle,
                             "iterations": SPEED_ITERS if short else None}
        if i == 0:
            api.export(bundle, "onnx", work / "fp32.onnx", precision="fp32")
            artifacts["fp32"] = {"path": work / "fp32.onnx", "ptq_seconds": None}
    spec_in = InputSpec.from_dict(read_artifact(artifacts["fp32"]["path"])["input"])
    calib = load_data("zoo", spec_in, limit=calib_size or 256)
    seconds = ort_minmax(artifacts["fp32"]["path"], work / "ort-minmax.onnx", calib.x)
    artifacts["ort-minmax"] = {"path": work / "ort-minmax.onnx", "ptq_seconds": round(seconds, 2)}

    order = ["fp32", "ort-minmax", *recipes]
    accuracy, accuracy_torch, agreement = {}, {}, {}
    if suite == "zoo":
        test = load_data("zoo:test", spec_in, limit=eval_limit, what="evaluation")
        outputs = {v: ort_cpu.run(ort_cpu.session(artifacts[v]["path"]), test.x) for v in order}
        for v in order:
            accuracy[v] = top1(outputs[v], test.labels)
            agreement[v] = float((outputs[v].argmax(1) == outputs["fp32"].argmax(1)).mean())
        for v in recipes:
            accuracy_torch[v] = api.evaluate(artifacts[v]["bundle"], "zoo:test", limit=eval_limit)["top1"]
    latency = ort_cpu.measure_interleaved({v: artifacts[v]["path"] for v in order}, runs=runs, warmup=10)
    rows = []
    for v in order:
        top1 = accuracy.get(v)
        rows.append({
            "suite": suite, "model": name, "variant": v, "runtime": "ort",
            "top1": round(top1, 4) if top1 is not None else None,
            "drop_pp": round(100 * (accuracy["fp32"] - top1), 2) if top1 is not None else None,
            "top1_torch": accuracy_torch.get(v),
            "top1_agreement_vs_fp32": round(agreement[v], 4) if v in agreement else None,
            "onnx_minus_torch_pp": (round(100 * (top1 - accuracy_torch[v]), 2) if v in accuracy_torch else None),
            "reconstruction_iterations": artifacts[v].get("iterations"),
            "latency_ms_p50": latency[v].p50_ms, "latency_ms_p90": latency[v].p90_ms,
            "speedup_vs_fp32": round(latency["fp32"].p50_ms / latency[v].p50_ms, 3),
            "ptq_seconds": artifacts[v]["ptq_seconds"],
            "artifact_bytes": Path(artifacts[v]["path"]).stat().st_size,
            "input_shape": list(spec_in.shape),
            "eval_samples": len(test) if suite == "zoo" else None,
        })
    return rows


def _merge(path: Path, rows: list[dict]) -> dict:
    """Replace this run's (suite, model) rows in an existing report, keep the others."""
    old_rows = []
    if path.is_file():
        try:
            old_rows = json.loads(path.read_text()).get("rows", [])
        except ValueError:
            old_rows = []
    fresh = {(r["suite"], r["model"]) for r in rows}
    kept = [r for r in old_rows if (r.get("suite"), r.get("model")) not in fresh]
    return {"schema_version": 1, "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "env": {"machine": machine(), "versions": package_versions()},
            "protocol": {"latency": "ONNX Runtime CPU EP, batch 1, 2 intra-op threads, variants of a "
                                    "model measured round-robin in one run; p50 over the timed runs",
                         "accuracy": "top-1 on the bundled Fashion-MNIST test set, exported ONNX in ONNX Runtime; "
                                     "top1_torch: the bundle's fake-quant torch model on the same images",
                         "ptq_seconds": "edgeq quantize wall time (capture, calibration, reconstruction), "
                                        "2 CPU threads, 256 calibration images (zoo) / 32 (speed)",
                         "speedup_vs_fp32": "ORT FP32 p50 / variant p50 of the same model"},
            "rows": kept + rows}


def to_markdown(report: dict) -> str:
    env = report["env"]["machine"]
    lines = ["# edgeq bench", "",
             f"Machine: {env['processor']}, {env['cpu_count']} cores ({env['platform']}); "
             f"generated {report['generated']}.", "", report["protocol"]["latency"] + ".", ""]
    for suite in ("zoo", "speed"):
        rows = [r for r in report["rows"] if r.get("suite") == suite]
        if not rows:
            continue
        lines += [f"## {suite} suite", "", "| " + " | ".join(ROW_FIELDS) + " |",
                  "|" + "---|" * len(ROW_FIELDS)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(f)) for f in ROW_FIELDS) + " |")
        lines.append("")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
