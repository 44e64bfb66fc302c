"""Calibration and evaluation data: image folders, .npy/.npz arrays, or the bundled zoo sets.

Everything comes out as float32 arrays in the model's input layout plus optional integer labels.
Folders are read like torchvision's ImageFolder when they hold class subfolders (labels = sorted
subfolder index); a flat folder has no labels.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CalibrationError
from .models.intake import InputSpec
from .preprocess import preprocess_uint8

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
X_KEYS = ("x", "images", "inputs", "data")
Y_KEYS = ("y", "labels", "targets")


@dataclass
class Dataset:
    x: np.ndarray                 # float32, [N, *input_shape[1:]]
    labels: np.ndarray | None     # int64 [N] or None
    source: str

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int):
        for i in range(0, len(self.x), batch_size):
            yield self.x[i: i + batch_size]

    def summary(self) -> dict:
        return {"source": self.source, "samples": len(self.x), "labelled": self.labels is not None,
                "shape": list(self.x.shape[1:]), "mean": round(float(self.x.mean()), 4),
                "std": round(float(self.x.std()), 4)}


def load_data(source: str, input_spec: InputSpec, limit: int | None = None,
              default_split: str = "calib", what: str = "calibration") -> Dataset:
    """Read ``source`` ('zoo', 'zoo:test', a folder, file.npy, file.npz or file.npz:key)."""
    if source == "zoo" or source.startswith("zoo:"):
        data = _zoo(source.partition(":")[2] or default_split, input_spec, what)
    else:
        path, key = _split_key(source)
        if path.is_dir():
            data = _folder(path, input_spec, what)
        elif path.suffix == ".npy":
            data = _npy(path, what)
        elif path.suffix == ".npz":
            data = _npz(path, key, what)
        elif not path.exists():
            raise CalibrationError(f"{what} data {source} does not exist.")
        else:
            raise CalibrationError(f"{what} data must be an image folder, .npy, .npz or 'zoo', got {source}.")
    data = _limit(data, limit)
    _validate(data, input_spec, what)
    return data


def _split_key(source: str) -> tuple[Path, str | None]:
    head, sep, key = source.rpartition(":")
    if sep and head.endswith(".npz"):
        return Path(head), key
    return Path(source), None


def _zoo(split: str, spec: InputSpec, what: str) -> Dataset:
    from .models.zoo import load_split
    if split not in ("calib", "test"):
        raise CalibrationError(f"zoo data has splits 'calib' and 'test', not {split!r}.")
    if not spec.is_image:
        raise CalibrationError(f"zoo {what} data are images; this model takes inputs shaped {spec.shape}.")
    images, labels = load_split(split)
    x = preprocess_uint8(images, tuple(spec.shape[-2:]), spec.shape[1], spec.mean, spec.std)
    return Dataset(x, labels, f"zoo:{split} (Fashion-MNIST)")


def _folder(path: Path, spec: InputSpec, what: str) -> Dataset:
    if not spec.is_image:
        raise CalibrationError(f"an image folder cannot feed a model taking inputs shaped {spec.shape}.")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((path / c).rglob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise CalibrationError(f"{what} folder {path} contains no images "
                               f"({', '.join(sorted(IMAGE_SUFFIXES))}).")
    arrays = [_read_image(f, spec) for f, _ in files]
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return Dataset(np.concatenate(arrays), labels, str(path))


def _read_image(path: Path, spec: InputSpec) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img = img.convert("L" if spec.shape[1] == 1 else "RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError):
        raise CalibrationError(f"{path} is not a readable image (corrupt or truncated).") from None
    return preprocess_uint8(pixels[None], tuple(spec.shape[-2:]), spec.shape[1], spec.mean, spec.std)


def _npy(path: Path, what: str) -> Dataset:
    try:
        x = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise CalibrationError(f"{path} is not a readable .npy array (corrupt, truncated or pickled).") from None
    return Dataset(x, None, str(path))


def _npz(path: Path, key: str | None, what: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise CalibrationError(f"{path} is not a readable .npz archive (corrupt, truncated or pickled).") from None
    if not arrays:
        raise CalibrationError(f"{path} holds no arrays.")
    if key is not None:
        if key not in arrays:
            raise CalibrationError(f"{path} has no array {key!r}; it has {', '.join(sorted(arrays))}.")
        x_key = key
    elif len(arrays) == 1:
        x_key = next(iter(arrays))
    else:
        x_key = next((k for k in X_KEYS if k in arrays), None)
        if x_key is None:
            raise CalibrationError(f"{path} holds several arrays ({', '.join(sorted(arrays))}); "
                                   f"pick one with {path}:KEY.")
    y_key = next((k for k in Y_KEYS if k in arrays and k != x_key), None)
    labels = arrays[y_key].astype(np.int64) if y_key is not None else None
    return Dataset(arrays[x_key], labels, f"{path}:{x_key}")


def _limit(data: Dataset, limit: int | None) -> Dataset:
    if limit is None or len(data) <= limit:
        return data
    labels = data.labels[:limit] if data.labels is not None else None
    return Dataset(data.x[:limit], labels, data.source)


def _validate(data: Dataset, spec: InputSpec, what: str) -> None:
    x = data.x
    if x.dtype.kind != "f":
        raise CalibrationError(f"{what} array {data.source} has dtype {x.dtype}; it must hold "
                               f"already-preprocessed floats (or pass an image folder).")
    if len(x) == 0:
        raise CalibrationError(f"{what} data {data.source} is empty.")
    expected = tuple(spec.shape[1:])
    if tuple(x.shape[1:]) != expected:
        raise CalibrationError(f"{what} data {data.source} has samples shaped {tuple(x.shape[1:])} "
                               f"but the model takes {expected} (N x {' x '.join(map(str, expected))}).")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise CalibrationError(f"{what} data {data.source} contains {bad} NaN/Inf values.")
    if data.labels is not None and len(data.labels) != len(x):
        raise CalibrationError(f"{what} data {data.source} has {len(x)} samples but {len(data.labels)} labels.")
    data.x = np.ascontiguousarray(x, dtype=np.float32)
