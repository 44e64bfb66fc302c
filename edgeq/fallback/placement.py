"""Latency-aware placement: which units stay int8 is decided by timing candidates on the target.

Starting from the all-int8 model, candidates that put a group of units back in float are timed
against the current placement, interleaved on the target runtime; a candidate is kept when it is
faster by at least MIN_GAIN. Candidates come in two passes: op classes first (every depthwise-conv
unit, every dense-conv unit, every linear unit: kernels a runtime may lack a fast int8 form of), then
one block at a time in execution order (Q/DQ islands, norms and activations between int8 ops).
Last, the chosen placement is timed against the FP32 model; if it is not faster, every unit goes
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
PAIR_BUDGET_MS = 1500.0


def search(int8_path: Path, fp32_path: Path, units: list[Unit], target: str, threads: int = 2,
           batch: int = 1) -> dict:
    start = time.perf_counter()
    timer = PairTimer(target, threads, batch)
    int8 = onnx.load(str(int8_path))
    with tempfile.TemporaryDirectory(prefix="edgeq-placement-") as tmp:
        tmp = Path(tmp)
        current, floated, steps = int8_path, set(), []
        t_fp32, t_int8 = timer.pair(fp32_path, int8_path)
        baseline = {"fp32_ms": t_fp32, "all_int8_ms": t_int8}
        for label, group in ui.track(candidates(units), f"placement search on {target}"):
            todo = [u for u in group if u.name not in floated]
            if not todo:
                continue
            trial = _write(float_units(int8, floated | {u.name for u in todo},
                                       {layer for u in units if u.name in floated | {u.name for u in todo}
                                        for layer in u.layers}), tmp / f"c{len(steps)}.onnx")
            t_cur, t_new = timer.pair(current, trial)
            keep_float = t_new <= t_cur * (1 - MIN_GAIN)
            steps.append({"candidate": label, "units": [u.name for u in todo], "int8_ms": t_cur,
                          "float_ms": t_new, "decision": "float" if keep_float else "int8"})
            if keep_float:
                floated |= {u.name for u in todo}
                current = trial
        t_fp32, t_final = timer.pair(fp32_path, current, factor=2)
        verdict = "int8 placement faster than FP32"
        if t_final > t_fp32 * (1 - MIN_GAIN):
            verdict = "no int8 placement was faster than FP32 on this target; every unit stays in float"
            floated = {u.name for u in units}
    timer.save()
    return {"target": target, "batch": batch, "threads": threads, **baseline,
            "final": {"fp32_ms": t_fp32, "placement_ms": t_final}, "verdict": verdict,
            "floated_units": sorted(floated), "steps": steps, "cache_hits": timer.hits,
            "measurements": timer.measured, "seconds": round(time.perf_counter() - start, 2)}


def candidates(units: list[Unit]) -> list[tuple[str, list[Unit]]]:
    """(label, units) in the order they are tried."""
    out = []
    for op, label in (("dwconv", "all depthwise-conv units"), ("conv", "all dense-conv units"),
                      ("linear", "all linear units")):
        group = [u for u in units if set(u.ops) == {op}]
        if group:
            out.append((label, group))
    blocks: dict[str, list[Unit]] = {}
    for u in units:
        blocks.setdefault(u.block, []).append(u)
    out += [(f"block {name} ({members[0].kind})", members) for name, members in blocks.items()]
    return out


def _write(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def structure_hash(path: Path) -> str:
    """Hash of what latency depends on: nodes, attributes, initializer shapes and types (not values)."""
    model = onnx.load(str(path), load_external_data=False)
    digest = hashlib.sha256()
    for node in model.graph.node:
        digest.update(f"{node.op_type}|{','.join(node.input)}|{','.join(node.output)}|".encode())
        for attr in node.attribute:
            digest.update(attr.SerializeToString())
    for init in model.graph.initializer:
        digest.update(f"{init.name}:{init.data_type}:{list(init.dims)}".encode())
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
        probe = measure_interleaved({"a": a}, runs=3, warmup=1, batch=self.batch, threads=self.threads,
                                    target=self.target)["a"]
        runs = max(10, min(60, int(PAIR_BUDGET_MS / max(probe.p50_ms, 0.05) / 2))) * factor
        m = measure_interleaved({"a": a, "b": b}, runs=runs, warmup=3, batch=self.batch, threads=self.threads,
                                target=self.target)
        self.measured += 1
        self.entries[key] = [m["a"].p50_ms, m["b"].p50_ms]
        return m["a"].p50_ms, m["b"].p50_ms

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.entries, indent=1) + "\n")
        except OSError:
            ui.log(f"could not write the latency cache {self.path}; the next run measures again")
