"""The quantize stage: capture → fold → block map → observers → calibrate → integer weights → bundle."""
from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import ui
from ..bundle import write_bundle
from ..data import Dataset
from ..envinfo import int8_dot_saturates, machine, package_versions
from ..memory import release_freed_memory
from ..metrics import compare_outputs
from ..models.intake import LoadedModel
from ..samples import Outputs, Samples, output_names, run_graph
from ..trace.blocks import BlockMap, build_block_map
from ..trace.capture import capture, fold_batchnorm, has_dynamic_batch, to_graph_module
from ..trace.reparam import reparameterize
from .fakequant import ActQuant, add_act_candidates, finalize_weights, freeze_activations, insert_quantizers, \
    plan_layers
from .recipe import Recipe, resolve_reduce_range

FIDELITY_SAMPLES = 32


def serialize_program(exported: torch.export.ExportedProgram) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    return buffer.getvalue()


@dataclass
class Quantized:
    """The quantize stage's working state, before fallback decisions and the bundle write."""

    loaded: LoadedModel
    recipe: Recipe
    program: bytes
    exported: torch.export.ExportedProgram
    dynamic: bool
    batch_size: int
    gm: torch.fx.GraphModule
    block_map: BlockMap
    records: dict
    kept_float: dict
    folded: list
    samples: Samples
    float_out: Outputs
    fidelity: dict
    recon_report: dict | None
    outlier_stats: dict
    seconds: float = 0.0
    reparam: dict = dataclasses.field(default_factory=dict)
    output_names: list = dataclasses.field(default_factory=lambda: ["output"])

    def act_qparams(self) -> dict:
        return {name: m.qparams for name, m in self.gm.named_children() if isinstance(m, ActQuant)}

    def float_graph(self) -> torch.fx.GraphModule:
        gm = to_graph_module(self.exported)
        fold_batchnorm(gm)
        return gm


def quantize_model(loaded: LoadedModel, data: Dataset, recipe: Recipe, out: Path, seed: int,
                   device: str = "cpu", state=None, fallback=None) -> dict:
    """``state`` (a ResumeState) makes block reconstruction save after every region and resume from it;
    ``fallback`` (FallbackRun) adds accuracy-budget and latency decisions before the bundle is written.
    A failure after quantization writes the learned model to ``learned_path(out)`` first (``keep_learned``)."""
    from ..errors import BudgetError
    from ..fallback.run import FallbackResult, FallbackRun, best_effort_path, keep_learned, stage
    q = build_quantized(loaded, data, recipe, seed, device, state)

    def learned(path, report):  # the model as learned, before any fallback decision
        return write_quantized(q, path, seed, data, device, FallbackResult(report=report))

    with keep_learned(out, learned, state.regions_done if state is not None else None):
        decisions = (fallback or FallbackRun()).apply(q, data, out)
        if decisions.budget_met is False:
            best = best_effort_path(out)
            with stage("bundle write"):
                write_quantized(q, best, seed, data, device, decisions)
            budget = decisions.report["budget"]
            final = budget.get("after_placement") or budget["final"]
            raise BudgetError(f"the accuracy budget ({budget['budget']}) cannot be met: with "
                              f"{len(decisions.floated_units())} of {decisions.report['units']} units in float the "
                              f"model still has {_fmt_metric(final)}; the best model found is in {best}, "
                              f"and {out} was not written.")
        with stage("bundle write"):
            return write_quantized(q, out, seed, data, device, decisions)


def _fmt_metric(m: dict) -> str:
    if "drop" in m:
        name = next(k for k in m if k not in ("cosine", "drop"))
        return f"a {name} drop of {m['drop']}"
    return f"an output cosine of {m['cosine']}"


