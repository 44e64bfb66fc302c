"""The quantized bundle: one folder that ``edgeq export`` can read without the user's Python code.

    OUT/
      manifest.json       model spec, input spec, recipe, per-layer decisions, calibration summary,
                          block map, versions, seed, file hashes
      model.pt2           the captured float program (torch.export.save, before BN folding)
      quant.safetensors   integer weights and scales, activation scales and zero-points
      samples.npz         a few calibration inputs (one array per model input, per-sample lengths when
                          a dynamic axis varies), for fidelity checks after export at several lengths

Same inputs and seed give a byte-identical quant.safetensors.

Placements per target (format 3): the tensors hold every layer that the recipe, the outlier and the accuracy
fallbacks left in int8; a latency placement searched for a target floats some of them *for that target only*.
``manifest["layers"]`` shows the placement of the bundle's default target (the first ``--target``); a layer it
floats keeps its int8 fields under ``"int8"`` so that another target's view can quantize it again.
``manifest["fallback"]["placements"]`` holds each target's placement (its float layers and why) and
``read_bundle(path, target)`` gives the bundle as that target ships it (``manifest_for``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import BundleError
from .fsutil import atomic_path
from .models.intake import InputSpec, load_program
from .quant.fakequant import ActQuant, LayerQuant, apply_weights, insert_quantizers
from .quant.observers import QParams
from .quant.recipe import LayerSpec
from .samples import Samples
from .trace.capture import fold_batchnorm, to_graph_module

BUNDLE_FORMAT = 3     # 3: placements per target; 2: samples.npz (several inputs, lengths); 1: samples.npy
MANIFEST = "manifest.json"
PROGRAM = "model.pt2"
TENSORS = "quant.safetensors"
SAMPLES = "samples.npz"
SAMPLES_V1 = "samples.npy"


@dataclass
class Bundle:
    path: Path
    manifest: dict
    exported: torch.export.ExportedProgram
    tensors: dict[str, torch.Tensor]
    samples: Samples
    target: str | None = None     # whose placement ``manifest`` shows (None: the default target's)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input"]["shape"])

    @property
    def input_specs(self) -> list[InputSpec]:
        return [InputSpec.from_dict(d) for d in self.manifest.get("inputs") or [self.manifest["input"]]]

    @property
    def output_names(self) -> list[str]:
        return self.manifest.get("outputs") or ["output"]


def qparams_to_tensors(prefix: str, qp: QParams) -> dict[str, torch.Tensor]:
    return {f"{prefix}.scale": qp.scale.float().contiguous(),
            f"{prefix}.zero_point": qp.zero_point.to(torch.int32).contiguous()}


def qparams_meta(qp: QParams) -> dict:
    return {"qmin": qp.qmin, "qmax": qp.qmax, "axis": qp.axis}


def write_bundle(out: Path, program: bytes, records: dict[str, LayerQuant],
                 act_qparams: dict[str, QParams], manifest: dict, samples: Samples) -> dict:
    tensors: dict[str, torch.Tensor] = {}
    for name, qp in act_qparams.items():
        tensors.update(qparams_to_tensors(f"act.{name}", qp))
    for rec in records.values():
        tensors[f"weight.{rec.layer}.int"] = rec.weight_int.contiguous()
        tensors.update(qparams_to_tensors(f"weight.{rec.layer}", rec.weight_qparams))
    manifest = {"format": "edgeq-bundle", "format_version": BUNDLE_FORMAT,
                "created_by": f"edgeq {__version__}", **manifest}
    manifest["activation_quantizers"] = {name: qparams_meta(qp) for name, qp in act_qparams.items()}
    for rec in records.values():
        _int8_fields(manifest["layers"][rec.layer])["weight_qparams"] = qparams_meta(rec.weight_qparams)
    with atomic_path(out, is_dir=True) as tmp:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": "edgeq-bundle"})
        (tmp / PROGRAM).write_bytes(program)
        _save_samples(tmp / SAMPLES, samples)
        manifest["files"] = {f: _sha256(tmp / f) for f in (TENSORS, PROGRAM, SAMPLES)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=_json_default) + "\n")
    return manifest


def _save_samples(path: Path, samples: Samples) -> None:
    arrays = {f"input_{i}": a for i, a in enumerate(samples.inputs)}
    if samples.lengths is not None:
        arrays.update(lengths=samples.lengths, axis=np.array(samples.axis))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _load_samples(path: Path) -> Samples:
    if (path / SAMPLES_V1).is_file():
        return Samples((np.load(path / SAMPLES_V1, allow_pickle=False),))
    with np.load(path / SAMPLES, allow_pickle=False) as archive:
        count = sum(k.startswith("input_") for k in archive.files)
        inputs = tuple(archive[f"input_{i}"] for i in range(count))
        if "lengths" in archive.files:
            return Samples(inputs, archive["lengths"], int(archive["axis"]))
        return Samples(inputs)


def _json_default(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_bundle(path: str | Path, target: str | None = None) -> Bundle:
    """The bundle as ``target`` ships it (its latency placement applied; see ``manifest_for``)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir() or not manifest_path.is_file():
        raise BundleError(f"{path} is not an edgeq bundle (no {MANIFEST}); create one with edgeq quantize.")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"{manifest_path} is not valid JSON; the bundle is corrupt.") from None
    if manifest.get("format") != "edgeq-bundle":
        raise BundleError(f"{path} is not an edgeq bundle (manifest format {manifest.get('format')!r}).")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_FORMAT:
        raise BundleError(f"{path} was written in bundle format {version!r}, newer than this edgeq "
                          f"understands ({BUNDLE_FORMAT}); upgrade edgeq.")
    for name, digest in manifest.get("files", {}).items():
        if not (path / name).is_file() or _sha256(path / name) != digest:
            raise BundleError(f"{path / name} is missing or does not match its hash in the manifest; "
                              f"the bundle is corrupt.")
    try:
        exported = load_program(path / PROGRAM)
        tensors = load_file(str(path / TENSORS))
        samples = _load_samples(path)
    except Exception:  # noqa: BLE001 - any failure here is a damaged bundle
        raise BundleError(f"{path} could not be read; the bundle is corrupt.") from None
    return Bundle(path, manifest_for(manifest, target), exported, tensors, samples, target)


