"""Calibration and evaluation set definitions (``calib/*.yaml``): where the samples come from, how many, in
which order, how they are prepared, and under which licence.

``--calib calib/NAME.yaml`` and ``--data calib/NAME.yaml`` read one; the zoo's own sets ship as
``edgeq/calib/zoo-calib.yaml`` (what ``--calib zoo`` reads) and ``zoo-test.yaml`` (``--data zoo:test``), so an
installed edgeq finds them too (the checkout's top-level ``calib/`` points there). Every file is validated
on load and an error names the file and the field. Preprocessing fields state what edgeq does to images;
values it does not implement are refused rather than silently ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CalibrationError
from .yamlfile import read_mapping

CALIB_DIR = Path(__file__).parent / "calib"
FIELDS = ("name", "description", "source", "samples", "seed", "preprocessing", "labels", "licence")
PREPROCESSING = {"resize": ("bilinear",), "channels": ("match",), "normalize": ("model",)}


@dataclass(frozen=True)
class SetDefinition:
    name: str
    description: str
    source: str           # resolved: relative paths are relative to the definition's folder
    samples: int | None   # the first N (None: all)
    seed: int | None      # a fixed shuffle before taking N
    labels: str | None    # "class ids" (stored with the samples), or a labels source
    licence: str
    path: Path

    def select(self, count: int) -> np.ndarray:
        """Indices of the samples this definition takes from ``count`` available."""
        order = np.arange(count) if self.seed is None else np.random.default_rng(self.seed).permutation(count)
        return order[: self.samples] if self.samples is not None else order

    def labels_source(self) -> str | None:
        """A labels source to read apart from the samples, or None when they are stored with them."""
        return None if self.labels in (None, "class ids", "stored") else self.labels


def is_definition(source: str) -> bool:
    return str(source).endswith((".yaml", ".yml"))


def shipped(name: str) -> Path:
    return CALIB_DIR / f"{name}.yaml"


def read_definition(path: str | Path) -> SetDefinition:
    path = Path(path)
    return _validated(read_mapping(path, FIELDS, "data set", CalibrationError), path)


def _validated(data: dict, path: Path) -> SetDefinition:
    def bad(key: str, expected: str):
        return CalibrationError(f"{path}: field {key!r} must be {expected}, got {data.get(key)!r}.")

    for key in ("name", "source", "licence"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise bad(key, "a non-empty string")
    for key in ("samples", "seed"):
        value = data.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < (key == "samples")):
            raise bad(key, "a positive integer or null" if key == "samples" else "an integer or null")
    prep = data.get("preprocessing") or {}
    if not isinstance(prep, dict):
        raise bad("preprocessing", "a mapping")
    for key, value in prep.items():
        if key not in PREPROCESSING or value not in PREPROCESSING[key]:
            allowed = "; ".join(f"{k}: {'|'.join(v)}" for k, v in PREPROCESSING.items())
            raise CalibrationError(f"{path}: preprocessing {key}: {value!r} is not something edgeq does ({allowed}).")
    labels = data.get("labels")
    if labels is not None and not isinstance(labels, str):
        raise bad("labels", "a string ('class ids' when stored with the samples, or a labels source)")
    source = data["source"].strip()
    if not source.startswith("zoo") and not Path(source).is_absolute():
        source = str(path.parent / source)
    return SetDefinition(data["name"], str(data.get("description") or ""), source, data.get("samples"),
                         data.get("seed"), labels, data["licence"], path)
