"""``edgeq profile ARTIFACT --target T``: a versioned Measurement of one artifact on one target.

Per batch size the target lists (or the one asked for): p50/p90/p99, mean and standard deviation over the
timed runs, throughput, how long the session took to load, the process's memory, and the raw per-run
samples (so a regression gate can test them later); with the artifact's size and the device's fingerprint.
A target that cannot be measured from here gives ``measured: false`` and the reason — never a number.
"""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..runtimes.base import onnx_file
from ..target import Target, get_target

SCHEMA = "edgeq.measurement/1"


def artifact_form(path: Path) -> str:
    """What ``edgeq export`` wrote at ``path``: onnx, tensorrt (a folder with trtexec.sh), coreml, or bundle."""
    if path.suffix == ".mlpackage":
        return "coreml"
    if path.is_dir() and (path / "trtexec.sh").is_file():
        return "tensorrt"
    if path.is_dir() and (path / "manifest.json").is_file():
        return "bundle"
    return "onnx"


def measure(artifact: str | Path, target: str | Target, runs: int, warmup: int, batches: list[int] | None,
            threads: int | None) -> dict:
    found = get_target(target)
    path = Path(artifact)
    if not path.exists():
        raise ArtifactError(f"artifact {path} does not exist.")
    if runs <= 0 or warmup < 0 or (threads is not None and threads <= 0) or any(b <= 0 for b in batches or []):
        raise ArtifactError("--runs, --threads and --batch must be positive and --warmup not negative.")
    form = artifact_form(path)
    if not found.plugin.accepts(form):
        raise ArtifactError(f"{path} is a {form} artifact; target {found.name} runs {found.form} "
                            f"(edgeq export --to {found.form}).")
    if found.form == "onnx":
        path = onnx_file(path)   # what runs: a TensorRT export folder's model.onnx
    result = {"schema": SCHEMA, "artifact": str(path), "form": form, "bytes": _size(path),
              "target": found.to_dict()}
    reason = found.unavailable()
    if reason:
        return {**result, "measured": False, "not_measured": reason}
    threads = threads if threads is not None else found.threads
    result.update(measured=True, threads=threads, runs=runs, warmup=warmup,
                  fingerprint=found.plugin.fingerprint(),
                  batches=[_one_batch(found, path, batch, runs, warmup, threads)
                           for batch in (batches or list(found.batch_sizes))])
    return result


def _one_batch(target: Target, path: Path, batch: int, runs: int, warmup: int, threads: int | None) -> dict:
    rss_before = _rss_mb()
    start = time.perf_counter()
    session = target.plugin.open(path, batch, threads, target.options)
    load_seconds = time.perf_counter() - start
    session.time(warmup)
    stats = latency_stats(session.time(runs), batch)
    return {**stats, "load_seconds": round(load_seconds, 3), "rss_growth_mb": round(_rss_mb() - rss_before, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "samples_ms": stats.pop("samples_ms")}


def latency_stats(samples_ms: list[float], batch: int) -> dict:
    """Percentiles, mean, spread and throughput of timed runs, with the raw samples (for a later gate)."""
    t = np.array(samples_ms)
    p50, p90, p99 = (float(np.percentile(t, q)) for q in (50, 90, 99))
    return {"batch": batch, "runs": len(t), "p50_ms": round(p50, 4), "p90_ms": round(p90, 4),
            "p99_ms": round(p99, 4), "mean_ms": round(float(t.mean()), 4), "std_ms": round(float(t.std()), 4),
            "throughput_per_s": round(batch * 1000.0 / float(t.mean()), 2),
            "samples_ms": [round(float(v), 4) for v in t]}


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