# --- placements per target ------------------------------------------------------------------------------

LAYER_BASE = ("block", "module", "op")   # what a layer entry says whatever its precision


def _int8_fields(entry: dict) -> dict:
    """Where a layer's int8 fields live: the entry itself, or ``entry["int8"]`` when a placement floats it."""
    return entry if entry["quantized"] else entry["int8"]


def placement_targets(manifest: dict) -> list[str]:
    """The targets the bundle holds a latency placement for, the default first."""
    return list((manifest.get("fallback") or {}).get("placements") or {})


def manifest_for(manifest: dict, target: str | None) -> dict:
    """The manifest as ``target`` ships the model: its placement's float layers float, every other int8
    candidate is int8. ``None`` (or the default target) is the stored manifest. A target the bundle holds no
    placement for gets the recipe's placement (no latency decision: those were measured elsewhere), and
    ``fallback.placement`` says so."""
    fallback = manifest.get("fallback") or {}
    placements = fallback.get("placements") or {}
    if target is None or not placements or target == next(iter(placements)):
        return manifest     # (a bundle without placements, or format 2, is the same for every target)
    chosen = placements.get(target)
    float_layers = (chosen or {}).get("float_layers") or {}
    layers = {name: _layer_for(entry, float_layers.get(name), target) for name, entry in manifest["layers"].items()}
    latency_units = {layers[n]["int8"]["act_quantizer"] for n in float_layers}
    reverted = {u: d for u, d in (fallback.get("reverted_units") or {}).items() if d.get("stage") != "latency"}
    reverted.update({u: {"stage": "latency", "target": target} for u in sorted(latency_units)})
    placement = chosen or {"target": target, "steps": [], "floated_units": [], "float_layers": {},
                           "verdict": f"no placement searched for {target} in this bundle (it has "
                                      f"{', '.join(placements) or 'none'}): the recipe's placement, every "
                                      f"candidate layer in int8"}
    return {**manifest, "layers": layers,
            "fallback": {**fallback, "placement": placement, "reverted_units": reverted}}


