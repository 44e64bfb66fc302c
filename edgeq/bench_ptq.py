"""``edgeq bench --suite ptq``: how long quantizing takes at the deployment resolution, and at what memory.

Per speed-suite architecture (random init: the time depends on the graph and the resolution, not on the
learned values) the default command runs as a user would type it, without the latency search:
``edgeq quantize --model timm:M --input-shape 1x3x224x224 --calib x.npz:x --no-latency-search`` on 256
seeded random images. Variants:
  - ``w8a8``: the default recipe (reconstruction where it pays, within its 15 s budget);
  - ``w8a8-every-region``: the worst case, a model where every region is worth learning (no NMSE threshold),
    with a 4-minute learning budget (``--time-budget 240``): every region gets at least its shortest useful
    run (two progress checks) and the most harmful ones the rest;
  - ``w8a8-unbounded``: every region, every iteration unless its hard loss does not move (no budget): what
    the budget saves.
Each run is a separate process, so its peak resident memory (``ru_maxrss``) is its own. Rows go to
``reports/ptq.json`` and ``reports/ptq.md`` (merged with the rows there) with the CPU and its ISA flags.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .envinfo import machine
from .errors import EdgeqError
from .fsutil import write_text_atomic

PTQ_SAMPLES = 256
PTQ_SHAPE = (3, 224, 224)
VARIANTS = {
    "w8a8": None,
    "w8a8-every-region": {"edgeq_recipe": 1, "base": "w8a8", "name": "w8a8-every-region",
                          "reconstruction": {"learn_above": 0.0, "time_budget": 240.0, "patience": 50}},
    "w8a8-unbounded": {"edgeq_recipe": 1, "base": "w8a8", "name": "w8a8-unbounded",
                       "reconstruction": {"learn_above": 0.0, "time_budget": 0.0, "patience": 50}},
}
DEFAULT_VARIANTS = ["w8a8", "w8a8-every-region"]   # w8a8-unbounded takes over ten minutes per model


def run_ptq_bench(models: list[str], out_dir: str | Path, variants: list[str] | None = None) -> dict:
    variants = variants or DEFAULT_VARIANTS
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise EdgeqError(f"{unknown[0]!r} is not a variant of the ptq suite ({', '.join(VARIANTS)}).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeq-ptq-") as tmp:
        work = Path(tmp)
        data = _calibration_file(work)
        for name in models:
            for variant in variants:
                rows.append(_run_child(name, variant, data, work))
                markdown = _write_report(out_dir, rows)   # after every run: a crash later keeps what was measured
    return {"rows": rows, "markdown": markdown, "json": str(out_dir / "ptq.json")}


def _calibration_file(work: Path) -> Path:
    import numpy as np
    x = np.random.default_rng(0).standard_normal((PTQ_SAMPLES, *PTQ_SHAPE), dtype=np.float32)
    path = work / "calib.npz"
    np.savez(path, x=x)
    return path


def _run_child(name: str, variant: str, data: Path, work: Path) -> dict:
    recipe = "w8a8"
    if VARIANTS[variant] is not None:
        recipe = str(work / f"{variant}.json")
        Path(recipe).write_text(json.dumps(VARIANTS[variant]))
    out = work / f"{name}-{variant}.edgeq"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeq.bench_ptq", name, recipe, str(data), str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"model": name, "variant": variant, "error": tail[0], "wall_seconds": round(wall, 1)}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"model": name, "variant": variant, **row, "wall_seconds": round(wall, 1)}


def _child(name: str, recipe: str, data: str, out: str) -> dict:
    """One quantization in this process; what the manifest says about its time, and the peak memory."""
    from . import api, ui
    ui.set_progress(False)
    shape = "1x" + "x".join(map(str, PTQ_SHAPE))
    result = api.quantize(f"timm:{name}", f"{data}:x", recipe, out, input_shape=shape, latency_search=False,
                          force=True)
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    recon = manifest["reconstruction"] or {}
    regions = recon.get("regions", [])
    return {"ptq_seconds": result["ptq_seconds"], "reconstruction_seconds": recon.get("seconds"),
            "learning_seconds": round(sum(r.get("learn_seconds", 0.0) for r in regions), 1),
            "regions": len(regions), "learned": len(recon.get("learned", [])),
            "steps": sum(r.get("iterations", 0) for r in regions),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "cpu": manifest["machine"]["processor"], "isa": manifest["machine"]["isa"]}


def _write_report(out_dir: Path, rows: list[dict]) -> str:
    """Merged with the rows already there: a run of some models or variants replaces only those."""
    path = out_dir / "ptq.json"
    kept = json.loads(path.read_text()).get("rows", []) if path.is_file() else []
    fresh = {(r["model"], r["variant"]) for r in rows}
    merged = [r for r in kept if (r["model"], r["variant"]) not in fresh] + rows
    report = {"suite": "ptq", "samples": PTQ_SAMPLES, "input_shape": [1, *PTQ_SHAPE], "machine": machine(),
              "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "rows": sorted(merged, key=lambda r: (r["model"], r["variant"]))}
    write_text_atomic(out_dir / "ptq.json", json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    write_text_atomic(out_dir / "ptq.md", markdown)
    return markdown


def to_markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# edgeq quantize at {report['input_shape'][2]}x{report['input_shape'][3]}, "
             f"{report['samples']} calibration images (no latency search)", "",
             f"Machine: {m['processor']} ({m['cpu_count']} cores; ISA: {', '.join(m['isa']) or 'unknown'}); "
             f"written {report.get('generated', '?')}. Each row is one `edgeq quantize` process: PTQ s is its "
             "quantize stage, process wall s includes start-up and imports.", "",
             "| model | variant | PTQ s | reconstruction s | learning s | regions learned | steps | peak MB | "
             "process wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['variant']} | failed: {r['error']} | | | | | | {r['wall_seconds']} |")
            continue
        lines.append(f"| {r['model']} | {r['variant']} | {r['ptq_seconds']:.1f} | {r['reconstruction_seconds']:.1f} | "
                     f"{r['learning_seconds']:.1f} | {r['learned']}/{r['regions']} | {r['steps']} | "
                     f"{r['peak_rss_mb']} | {r['wall_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(json.dumps(_child(*sys.argv[1:5])))
