"""What every exporter records about the artifact it wrote, in one shape.

The record is both the exporter's return value and its sidecar JSON (``read_artifact`` reads it back). The
fields every form shares come from here; each exporter adds what only its form has (opset and Q/DQ passes
for ONNX, lint and the engine for TensorRT, MIL ops for CoreML).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .. import __version__
from ..bundle import Bundle, placement_targets
from ..fsutil import atomic_path, check_output


def sidecar_path(path: str | Path) -> Path:
    """The JSON record next to an artifact (``model.onnx`` → ``model.onnx.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def check_outputs(out: str | Path, force: bool, is_dir: bool = False) -> Path:
    """The artifact's path and its sidecar's, checked before any work starts."""
    out = check_output(out, force, is_dir=is_dir)
    check_output(sidecar_path(out), force=True)
    return out


def digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, or of a folder's files (names and contents, in name order)."""
    if path.is_file():
        data = path.read_bytes()
        return hashlib.sha256(data).hexdigest(), len(data)
    sha, size = hashlib.sha256(), 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        data = f.read_bytes()
        sha.update(str(f.relative_to(path)).encode())
        sha.update(data)
        size += len(data)
    return sha.hexdigest(), size


def artifact_record(shown: Path, written: Path, form: str, precision: str, bundle: Bundle,
                    bundle_path: str | Path, quantized: bool, fidelity: dict, **extra) -> dict:
    """The record of an artifact: ``shown`` is where the user finds it, ``written`` what was hashed (the
    temporary path before the atomic move); ``quantized``: whether the bundle's quantizers are in it."""
    sha, size = digest(written)
    manifest = bundle.manifest
    return {"path": str(shown), "format": form, "precision": precision, "sha256": sha, "bytes": size,
            "input": manifest["input"], "dynamic_batch": manifest["dynamic_batch"],
            "bundle": str(Path(bundle_path).resolve()), "model": manifest["model"]["spec"],
            "recipe": manifest["recipe"]["name"] if quantized else None,
            "layer_precisions": bit_widths(bundle) if quantized else None,
            **extra, "fidelity_vs_torch": fidelity, "created_by": f"edgeq {__version__}"}


def bit_widths(bundle: Bundle) -> dict[str, int]:
    """Layer precisions in the bundle (sub-8-bit layers run on 8-bit kernels with narrowed ranges)."""
    counts: dict[str, int] = {}
    for layer in bundle.manifest["layers"].values():
        counts[layer["precision"]] = counts.get(layer["precision"], 0) + 1
    return dict(sorted(counts.items()))


def float_layers(bundle: Bundle) -> list[str]:
    """Quantizable layers the bundle keeps in float (fallback decisions and recipe exclusions)."""
    return sorted(n for n, d in bundle.manifest["layers"].items() if not d["quantized"])


def write_sidecar(artifact: Path, record: dict) -> None:
    """The record next to the artifact, atomically (it lands just before the artifact it describes)."""
    with atomic_path(sidecar_path(artifact)) as side:
        side.write_text(json.dumps(record, indent=2) + "\n")


def placement_fields(bundle: Bundle, quantized: bool) -> dict:
    """Which target the artifact is for and whose latency placement it carries (None: the recipe's)."""
    if not quantized:
        return {"target": bundle.target}
    fallback = bundle.manifest.get("fallback") or {}
    placements = fallback.get("placements") or {}
    if placements:
        applied = bundle.target if bundle.target in placements else (
            next(iter(placements)) if bundle.target is None else None)
    else:   # format 2: one placement, in the layers
        applied = (fallback.get("placement") or {}).get("target")
    return {"target": bundle.target, "placement_applied": applied, "placement_note": placement_note(bundle)}


def placement_note(bundle: Bundle) -> str | None:
    """What to know about the latency placement of an export for ``bundle.target``: nothing when the bundle
    holds that target's placement (it is applied); when it holds only other targets' placements, that they
    are not applied (timings on one runtime say nothing about another) and how to get one."""
    target = bundle.target
    if target is None:
        return None
    placements = (bundle.manifest.get("fallback") or {}).get("placements") or {}
    if not placements:
        return _format2_note(bundle, target)
    if target in placements:
        why = placements[target].get("not_searched")
        return (f"no latency placement was searched for {target} ({why}): every candidate layer is int8 as recipe "
                f"{bundle.manifest['recipe']['name']} decided." if why else None)
    floated = {t: len(p.get("float_layers") or {}) for t, p in placements.items() if p.get("float_layers")}
    if not floated:
        return None
    elsewhere = ", ".join(f"{t} ({n} layers float there)" for t, n in floated.items())
    how = (f"to search one, quantize with --target {target} where its runtime runs" if _is_target(target)
           else "export with --target NAME to apply the placement of a device target it has")
    return (f"this bundle has no latency placement for {target}, so the placements searched for {elsewhere} are "
            f"not applied: every candidate layer is int8 as recipe {bundle.manifest['recipe']['name']} decided; "
            f"{how} (the bundle has: {', '.join(placement_targets(bundle.manifest))}).")


def _is_target(name: str) -> bool:
    """Whether ``name`` is a device target (exports without one name their form instead, e.g. TensorRT)."""
    from ..target import target_names
    return name in target_names()


def _format2_note(bundle: Bundle, target: str) -> str | None:
    """A format-2 bundle holds one placement, baked into its layers: warn when it was searched elsewhere."""
    searched: dict[str, int] = {}
    for layer in bundle.manifest["layers"].values():
        if not layer["quantized"] and layer.get("stage") == "latency" and layer["target"] != target:
            searched[layer["target"]] = searched.get(layer["target"], 0) + 1
    if not searched:
        return None
    runtime, count = max(searched.items(), key=lambda kv: kv[1])
    return (f"{count} layers are float because the latency placement measured on {runtime} found int8 slower "
            f"there, which says nothing about {target}; for {target}, quantize again with "
            f"{f'--target {target} or ' if _is_target(target) else ''}--no-latency-search (the accuracy-budget "
            f"and outlier fallbacks still apply).")