def build_quantized(loaded: LoadedModel, data: Dataset, recipe: Recipe, seed: int, device: str = "cpu",
                    state=None) -> Quantized:
    from ..fallback import outliers
    start = time.perf_counter()
    recipe = resolve_reduce_range(recipe, int8_dot_saturates())  # recorded resolved in the manifest
    torch.manual_seed(seed)
    loaded, reparam = reparameterize(loaded, data.samples.take(slice(0, 8)))
    with ui.status(f"capturing {loaded.spec} with torch.export"):
        exported = capture(loaded, data.samples)
    program = serialize_program(exported)  # before anything touches the graph
    dynamic = has_dynamic_batch(exported)
    batch_size = recipe.calibration.batch_size if dynamic else loaded.input_spec.shape[0]
    gm = to_graph_module(exported)
    folded = fold_batchnorm(gm)
    block_map = build_block_map(gm)

    samples = data.samples.take(slice(0, FIDELITY_SAMPLES))
    float_out = run_graph(gm, samples, batch_size)
    with torch.no_grad():
        names = output_names(gm(*[torch.from_numpy(a) for a in samples.uniform().take(slice(0, 1)).inputs]))
    plan, kept_float = plan_layers(block_map, recipe)
    records = insert_quantizers(gm, plan, seed)
    recon = recipe.reconstruction
    if recon is not None:
        add_act_candidates(gm, records, recon.choose_granularity, recon.choose_scheme, seed)
    stats, hooks = outliers.attach(gm) if recipe.fallback.outliers else ({}, [])
    with torch.no_grad():
        for batch in ui.track(list(data.batches(batch_size)), "calibrating"):
            gm(*[torch.from_numpy(a) for a in batch])
            release_freed_memory()
    for hook in hooks:
        hook.remove()
    freeze_activations(gm)
    release_freed_memory()
    finalize_weights(gm, records)
    fidelity = compare_outputs(float_out, run_graph(gm, samples, batch_size))
    recon_report = None
    if recon is not None:
        from ..reconstruct.engine import reconstruct
        fidelity_observers = fidelity
        if not dynamic:  # a static program only runs at its captured batch size
            recon = dataclasses.replace(recon, batch_size=batch_size)
        limit = f", {recon.time_budget:.0f} s of learning where it pays" if recon.time_budget else ""
        ui.log(f"reconstructing {len(records)} layers block by block (up to {recon.iterations} iterations each{limit})")
        recon_report = reconstruct(gm, records, block_map, data.samples.uniform().inputs, recon, seed, device,
                                   state, static_batch=None if dynamic else batch_size)
        recon_report["fidelity_observers_vs_float"] = fidelity_observers
        fidelity = compare_outputs(float_out, run_graph(gm, samples, batch_size))
    return Quantized(loaded, recipe, program, exported, dynamic, batch_size, gm, block_map, records, kept_float,
                     folded, samples, float_out, fidelity, recon_report,
                     outliers.detect(stats, recipe.fallback.outlier_ratio), time.perf_counter() - start, reparam, names)


