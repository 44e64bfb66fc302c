"""Latency-aware placement: which units stay int8 is decided by timing candidates on the target.

Starting from the all-int8 model, candidates that put a group of units back in float are timed
against the current placement, interleaved on the target runtime; a candidate is kept when it is
confidently faster: paired blocks of runs give the ratio of the two latencies with a bootstrap interval,
and even the interval's slow end must gain MARGIN (a fixed threshold either chases noise on a quiet model
or throws away real gains on a noisy one); a measurement that looks faster but misses that gets a second
rotation of as many runs, and the blocks of both decide. Candidates come in two passes: op classes first
(every depthwise-conv unit, every dense-conv unit, every linear unit: kernels a runtime may lack a fast int8 form
of), then one stage at a time in execution order (Q/DQ islands, norms and activations between int8 ops);
then each stage's units that an op-class step floated are tried back in int8 (a class can be slow overall
and fast in some stages). Last, the FP32 model, the all-int8 model and the searched placement are timed
together and the fastest that is confidently faster than FP32 wins; if neither is, every unit goes back to
float (the model is then never slower than FP32 on that target, and the report says why).
Measurements are cached per target and machine, keyed by the graphs' structure, so a repeated run replays
its decisions quickly; the final check excepted, which is timed afresh every run (what ships is never decided
by a replay: a cache filled on a noisy phase of a shared VM kept levit_128s all float on ONNX Runtime while its
all-int8 form ran 1.38x FP32 in the bench's own rotation).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from .. import ui
from ..export import openvino_form
from ..fsutil import write_text_atomic
from ..profile.latency import Ratio
from ..target import get_target
from .surgery import float_units
from .units import Unit

MARGIN = 0.01
PAIR_BUDGET_MS = 2500.0


def search(int8_path: Path, units: list[Unit], target: str, threads: int = 2, batch: int = 1) -> dict:
    """``int8_path``: the QDQ export with every unit in int8, in the target's graph form (the search places
    units of that form). The FP32 reference is the same graph with every unit floated by surgery (the float
    model's graph, weights dequantized: same latency, no second export)."""
    start = time.perf_counter()
    timer = Timer(target, threads, batch)
    int8 = onnx.load(str(int8_path))
    layers = {u.name: u.layers for u in units}
    all_units = set(layers)
    with tempfile.TemporaryDirectory(prefix="edgeq-placement-") as tmp:
        def build(floated: set[str]) -> Path:
            began = time.perf_counter()
            path = Path(tmp) / f"c{len(build_seconds)}.onnx"
            model = float_units(int8, floated, {n for u in floated for n in layers[u]})
            if floated == all_units:   # the FP32 reference: without the quantizers a graph form adds, too
                openvino_form.strip(model)
            onnx.save(model, str(path))
            build_seconds.append(time.perf_counter() - began)
            return path

        build_seconds: list[float] = []
        steps: list[dict] = []
        current, floated, by_stage = int8_path, set(), set()
        finalists: dict[str, tuple[Path, set[str]]] = {}   # placements passed on the way, timed again at the end
        for label, group in ui.track(candidates(units), f"placement search on {target}"):
            if label.startswith("stage ") and floated and "op classes" not in finalists:
                finalists["op classes"] = (current, set(floated))
            todo = {u.name for u in group} - floated
            if not todo:
                continue
            trial = build(floated | todo)
            r = timer.compare(current, [trial])[0]
            keep = r.faster(MARGIN)
            steps.append(_step(label, todo, r, "float" if keep else "int8", candidate_is_float=True))
            _log(target, steps[-1])
            if keep:
                floated, current = floated | todo, trial
                by_stage |= todo if label.startswith("stage ") else set()
        if floated:
            finalists.setdefault("op classes and stages", (current, set(floated)))
        # an op-class step may have floated units that are faster in int8 inside some stages: try them back
        for label, group in _stages(units):
            back = ({u.name for u in group} & floated) - by_stage
            if not back:
                continue
            trial = build(floated - back)
            r = timer.compare(current, [trial])[0]
            keep_int8 = r.faster(MARGIN)
            steps.append(_step(f"{label} back to int8", back, r, "int8" if keep_int8 else "float",
                               candidate_is_float=False))
            _log(target, steps[-1])
            if keep_int8:
                floated, current = floated - back, trial
        finalists["searched placement"] = (current, floated)
        final, floated, verdict = _final(timer, build(all_units), int8_path, finalists, all_units)
    timer.save()
    return {"target": target, "batch": batch, "threads": threads, "fp32_ms": final["fp32_ms"],
            "all_int8_ms": final["all_int8_ms"], "final": final, "verdict": verdict,
            "floated_units": sorted(floated), "steps": steps, "cache_hits": timer.hits,
            "measurements": timer.measured, "extended_measurements": timer.extended,
            "build_seconds": round(sum(build_seconds), 2), "measure_seconds": round(timer.seconds, 2),
            "seconds": round(time.perf_counter() - start, 2)}


def _log(target: str, step: dict) -> None:
    """One flushed line per candidate, so a log shows the search moving (the bar is for terminals only)."""
    ui.log(f"  placement on {target}: {step['candidate']} ({len(step['units'])} units): int8 {step['int8_ms']} ms, "
           f"float {step['float_ms']} ms -> {step['decision']}")


def _step(label: str, units: set[str], r: Ratio, decision: str, candidate_is_float: bool) -> dict:
    float_ms, int8_ms = (r.candidate_ms, r.reference_ms) if candidate_is_float else (r.reference_ms, r.candidate_ms)
    return {"candidate": label, "units": sorted(units), "int8_ms": int8_ms, "float_ms": float_ms,
            "ratio": r.ratio, "interval": [r.low, r.high], "decision": decision}


def _final(timer: "Timer", fp32: Path, int8: Path, finalists: dict, all_units: set[str]):
    """FP32, all-int8 and every distinct placement the search passed through (after the op classes, after the
    stages, the searched one) timed together in a fresh process, with twice the runs: one step's gain can
    be a slow phase of the machine, and a process that has compiled dozens of candidates is not the process
    the model ships in. The fastest that is confidently faster than FP32 wins."""
    options = {"all-int8": (int8, set())}
    for name, (path, floated) in reversed(finalists.items()):   # the searched placement keeps its name
        if floated and floated != all_units and all(floated != f for _, f in options.values()):
            options[name] = (path, floated)
    ratios = dict(zip(options, timer.compare(fp32, [path for path, _ in options.values()], factor=2,
                                             fresh_process=True)))
    final = {"fp32_ms": ratios["all-int8"].reference_ms, "all_int8_ms": ratios["all-int8"].candidate_ms,
             "finalists": sorted(options), "timed_in": "a fresh process",
             "vs_fp32": {name: {"ms": r.candidate_ms, "ratio": r.ratio, "interval": [r.low, r.high]}
                         for name, r in ratios.items()}}
    winners = sorted((r.ratio, name) for name, r in ratios.items() if r.faster(MARGIN))
    if not winners:
        best = min(ratios.values(), key=lambda r: r.ratio)
        final["chosen"] = "fp32"
        return final, set(all_units), (f"no int8 placement was confidently faster than FP32 on this target (best "
                                       f"{best.ratio:.3f}x the FP32 time, 90 % interval {best.low:.3f}–"
                                       f"{best.high:.3f}); every unit stays in float")
    ratio, name = winners[0]
    r = ratios[name]
    final["chosen"] = name
    return final, options[name][1], (f"{name} is {1 / ratio:.2f}x faster than FP32 (time ratio {ratio:.3f}, 90 % "
                                     f"interval {r.low:.3f}–{r.high:.3f}; {len(options)} "
                                     f"finalist{'s' if len(options) > 1 else ''} timed in a fresh process)")


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


def fingerprint_key(fingerprint: dict) -> str:
    """The device and runtime a timing is valid for (CPU model, ISA flags, cores, runtime versions), hashed:
    a timing from another machine or runtime version is never replayed."""
    kept = {k: v for k, v in fingerprint.items() if k not in ("python", "platform")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEQ_CACHE_DIR", Path.home() / ".cache" / "edgeq")) / "latency"


class Timer:
    """Times candidates against a reference, interleaved on one target; remembers results per (machine,
    target) on disk."""

    def __init__(self, target: str, threads: int, batch: int):
        found = get_target(target)
        self.found = found   # what a fresh process gets (a target read from a YAML file exists only here)
        self.target, self.threads, self.batch = found.name, threads, batch
        self.path = cache_dir() / f"{found.name}.json"
        # v5: unsure measurements extended by a second rotation (v4: one rotation; v3: a fixed order that
        # favoured later models)
        self.prefix = f"v5|{fingerprint_key(found.fingerprint())}|t{threads}|b{batch}"
        self.entries = self._load()
        self.hits = self.measured = self.extended = 0
        self.seconds = 0.0
        # loaded sessions of the current reference and candidates: each step loads only its new candidate
        # (OpenVINO compiled each int8 form in ~2 s, three times per step, a third of a search's time)
        self.sessions: dict = {}
        self.latency_ms: dict[str, float] = {}   # median ms per model structure, from measurements so far

    def _load(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def compare(self, reference: Path, candidates: list[Path], factor: int = 1,
                fresh_process: bool = False) -> list[Ratio]:
        hashes = [structure_hash(p) for p in (reference, *candidates)]
        key = "|".join([self.prefix, *hashes, f"x{factor}"])
        if key in self.entries and not fresh_process:   # the final check is never replayed (see above)
            self.hits += 1
            return self._noted(hashes, [Ratio(*r) for r in self.entries[key]])
        began = time.perf_counter()
        self._keep_sessions_of([reference, *candidates])
        runs = max(30, min(60, int(PAIR_BUDGET_MS / self._reference_ms(reference, hashes[0]) / 2))) * factor
        timing = dict(runs=runs, batch=self.batch, threads=self.threads, target=self.target)
        if fresh_process:
            self.sessions.clear()
        rotations = [self._blocks(reference, candidates, fresh_process, timing)]
        ratios = _pooled(rotations)
        if any(_unsure(r) for r in ratios):
            rotations.append(self._blocks(reference, candidates, fresh_process, timing))
            ratios = _pooled(rotations)
            self.extended += 1
        self.measured += 1
        self.seconds += time.perf_counter() - began
        if not fresh_process:   # nothing would read it back
            self.entries[key] = [[r.reference_ms, r.candidate_ms, r.ratio, r.low, r.high] for r in ratios]
        return self._noted(hashes, ratios)

    def _reference_ms(self, reference: Path, structure: str) -> float:
        """The reference's latency, to size the runs: known from an earlier measurement (the search's reference
        was last step's candidate), else probed with a few runs (a whole device session on an SSH target)."""
        from ..profile.latency import BLOCK, interleave
        if structure not in self.latency_ms:
            _, probe = interleave({"a": reference}, runs=3, warmup=1, batch=self.batch, threads=self.threads,
                                  target=self.target, block=BLOCK, sessions=self.sessions)["a"]
            self.latency_ms[structure] = float(np.median(probe.times))
        return max(self.latency_ms[structure], 0.05)

    def _noted(self, hashes: list[str], ratios: list[Ratio]) -> list[Ratio]:
        self.latency_ms[hashes[0]] = ratios[0].reference_ms
        self.latency_ms.update((h, r.candidate_ms) for h, r in zip(hashes[1:], ratios))
        return ratios

    def _blocks(self, reference: Path, candidates: list[Path], fresh_process: bool, timing: dict):
        from ..profile.latency import paired_blocks, paired_blocks_knowing
        if fresh_process:
            return _in_fresh_process(paired_blocks_knowing, self.found, reference, candidates, **timing)
        return paired_blocks(reference, candidates, sessions=self.sessions, **timing)

    def _keep_sessions_of(self, paths: list[Path]) -> None:
        """Release the loaded sessions of models this measurement does not time (memory stays at one step's)."""
        wanted = {str(p) for p in paths}
        for key in [k for k in self.sessions if k[0] not in wanted]:
            del self.sessions[key]

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.entries, indent=1) + "\n")
        except OSError:
            ui.log(f"could not write the latency cache {self.path}; the next run measures again")


def _unsure(r: Ratio) -> bool:
    """Looks faster, but the interval's slow end misses the margin: one more rotation of as many runs, pooled,
    decides (runs are spent only where a decision hangs on noise: ONNX Runtime's intervals on a 2-core VM are
    often ±10 %, and a single look lost levit_128s's 1.13x all-int8 gain on an AVX2 CPU, interval 0.83–1.00)."""
    return r.ratio <= 1.0 - MARGIN < r.high


def _pooled(rotations: list) -> list[Ratio]:
    """Each candidate's Ratio over the paired blocks of every rotation."""
    from ..profile.latency import pooled_ratio
    return [pooled_ratio([ref for ref, _ in rotations], [cands[i] for _, cands in rotations])
            for i in range(len(rotations[0][1]))]


def _in_fresh_process(function, *args, **kwargs):
    """``function(*args, **kwargs)`` in a newly spawned Python process (nothing inherited but the arguments)."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args, kwargs)
