"""The quantize stage: capture → fold → block map → observers → calibrate → integer weights → bundle."""
from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .. import ui
from ..bundle import write_bundle
from ..data import Dataset
from ..envinfo import int8_dot_saturates, machine, package_versions
from ..metrics import compare
from ..models.intake import LoadedModel
from ..trace.blocks import build_block_map
from ..trace.capture import capture, fold_batchnorm, has_dynamic_batch, to_graph_module
from .fakequant import ActQuant, add_act_candidates, finalize_weights, freeze_activations, insert_quantizers, \
    plan_layers
from .recipe import Recipe, resolve_reduce_range

FIDELITY_SAMPLES = 32


def run_graph(gm: torch.fx.GraphModule, x: np.ndarray, batch_size: int) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(gm(torch.from_numpy(x[i: i + batch_size])).numpy())
    return np.concatenate(outs)


def serialize_program(exported: torch.export.ExportedProgram) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    return buffer.getvalue()


def quantize_model(loaded: LoadedModel, data: Dataset, recipe: Recipe, out: Path, seed: int,
                   device: str = "cpu", state=None) -> dict:
    """``state`` (a ResumeState) makes block reconstruction save after every region and resume from it."""
    start = time.perf_counter()
    recipe = resolve_reduce_range(recipe, int8_dot_saturates())  # recorded resolved in the manifest
    torch.manual_seed(seed)
    with ui.status(f"capturing {loaded.spec} with torch.export"):
        exported = capture(loaded)
    program = serialize_program(exported)  # before anything touches the graph
    dynamic = has_dynamic_batch(exported)
    batch_size = recipe.calibration.batch_size if dynamic else loaded.input_spec.shape[0]
    gm = to_graph_module(exported)
    folded = fold_batchnorm(gm)
    block_map = build_block_map(gm)

    samples = data.x[:FIDELITY_SAMPLES]
    float_out = run_graph(gm, samples, batch_size)
    plan, kept_float = plan_layers(block_map, recipe)
    records = insert_quantizers(gm, plan, seed)
    recon = recipe.reconstruction
    if recon is not None:
        add_act_candidates(gm, records, recon.choose_granularity, recon.choose_scheme, seed)
    with torch.no_grad():
        for batch in ui.track(list(data.batches(batch_size)), "calibrating"):
            gm(torch.from_numpy(batch))
    act_qparams = freeze_activations(gm)
    finalize_weights(gm, records)
    fidelity = compare(float_out, run_graph(gm, samples, batch_size))
    recon_report = None
    if recon is not None:
        from ..reconstruct.engine import reconstruct
        fidelity_observers = fidelity
        if not dynamic:  # a static program only runs at its captured batch size
            recon = dataclasses.replace(recon, batch_size=batch_size)
        ui.log(f"reconstructing {len(records)} layers block by block ({recon.iterations} iterations each)")
        recon_report = reconstruct(gm, records, block_map, data.x, recon, seed, device, state)
        recon_report["fidelity_observers_vs_float"] = fidelity_observers
        act_qparams = {name: m.qparams for name, m in gm.named_children() if isinstance(m, ActQuant)}
        fidelity = compare(float_out, run_graph(gm, samples, batch_size))
    ptq_seconds = time.perf_counter() - start

    layers = {}
    for name, layer in block_map.layers.items():
        if name in records:
            rec = records[name]
            layers[name] = {"quantized": True,
                            "precision": f"w{rec.weight_spec.bits}a{rec.act_spec.bits}",
                            "reason": f"recipe {recipe.name}", "rounding": _rounding(name, recon_report),
                            "block": layer.block, "module": layer.module,
                            "op": layer.op, "act_quantizer": rec.act_module,
                            "weight_spec": asdict(rec.weight_spec), "act_spec": asdict(rec.act_spec)}
        else:
            layers[name] = {"quantized": False, "precision": "fp32", "reason": kept_float[name], "block": layer.block,
                            "module": layer.module, "op": layer.op}
    act_summary = {name: {**m.observer.summary(), "scale": float(m.qparams.scale.max()),
                          "zero_point": int(m.qparams.zero_point.max())}
                   for name, m in gm.named_children() if hasattr(m, "observer")}
    manifest = {
        "model": loaded.describe(),
        "input": loaded.input_spec.to_dict(),
        "dynamic_batch": dynamic,
        "recipe": recipe.to_dict(),
        "seed": seed,
        "calibration": {**data.summary(), "batch_size": batch_size, "observers": act_summary},
        "trace": {"batchnorm_folded": len(folded), "block_kinds": block_map.kinds(),
                  "params": block_map.total_params, "macs": block_map.total_macs},
        "layers": layers,
        "block_map": block_map.to_dict(),
        "fidelity_fakequant_vs_float": fidelity,
        "reconstruction": recon_report,
        "norm_placement": norm_placement(block_map.op_counts, len(folded)),
        "ptq_seconds": round(ptq_seconds, 2),
        "versions": package_versions(),
        "machine": machine(),
    }
    write_bundle(out, program, records, act_qparams, manifest, samples)
    summary = ({"regions": len(recon_report["regions"]), "fallbacks": recon_report["fallbacks"],
                "kept_observers": recon_report["kept_observers"],
                "seconds": recon_report["seconds"], "device": device} if recon_report else None)
    return {"bundle": str(out), "model": loaded.spec, "recipe": recipe.name, "reconstruction": summary,
            "quantized_layers": len(records), "float_layers": len(kept_float),
            "batchnorm_folded": len(folded), "blocks": block_map.kinds(),
            "fidelity_fakequant_vs_float": fidelity, "ptq_seconds": round(ptq_seconds, 2)}


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