def write_quantized(q: Quantized, out: Path, seed: int, data: Dataset, device: str, decisions) -> dict:
    """Write the bundle with the fallback ``decisions`` (a FallbackResult): without the units reverted on every
    target, with each target's latency placement (``manifest["layers"]`` shows the default target's)."""
    from ..bundle import float_layer_entry
    from ..fallback.units import Decision, drop_units
    records, act_qparams = drop_units(q.float_graph(), q.records, q.act_qparams(), decisions.reverted_units)
    reverted_layers = _layer_decisions(q, decisions.reverted_units)
    placed_layers = _layer_decisions(q, decisions.placements.get(decisions.default_target, {}))
    ptq_seconds = q.seconds + decisions.seconds
    layers = {}
    for name, layer in q.block_map.layers.items():
        base = {"block": layer.block, "module": layer.module, "op": layer.op}
        if name in records:
            rec = records[name]
            layers[name] = {"quantized": True, "precision": f"w{rec.weight_spec.bits}a{rec.act_spec.bits}",
                            "reason": f"recipe {q.recipe.name}", "stage": "recipe", "target": None, "rounding": _rounding(name, q.recon_report),
                            **base, "act_quantizer": rec.act_module,
                            "weight_spec": asdict(rec.weight_spec), "act_spec": asdict(rec.act_spec)}
            if name in placed_layers:   # floated by the default target's latency placement
                layers[name] = float_layer_entry(layers[name], placed_layers[name].reason, placed_layers[name].target)
        else:
            decision = reverted_layers.get(name) or Decision("recipe", q.kept_float[name])
            layers[name] = {"quantized": False, "precision": "fp32", "reason": decision.reason,
                            **decision.fields(), **base}
    act_summary = {name: {**m.observer.summary(), "scale": float(m.qparams.scale.max()),
                          "zero_point": int(m.qparams.zero_point.max())}
                   for name, m in q.gm.named_children() if hasattr(m, "observer")}
    manifest = {
        "model": q.loaded.describe(),
        "input": q.loaded.input_spec.to_dict(),
        "inputs": [s.to_dict() for s in q.loaded.input_specs],
        "outputs": q.output_names,
        "dynamic_batch": q.dynamic,
        "recipe": q.recipe.to_dict(),
        "seed": seed,
        "calibration": {**data.summary(), "batch_size": q.batch_size, "observers": act_summary},
        "trace": {"reparameterized": q.reparam, "batchnorm_folded": len(q.folded), "block_kinds": q.block_map.kinds(),
                  "params": q.block_map.total_params, "macs": q.block_map.total_macs},
        "layers": layers,
        "block_map": q.block_map.to_dict(),
        "fidelity_fakequant_vs_float": decisions.fidelity or q.fidelity,
        "reconstruction": q.recon_report,
        "fallback": {**{k: v for k, v in decisions.report.items() if k != "placements"},
                     **({"placement": next(iter(decisions.report["placements"].values())),
                         "placements": decisions.report["placements"]} if decisions.report.get("placements") else {}),
                     "reverted_units": {u: d.fields() for u, d in decisions.floated_units().items()}},
        "norm_placement": norm_placement(q.block_map.op_counts, len(q.folded)),
        "ptq_seconds": round(ptq_seconds, 2),
        "quantize_seconds": round(q.seconds, 2),
        "fallback_seconds": round(decisions.seconds, 2),
        "versions": package_versions(),
        "machine": machine(),
    }
    write_bundle(out, q.program, records, act_qparams, manifest, q.samples)
    report = q.recon_report
    summary = ({"regions": len(report["regions"]), "fallbacks": report["fallbacks"],
                "kept_observers": report["kept_observers"], "seconds": report["seconds"], "device": device}
               if report else None)
    return {"bundle": str(out), "model": q.loaded.spec, "recipe": q.recipe.name, "reconstruction": summary,
            "quantized_layers": sum(d["quantized"] for d in layers.values()),
            "float_layers": sum(not d["quantized"] for d in layers.values()),
            "fallback": decisions.summary(), "batchnorm_folded": len(q.folded), "blocks": q.block_map.kinds(),
            "fidelity_fakequant_vs_float": decisions.fidelity or q.fidelity, "ptq_seconds": round(ptq_seconds, 2)}


def _layer_decisions(q: Quantized, unit_decisions: dict) -> dict:
    """Unit decisions per layer (a unit is the layers that read one activation quantizer)."""
    return {layer: decision for unit, decision in unit_decisions.items()
            for layer in q.records if q.records[layer].act_module == unit}


def _rounding(layer: str, report: dict | None) -> str:
    if report is None:
        return "nearest"
    region = next((r for r in report["regions"] if layer in r["layers"]), None)
    status = region["status"] if region else "fallback"
    return {"learned": "adaround", "observers": "nearest (learning did not lower the block loss)"}.get(
        status, "nearest (block fell back)")


def norm_placement(op_counts: dict, batchnorm_folded: int) -> dict:
    """Where quantizers sit around normalisation layers (recorded so a reader need not guess).

    BatchNorms after a conv/linear are folded into its weights before quantization, so no quantizer
    sits between them; LayerNorm/GroupNorm and unfolded BatchNorm run in float on float inputs, and their
    outputs are quantized only where a quantized conv/linear reads them (its input quantizer).
    """
    return {"batch_norm_folded": batchnorm_folded,
            "batch_norm_float": op_counts.get("batch_norm.default", 0),
            "layer_norm_float": op_counts.get("layer_norm.default", 0),
            "group_norm_float": op_counts.get("group_norm.default", 0),
            "policy": "norm inputs stay float; norm outputs are quantized by the input quantizer of the "
                      "conv/linear that reads them"}
