"""Latency-aware placement: which units stay int8 is decided by timing candidates on the target.

Starting from the all-int8 model, candidates that put a group of units back in float are timed
against the current placement, interleaved on the target runtime; a candidate is kept when it is
faster by at least MIN_GAIN. Candidates come in two passes: op classes first (every depthwise-conv
unit, every dense-conv unit, every linear unit: kernels a runtime may lack a fast int8 form of), then
one stage at a time in execution order (Q/DQ islands, norms and activations between int8 ops); then
each stage's units that an op-class step floated are tried back in int8 (a class can be slow overall
and fast in some stages). Last, the chosen placement is timed against the FP32 model; if it is not faster, every unit goes
back to float (the model is then never slower than FP32 on that target, and the report says why).
Measurements are cached per target and machine, keyed by the two graphs' structure, so a repeated
run replays its decisions quickly.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import onnx

from .. import ui
from ..envinfo import machine
from ..fsutil import write_text_atomic
from ..profile.targets import get_target
from .surgery import float_units
from .units import Unit

MIN_GAIN = 0.03
PAIR_BUDGET_MS = 2500.0


def search(int8_path: Path, units: list[Unit], target: str, threads: int = 2, batch: int = 1) -> dict:
    """``int8_path``: the QDQ export with every unit in int8. The FP32 reference is the same graph with every
    unit floated by surgery (the float model's graph, weights dequantized: same latency, no second export)."""
    start = time.perf_counter()
    timer = PairTimer(target, threads, batch)
    int8 = onnx.load(str(int8_path))
    layers = {u.name: u.layers for u in units}
    all_units = set(layers)
    with tempfile.TemporaryDirectory(prefix="edgeq-placement-") as tmp:
        def build(floated: set[str]) -> Path:
            began = time.perf_counter()
            path = Path(tmp) / f"c{len(build_seconds)}.onnx"
            onnx.save(float_units(int8, floated, {n for u in floated for n in layers[u]}), str(path))
            build_seconds.append(time.perf_counter() - began)
            return path

        build_seconds: list[float] = []
        steps: list[dict] = []
        fp32_path = build(all_units)
        current, floated, by_stage = int8_path, set(), set()
        t_fp32, t_int8 = timer.pair(fp32_path, int8_path)
        for label, group in ui.track(candidates(units), f"placement search on {target}"):
            todo = {u.name for u in group} - floated
            if not todo:
                continue
            trial = build(floated | todo)
            t_int8_now, t_float = timer.pair(current, trial)
            keep = t_float <= t_int8_now * (1 - MIN_GAIN)
            steps.append({"candidate": label, "units": sorted(todo), "int8_ms": t_int8_now, "float_ms": t_float,
                          "decision": "float" if keep else "int8"})
            if keep:
                floated, current = floated | todo, trial
                by_stage |= todo if label.startswith("stage ") else set()
        # an op-class step may have floated units that are faster in int8 inside some stages: try them back
        for label, group in _stages(units):
            back = ({u.name for u in group} & floated) - by_stage
            if not back:
                continue
            trial = build(floated - back)
            t_float, t_int8_now = timer.pair(current, trial)
            keep_int8 = t_int8_now <= t_float * (1 - MIN_GAIN)
            steps.append({"candidate": f"{label} back to int8", "units": sorted(back), "int8_ms": t_int8_now,
                          "float_ms": t_float, "decision": "int8" if keep_int8 else "float"})
            if keep_int8:
                floated, current = floated - back, trial
        t_fp32_final, t_final = timer.pair(fp32_path, current, factor=2)
    if floated == all_units:
        verdict = "every unit was faster in float on this target"
    elif t_final > t_fp32_final * (1 - MIN_GAIN):
        verdict = "the best int8 placement was not faster than FP32 on this target; every unit stays in float"
        floated = set(all_units)
    else:
        verdict = "int8 placement faster than FP32"
    timer.save()
    return {"target": target, "batch": batch, "threads": threads, "fp32_ms": t_fp32, "all_int8_ms": t_int8,
            "final": {"fp32_ms": t_fp32_final, "placement_ms": t_final}, "verdict": verdict,
            "floated_units": sorted(floated), "steps": steps, "cache_hits": timer.hits,
            "measurements": timer.measured, "build_seconds": round(sum(build_seconds), 2),
            "measure_seconds": round(timer.seconds, 2), "seconds": round(time.perf_counter() - start, 2)}


def candidates(units: list[Unit]) -> list[tuple[str, list[Unit]]]:
    """(label, units) in the order they are tried."""
    out = []
    for op, label in (("dwconv", "all depthwise-conv units"), ("conv", "all dense-conv units"),
                      ("linear", "all linear units")):
        group = [u for u in units if set(u.ops) == {op}]
        if group:
            out.append((label, group))
    return out + _stages(units)


def _stages(units: list[Unit]) -> list[tuple[str, list[Unit]]]:
    """Units grouped by stage (``stages.2``, ``stem``, ``head`` …) in execution order: a single block is a
    few per cent of a model's latency, below what a shared CPU can time reliably; a stage is not."""
    stages: dict[str, list[Unit]] = {}
    for u in units:
        stages.setdefault(stage_of(u.block), []).append(u)
    return [(f"stage {name} ({', '.join(sorted({m.kind for m in members}))})", members)
            for name, members in stages.items()]


def stage_of(block: str) -> str:
    """``stages.2.blocks.1.attn`` → ``stages.2``; ``head`` → ``head``; ``blocks.4.mlp`` → ``blocks.4``."""
    parts = block.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def structure_hash(path: Path) -> str:
    """Hash of what latency depends on: ops, attributes, wiring, initializer shapes and types — not weight
    values, and not tensor names (the exporter numbers them differently from one process to the next)."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name: f"{i.data_type}:{list(i.dims)}" for i in model.graph.initializer}
    ids: dict[str, str] = {}

    def canon(name: str) -> str:
        if not name:
            return "-"
        if name in inits:
            return "init" + inits[name]
        return ids.setdefault(name, f"t{len(ids)}")

    digest = hashlib.sha256()
    for node in model.graph.node:
        wiring = ",".join(canon(i) for i in node.input) + ">" + ",".join(canon(o) for o in node.output)
        digest.update(f"{node.op_type}|{node.domain}|{wiring}|".encode())
        for attr in sorted(node.attribute, key=lambda a: a.name):
            digest.update(attr.SerializeToString())
    return digest.hexdigest()[:20]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEQ_CACHE_DIR", Path.home() / ".cache" / "edgeq")) / "latency"


class PairTimer:
    """Times two models interleaved on one target; remembers results per (machine, target) on disk."""

    def __init__(self, target: str, threads: int, batch: int):
        self.target, self.threads, self.batch = target, threads, batch
        get_target(target)
        info = machine()
        self.path = cache_dir() / f"{target}.json"
        self.prefix = f"{info.get('processor')}|{info.get('cpu_count')}|t{threads}|b{batch}"
        self.entries = self._load()
        self.hits = self.measured = 0
        self.seconds = 0.0

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def pair(self, a: Path, b: Path, factor: int = 1) -> tuple[float, float]:
        from ..profile.latency import measure_interleaved
        key = f"{self.prefix}|{structure_hash(a)}|{structure_hash(b)}|x{factor}"
        if key in self.entries:
            self.hits += 1
            return tuple(self.entries[key])
        began = time.perf_counter()
        probe = measure_interleaved({"a": a}, runs=3, warmup=1, batch=self.batch, threads=self.threads,
                                    target=self.target)["a"]
        runs = max(10, min(60, int(PAIR_BUDGET_MS / max(probe.p50_ms, 0.05) / 2))) * factor
        m = measure_interleaved({"a": a, "b": b}, runs=runs, warmup=3, batch=self.batch, threads=self.threads,
                                target=self.target)
        self.measured += 1
        self.seconds += time.perf_counter() - began
        self.entries[key] = [m["a"].p50_ms, m["b"].p50_ms]
        return m["a"].p50_ms, m["b"].p50_ms

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.entries, indent=1) + "\n")
        except OSError:
            ui.log(f"could not write the latency cache {self.path}; the next run measures again")
