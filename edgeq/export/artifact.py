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
from ..bundle import Bundle
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
