"""Calibration and evaluation data: image folders, .npy/.npz arrays, folders of .npy samples, the zoo sets.

Everything comes out as ``Samples`` (one array per model input; per-sample lengths where a dynamic axis
varies) plus optional labels. Calibration never needs labels. Labels are kept *as stored* for the
metric that reads them (transcripts, boxes, one-hot rows …); only 1-D integer labels count as class ids.
Folders are read like torchvision's ImageFolder when they hold class subfolders (labels = sorted
subfolder index); a flat folder has no labels.

Sources: ``zoo``/``zoo:test`` (Fashion-MNIST images, or spoken digits for a speech model); an image folder; a
folder of .wav clips (speech models: log-mel features by ``edgeq.audio``); a folder of .npy files (one sample
each, lengths may differ along the dynamic axis); ``file.npy``; ``file.npz`` (x/images/inputs/data, labels from
y/labels/targets, per-sample ``lengths``); ``file.npz:KEY``; ``file.npz:KEY1,KEY2`` for a model with
two inputs; ``file.npz:x=KEY,y=KEY`` to name inputs and labels explicitly. ``labels=`` (--labels) takes
``file.npz:KEY``, ``file.npy`` or a ``.txt`` file with one label per line.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .calibsets import is_definition, read_definition
from .errors import CalibrationError
from .models.intake import InputSpec
from .preprocess import preprocess_uint8
from .samples import Samples

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
X_KEYS = ("x", "images", "inputs", "data")
Y_KEYS = ("y", "labels", "targets")
LENGTH_KEYS = ("lengths", "length", "x_lengths")


@dataclass
class Dataset:
    samples: Samples
    labels: object | None         # as stored; int64 [N] when they are class ids
    source: str
    metric: tuple[str, str | None] | None = None   # the set's own metric (name, charset) when it has one

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def x(self) -> np.ndarray:
        """The first input (image models have only this one)."""
        return self.samples.inputs[0]

    @property
    def class_labels(self) -> np.ndarray | None:
        return self.labels if is_class_ids(self.labels) else None

    def batches(self, batch_size: int):
        for _, arrays in self.samples.groups(batch_size):
            yield arrays

    def summary(self) -> dict:
        return {"source": self.source, "labelled": self.labels is not None,
                "labels": label_kind(self.labels), **self.samples.summary()}


def is_class_ids(labels) -> bool:
    return isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu"


def label_kind(labels) -> str | None:
    if labels is None:
        return None
    if is_class_ids(labels):
        return "class ids"
    if isinstance(labels, np.ndarray):
        return f"{labels.dtype} {list(labels.shape)}"
    return type(labels).__name__


def load_data(source: str, input_specs, limit: int | None = None, default_split: str = "calib",
              what: str = "calibration", labels: str | None = None) -> Dataset:
    """Read ``source`` for a model taking ``input_specs`` (one InputSpec or one per input)."""
    specs = (input_specs,) if isinstance(input_specs, InputSpec) else tuple(input_specs)
    if is_definition(source):
        return _defined(read_definition(source), specs, limit, default_split, what, labels)
    if source == "zoo" or source.startswith("zoo:"):
        data = _zoo(source.partition(":")[2] or default_split, specs[0], what)
    else:
        path, key = _split_key(source)
        if not path.exists():
            raise CalibrationError(f"{what} data {path} does not exist.")
        if path.is_dir():
            data = _folder(path, specs[0], what)
        elif path.suffix == ".npy":
            data = Dataset(Samples((_read_npy(path, what),)), None, str(path))
        elif path.suffix == ".npz":
            data = _npz(path, key, specs, what)
        else:
            raise CalibrationError(f"{what} data must be an image folder, a folder of .npy samples, .npy, .npz "
                                   f"or 'zoo', got {source}.")
    if labels is not None:
        data.labels = read_labels(labels)
    data = _limit(data, limit)
    _validate(data, specs, what)
    return data


def _defined(definition, specs, limit: int | None, default_split: str, what: str, labels: str | None) -> Dataset:
    """A set described by a calib/*.yaml file: its source, its selection of samples, then ``limit``."""
    data = load_data(definition.source, specs, None, default_split, what, labels or definition.labels_source())
    index = definition.select(len(data))
    picked = data.labels
    if picked is not None:
        picked = picked[index] if isinstance(picked, np.ndarray) else [picked[i] for i in index]
    data = Dataset(data.samples.take(index), picked, f"{definition.name} ({data.source})", data.metric)
    return _limit(data, limit)


def check_exists(source: str, what: str) -> None:
    """A data source that names a file or folder must exist: said before any work that would need it."""
    if source == "zoo" or source.startswith("zoo:"):
        return
    path = Path(source) if is_definition(source) else _split_key(source)[0]
    if not path.exists():
        raise CalibrationError(f"{what} data {path} does not exist.")


def _split_key(source: str) -> tuple[Path, str | None]:
    head, sep, key = source.rpartition(":")
    if sep and head.endswith(".npz"):
        return Path(head), key
    return Path(source), None


def _zoo(split: str, spec: InputSpec, what: str) -> Dataset:
    from .models.zoo import load_split
    if split not in ("calib", "test"):
        raise CalibrationError(f"zoo data has splits 'calib' and 'test', not {split!r}.")
    if spec.features is not None:
        return _zoo_speech(split, spec, what)
    if not spec.is_image:
        raise CalibrationError(f"zoo {what} data are images; this model takes inputs shaped {spec.shape}.")
    images, labels = load_split(split)
    x = preprocess_uint8(images, tuple(spec.shape[-2:]), spec.shape[1], spec.mean, spec.std)
    return Dataset(Samples((x,)), labels, f"zoo:{split} (Fashion-MNIST)")


def _zoo_speech(split: str, spec: InputSpec, what: str) -> Dataset:
    from .models.zoo import SPEECH_METRIC, SPEECH_ZOO, load_speech_split
    if len(spec.shape) != 3 or spec.shape[2] != spec.features.get("n_mels"):
        raise CalibrationError(f"zoo speech {what} data are log-mel features; this model takes inputs shaped "
                               f"{spec.shape}.")
    x, lengths, labels = load_speech_split(split)
    voices = "training voices" if split == "calib" else "held-out voices"
    charset = next(iter(SPEECH_ZOO.values())).charset_path
    return Dataset(Samples((x,), lengths, 1), labels, f"zoo:{split} (spoken digits, {voices})",
                   metric=(SPEECH_METRIC, str(charset)))


def _folder(path: Path, spec: InputSpec, what: str) -> Dataset:
    arrays = sorted(p for p in path.iterdir() if p.suffix == ".npy")
    if arrays:
        return _npy_folder(path, arrays, spec, what)
    if spec.features is not None:
        return _audio_folder(path, spec, what)
    if not spec.is_image:
        raise CalibrationError(f"an image folder cannot feed a model taking inputs shaped {spec.shape}; "
                               f"give a folder of .npy samples or an .npz archive.")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        files = [(f, i) for i, c in enumerate(classes) for f in sorted((path / c).rglob("*"))
                 if f.suffix.lower() in IMAGE_SUFFIXES]
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise CalibrationError(f"{what} folder {path} contains no images "
                               f"({', '.join(sorted(IMAGE_SUFFIXES))}) and no .npy samples.")
    images = [_read_image(f, spec) for f, _ in files]
    labels = np.array([label for _, label in files], dtype=np.int64) if classes else None
    return Dataset(Samples((np.concatenate(images),)), labels, str(path))


def _audio_folder(path: Path, spec: InputSpec, what: str) -> Dataset:
    """One .wav clip per sample (any rate and channel count: mixed down and resampled), as log-mel features."""
    from .audio import AudioError, Features, clip_features
    clips = sorted(p for p in path.iterdir() if p.suffix.lower() == ".wav")
    if not clips:
        raise CalibrationError(f"{what} folder {path} contains no audio (.wav clips) and no .npy samples.")
    features = Features.from_dict(spec.features)
    max_frames = spec.dynamic[2] if spec.dynamic and spec.dynamic[0] == 1 else None
    try:
        arrays = [clip_features(clip, features, max_frames) for clip in clips]
    except AudioError as exc:
        raise CalibrationError(f"{what} data: {exc}") from None
    return Dataset(_pad(arrays, spec, str(path), what), None, f"{path} ({len(clips)} clips)")


def _npy_folder(path: Path, files: list[Path], spec: InputSpec, what: str) -> Dataset:
    """One sample per file, shaped like the input without its batch axis; lengths may differ along the
    dynamic axis (stored padded, with each sample's length)."""
    arrays = [_read_npy(f, what) for f in files]
    ndim = {a.ndim for a in arrays}
    if ndim != {len(spec.shape) - 1}:
        raise CalibrationError(f"the .npy files in {path} must each hold one sample shaped like "
                               f"{'x'.join(map(str, spec.shape[1:]))} (no batch axis); {files[0].name} is "
                               f"shaped {'x'.join(map(str, arrays[0].shape))}.")
    return Dataset(_pad(arrays, spec, str(path), what), None, str(path))


def _pad(arrays: list[np.ndarray], spec: InputSpec, source: str, what: str) -> Samples:
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        return Samples((np.stack(arrays),))
    if spec.dynamic is None:
        raise CalibrationError(f"{what} data {source} holds samples of different shapes "
                               f"({', '.join(sorted({'x'.join(map(str, s)) for s in shapes}))}) but the model has "
                               f"no dynamic axis; add --dynamic AXIS:MIN..MAX.")
    axis = spec.dynamic[0]
    other = {s[:axis - 1] + s[axis:] for s in shapes}
    if len(other) > 1:
        raise CalibrationError(f"{what} data {source}: samples differ in more than the dynamic axis {axis}.")
    lengths = np.array([a.shape[axis - 1] for a in arrays], dtype=np.int64)
    padded = np.zeros((len(arrays), *max(shapes, key=lambda s: s[axis - 1])), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        index = [i] + [slice(None)] * a.ndim
        index[axis] = slice(0, a.shape[axis - 1])
        padded[tuple(index)] = a
    return Samples((padded,), lengths, axis)


def _read_image(path: Path, spec: InputSpec) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img = img.convert("L" if spec.shape[1] == 1 else "RGB")
            pixels = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError):
        raise CalibrationError(f"{path} is not a readable image (corrupt or truncated).") from None
    return preprocess_uint8(pixels[None], tuple(spec.shape[-2:]), spec.shape[1], spec.mean, spec.std)


def _read_npy(path: Path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise CalibrationError(f"{path} is not a readable .npy array (corrupt, truncated or pickled).") from None


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise CalibrationError(f"{path} is not a readable .npz archive (corrupt, truncated or pickled).") from None
    if not arrays:
        raise CalibrationError(f"{path} holds no arrays.")
    return arrays


def _npz(path: Path, key: str | None, specs: tuple[InputSpec, ...], what: str) -> Dataset:
    arrays = _read_npz(path)
    x_keys, y_key = _npz_keys(path, key, arrays, specs)
    for k in [*x_keys, *([y_key] if y_key else [])]:
        if k not in arrays:
            raise CalibrationError(f"{path} has no array {k!r}; it has {', '.join(sorted(arrays))}.")
    if y_key is None and key is None:  # only an implicit pick; an explicit KEY list names inputs only
        y_key = next((k for k in Y_KEYS if k in arrays and k not in x_keys), None)
    length_key = next((k for k in LENGTH_KEYS if k in arrays and k not in x_keys), None)
    samples = Samples(tuple(arrays[k] for k in x_keys))
    if length_key is not None:
        samples = _with_lengths(samples, arrays[length_key], specs[0], f"{path}:{length_key}", what)
    labels = _as_labels(arrays[y_key]) if y_key is not None else None
    return Dataset(samples, labels, f"{path}:{','.join(x_keys)}")


def _npz_keys(path: Path, key: str | None, arrays: dict, specs) -> tuple[list[str], str | None]:
    """Which arrays are the inputs (in model order) and which the labels."""
    if key is not None:
        parts = [p.strip() for p in key.split(",") if p.strip()]
        named = dict(p.split("=", 1) for p in parts if "=" in p)
        if named:
            if set(named) - {"x", "y"} or len(named) != len(parts):
                raise CalibrationError(f"{path}:{key}: name the arrays as KEY, KEY1,KEY2 (one per model input) "
                                       f"or x=KEY,y=KEY (input and labels).")
            return [named.get("x") or _default_x(path, arrays)], named.get("y")
        return parts, None
    if len(specs) > 1:
        names = [s.name for s in specs]
        if all(n in arrays for n in names):
            return names, None
        raise CalibrationError(f"the model takes {len(specs)} inputs ({', '.join(names)}); {path} has "
                               f"{', '.join(sorted(arrays))}: name them in order with {path}:KEY1,KEY2.")
    if len(arrays) == 1:
        return [next(iter(arrays))], None
    return [_default_x(path, arrays)], None


def _default_x(path: Path, arrays: dict) -> str:
    x_key = next((k for k in X_KEYS if k in arrays), None)
    if x_key is None:
        raise CalibrationError(f"{path} holds several arrays ({', '.join(sorted(arrays))}); "
                               f"pick one with {path}:KEY.")
    return x_key


def _with_lengths(samples: Samples, lengths: np.ndarray, spec: InputSpec, source: str, what: str) -> Samples:
    if spec.dynamic is None:
        raise CalibrationError(f"{what} data {source} gives per-sample lengths but the model has no dynamic axis; "
                               f"add --dynamic AXIS:MIN..MAX.")
    axis = spec.dynamic[0]
    lengths = np.asarray(lengths)
    padded_to = samples.inputs[0].shape[axis]
    if lengths.shape != (len(samples),) or lengths.dtype.kind not in "iu" or lengths.min() < 1 \
            or lengths.max() > padded_to:
        raise CalibrationError(f"{what} data {source} must hold one integer length per sample, between 1 and "
                               f"{padded_to} (the padded size of axis {axis}).")
    return Samples(samples.inputs, lengths.astype(np.int64), axis)


def _as_labels(values: np.ndarray):
    """Integer class ids become int64; anything else (strings, floats, one-hot, 2-D) stays as stored."""
    return values.astype(np.int64) if values.ndim == 1 and values.dtype.kind in "iu" else values


def read_labels(source: str):
    """--labels: ``file.npz:KEY``, ``file.npy`` or a ``.txt`` file with one label per line (transcripts)."""
    path, key = _split_key(source)
    if not path.is_file():
        raise CalibrationError(f"labels {source} do not exist.")
    if path.suffix == ".txt":
        try:
            return np.array(path.read_text(encoding="utf-8").splitlines())
        except UnicodeDecodeError:
            raise CalibrationError(f"labels {path} are not UTF-8 text.") from None
    if path.suffix == ".npy":
        return _as_labels(_read_npy(path, "labels"))
    if path.suffix == ".npz":
        arrays = _read_npz(path)
        if key is None:
            key = next((k for k in Y_KEYS if k in arrays), None) or (next(iter(arrays)) if len(arrays) == 1 else None)
        if key not in arrays:
            raise CalibrationError(f"labels {path} have no array {key!r}; it has {', '.join(sorted(arrays))}: "
                                   f"pick one with {path}:KEY.")
        return _as_labels(arrays[key])
    raise CalibrationError(f"labels must be file.npz:KEY, a .npy array or a .txt file (one per line), got {source}.")


def _limit(data: Dataset, limit: int | None) -> Dataset:
    if limit is None or len(data) <= limit:
        return data
    labels = data.labels[:limit] if data.labels is not None else None
    return Dataset(data.samples.take(slice(0, limit)), labels, data.source, data.metric)


def _validate(data: Dataset, specs: tuple[InputSpec, ...], what: str) -> None:
    inputs = data.samples.inputs
    if len(inputs) != len(specs):
        raise CalibrationError(f"{what} data {data.source} gives {len(inputs)} input arrays but the model takes "
                               f"{len(specs)} ({', '.join(s.name for s in specs)}).")
    counts = {len(a) for a in inputs}
    if len(counts) > 1:
        raise CalibrationError(f"{what} data {data.source}: the input arrays hold different numbers of samples "
                               f"({', '.join(str(len(a)) for a in inputs)}).")
    if len(data) == 0:
        raise CalibrationError(f"{what} data {data.source} is empty.")
    checked = tuple(_check_input(a, s, data.source, what, i == 0 and data.samples.lengths is not None)
                    for i, (a, s) in enumerate(zip(inputs, specs)))
    data.samples = Samples(checked, data.samples.lengths, data.samples.axis)
    lengths, dynamic = data.samples.lengths, specs[0].dynamic
    if lengths is not None and not (dynamic[1] <= lengths.min() and lengths.max() <= dynamic[2]):
        raise CalibrationError(f"{what} data {data.source} has samples {lengths.min()}..{lengths.max()} long on "
                               f"axis {dynamic[0]}, outside the dynamic range {dynamic[1]}..{dynamic[2]}.")
    if data.labels is not None and len(data.labels) != len(data):
        raise CalibrationError(f"{what} data {data.source} has {len(data)} samples but {len(data.labels)} labels.")


def _check_input(x: np.ndarray, spec: InputSpec, source: str, what: str, padded: bool) -> np.ndarray:
    integer = x.dtype.kind in "iu"
    if x.dtype.kind not in "fiu" or (integer and spec.is_image):
        raise CalibrationError(f"{what} array {source} has dtype {x.dtype}; it must hold "
                               f"already-preprocessed floats (or pass an image folder).")
    expected = tuple(spec.shape[1:])
    if not _shape_fits(tuple(x.shape[1:]), expected, spec.dynamic, padded):
        allowed = (f" (axis {spec.dynamic[0]} may range {spec.dynamic[1]}..{spec.dynamic[2]})"
                   if spec.dynamic else "")
        raise CalibrationError(f"{what} data {source} has samples shaped {tuple(x.shape[1:])} "
                               f"but the model takes {expected} (N x {' x '.join(map(str, expected))}){allowed}.")
    if integer:
        return np.ascontiguousarray(x, dtype=np.int64)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise CalibrationError(f"{what} data {source} contains {bad} NaN/Inf values.")
    return np.ascontiguousarray(x, dtype=np.float32)


def _shape_fits(shape: tuple, expected: tuple, dynamic, padded: bool) -> bool:
    if len(shape) != len(expected):
        return False
    for i, (got, want) in enumerate(zip(shape, expected), start=1):
        if dynamic and i == dynamic[0]:
            if not (padded or dynamic[1] <= got <= dynamic[2]):
                return False
        elif got != want:
            return False
    return True
