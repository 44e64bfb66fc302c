"""``edgeq profile ARTIFACT --target T``: a versioned Measurement of one artifact on one target.

Per batch size the target lists (or the one asked for): p50/p90/p99, mean and standard deviation over the
timed runs, throughput, how long the session took to load, the process's memory, and the raw per-run
samples (so a regression gate can test them later); with the artifact's size and the device's fingerprint.
A target that cannot be measured from here gives ``measured: false`` and the reason — never a number.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import ArtifactError
from ..runner import MEASUREMENT_SCHEMA, latency_stats, peak_rss_mb, rss_mb
from ..runtimes.base import onnx_file
from ..target import Target, get_target

SCHEMA = MEASUREMENT_SCHEMA


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
    if found.reach == "ssh":
        return {**result, **_on_device(found, path, runs, warmup, batches or list(found.batch_sizes), threads)}
    result.update(measured=True, threads=threads, runs=runs, warmup=warmup,
                  fingerprint=found.fingerprint(),
                  batches=[_one_batch(found, path, batch, runs, warmup, threads)
                           for batch in (batches or list(found.batch_sizes))])
    return result


def _on_device(target: Target, path: Path, runs: int, warmup: int, batches: list[int], threads: int | None) -> dict:
    """The runner's Measurement from the SSH device (its fingerprint, device state and host label kept)."""
    from ..remote import bench, parse_host
    remote = bench(parse_host(target.host), path, threads, runs, warmup, batches)
    keep = ("measured", "threads", "runs", "warmup", "fingerprint", "batches", "device_state", "host")
    return {key: remote[key] for key in keep}


def _one_batch(target: Target, path: Path, batch: int, runs: int, warmup: int, threads: int | None) -> dict:
    rss_before = rss_mb()
    start = time.perf_counter()
    session = target.plugin.open(path, batch, threads, target.options)
    load_seconds = time.perf_counter() - start
    session.time(warmup)
    stats = latency_stats(session.time(runs), batch)
    return {**stats, "load_seconds": round(load_seconds, 3), "rss_growth_mb": round(rss_mb() - rss_before, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "samples_ms": stats.pop("samples_ms")}


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