def _layer_for(entry: dict, float_reason: str | None, target: str) -> dict:
    """One layer as ``target`` ships it: floated by its placement, or back in int8 if another target's
    placement floated it."""
    if "int8" in entry:     # stored floated by the default target's placement
        entry = {**{k: entry[k] for k in LAYER_BASE}, **entry["int8"]}
    if float_reason is None or not entry["quantized"]:
        return entry
    return float_layer_entry(entry, float_reason, target)


def float_layer_entry(entry: dict, reason: str, target: str) -> dict:
    """A quantized layer entry floated by ``target``'s latency placement, its int8 fields kept aside."""
    int8 = {k: v for k, v in entry.items() if k not in LAYER_BASE}
    return {"quantized": False, "precision": "fp32", "reason": reason, "stage": "latency", "target": target,
            **{k: entry[k] for k in LAYER_BASE}, "int8": int8}


def require_single_input(bundle: Bundle, what: str) -> None:
    """Exporters that handle one input (fixed, or with one dynamic width/time axis) refuse the rest in one
    sentence."""
    specs = bundle.input_specs
    if len(specs) > 1:
        raise BundleError(f"{what} supports models with one input so far; {bundle.path} has {len(specs)} inputs "
                          f"(export it with --to onnx).")


def float_graph(bundle: Bundle) -> torch.fx.GraphModule:
    gm = to_graph_module(bundle.exported)
    fold_batchnorm(gm)
    return gm


def quantized_graph(bundle: Bundle) -> torch.fx.GraphModule:
    """Rebuild the fake-quant graph from the float program and the stored parameters, with the int8 layers
    of the bundle's view (``read_bundle(path, target)``)."""
    gm = float_graph(bundle)
    layers = {n: d for n, d in bundle.manifest["layers"].items() if d.get("quantized")}
    plan = {n: (LayerSpec(**d["weight_spec"]), LayerSpec(**d["act_spec"])) for n, d in layers.items()}
    records = insert_quantizers(gm, plan)
    stored = bundle.manifest["activation_quantizers"]
    # quantizers are numbered in graph order, so a view with fewer int8 layers names them differently from
    # the stored ones: each layer records the stored quantizer that reads its input
    source = {rec.act_module: layers[layer]["act_quantizer"] for layer, rec in records.items()}
    actual = {name for name, m in gm.named_children() if isinstance(m, ActQuant)}
    if set(source) != actual or not set(source.values()) <= set(stored) or len(set(source.values())) != len(source):
        raise BundleError(f"{bundle.path}: the stored quantizers do not fit the program; the bundle is corrupt.")
    for name, module in gm.named_children():
        if isinstance(module, ActQuant):
            module.load(_qparams(bundle.tensors, f"act.{source[name]}", stored[source[name]]))
    for rec in records.values():
        meta = layers[rec.layer]["weight_qparams"]
        rec.weight_qparams = _qparams(bundle.tensors, f"weight.{rec.layer}", meta)
        rec.weight_int = bundle.tensors[f"weight.{rec.layer}.int"]
    apply_weights(gm, records)
    return gm


def _qparams(tensors: dict, prefix: str, meta: dict) -> QParams:
    return QParams(tensors[f"{prefix}.scale"], tensors[f"{prefix}.zero_point"],
                   meta["qmin"], meta["qmax"], meta["axis"])
