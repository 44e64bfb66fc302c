"""Output comparisons, accuracy metrics and user metric plug-ins (numpy only, no torch).

Outputs: a list with one entry per model output. An entry is an array ``[N, ...]`` or, for
variable-length models, a list of N per-sample arrays (no batch axis) of possibly different shapes.

Units and drops (``Metric.drop(reference_score, score)``, positive = worse than the reference):

* ``top1``/``top5`` return fractions 0..1, unit "pp": drop and display are x100 (percentage points).
* ``ctc-cer``/``ctc-wer`` return error rates in percent (0..100, lower is better), unit "points".
* ``ctc-seq`` (sequence accuracy: the greedy decode equals the transcript) and ``ctc-agreement`` (it equals
  the FP32 model's decode; no labels needed) return fractions, unit "pp".
* ``cosine`` (unit "", ideal 1.0) and ``sqnr`` (unit "dB") compare against the FP32 outputs and need
  no labels: cosine averages over all outputs, sqnr takes the worst (minimum) output.
* user metrics: drop = ref - value if ``higher_is_better`` else value - ref, in their own units.

A metric function is called as ``fn(outputs, second)`` where ``second`` is the FP32 reference
outputs if ``needs_reference`` else the labels as stored (None if there are none). User functions
get outputs as the model returns them: the single entry for a one-output model, else the list.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import ctc
from .errors import MetricError

Outputs = list


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity of two output batches."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``reference``, in dB."""
    noise = np.mean((reference.astype(np.float64) - test) ** 2)
    signal = np.mean(reference.astype(np.float64) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(signal / noise))


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.reshape(len(a), -1).argmax(1) == b.reshape(len(b), -1).argmax(1)))


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(outputs.reshape(len(outputs), -1).argmax(1) == labels))


def compare(reference: np.ndarray, test: np.ndarray) -> dict:
    return {"samples": int(len(reference)),
            "max_abs_diff": float(np.max(np.abs(reference - test))),
            "cosine": round(cosine(reference, test), 6),
            "sqnr_db": round(sqnr_db(reference, test), 2),
            "top1_agreement": round(top1_agreement(reference, test), 4)}


# ---- several outputs, ragged outputs ---------------------------------------------------------

def as_outputs(outputs) -> Outputs:
    """A bare array is a one-output model; a tuple becomes a list."""
    return [outputs] if isinstance(outputs, np.ndarray) else list(outputs)


def is_ragged(entry) -> bool:
    return isinstance(entry, (list, tuple))


def per_sample(entry) -> list[np.ndarray]:
    """One array per sample, without the batch axis."""
    if is_ragged(entry):
        return [np.asarray(s) for s in entry]
    return [entry[i] for i in range(len(entry))]


def _pairs(reference, test) -> list[tuple[np.ndarray, np.ndarray]]:
    ref, out = per_sample(reference), per_sample(test)
    if len(ref) != len(out):
        raise ValueError(f"{len(ref)} reference samples but {len(out)} test samples.")
    for i, (r, t) in enumerate(zip(ref, out)):
        if r.shape != t.shape:
            raise ValueError(f"sample {i} has shape {r.shape} in the reference but {t.shape} in the test.")
    return list(zip(ref, out))


def _cosine_entry(reference, test) -> float:
    """Mean over samples of the per-sample cosine (ragged entries too)."""
    if not (is_ragged(reference) or is_ragged(test)):
        return cosine(reference, test)
    return float(np.mean([cosine(r[None], t[None]) for r, t in _pairs(reference, test)]))


def _sqnr_entry(reference, test) -> float:
    """SQNR over all elements of all samples."""
    pairs = _pairs(reference, test)
    return sqnr_db(np.concatenate([r.reshape(-1) for r, _ in pairs]),
                   np.concatenate([t.reshape(-1) for _, t in pairs]))


def _compare_ragged(reference, test) -> dict:
    # top1 agreement of a ragged entry compares the argmax over the last axis at every position
    # (e.g. per time step), pooled over all positions of all samples.
    pairs = _pairs(reference, test)
    diffs = [np.max(np.abs(r.astype(np.float64) - t), initial=0.0) for r, t in pairs]
    agree = np.concatenate([(r.argmax(-1) == t.argmax(-1)).reshape(-1) for r, t in pairs])
    return {"samples": len(pairs),
            "max_abs_diff": float(max(diffs, default=0.0)),
            "cosine": round(_cosine_entry(reference, test), 6),
            "sqnr_db": round(_sqnr_entry(reference, test), 2),
            "top1_agreement": round(float(np.mean(agree)), 4)}


def _compare_entry(reference, test) -> dict:
    if is_ragged(reference) or is_ragged(test):
        return _compare_ragged(reference, test)
    return compare(reference, test)


def compare_outputs(reference: Outputs, test: Outputs) -> dict:
    """Per-output comparison under "outputs"; output 0's numbers also at the top level."""
    reference, test = as_outputs(reference), as_outputs(test)
    if len(reference) != len(test):
        raise ValueError(f"{len(reference)} reference outputs but {len(test)} test outputs.")
    per_output = [{"name": i, **_compare_entry(r, t)} for i, (r, t) in enumerate(zip(reference, test))]
    top = {k: v for k, v in per_output[0].items() if k != "name"} if per_output else {}
    return {**top, "outputs": per_output}


# ---- the Metric type ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """A named score over model outputs; see the module docstring for how ``fn`` is called."""

    name: str
    fn: Callable
    higher_is_better: bool = True
    needs_labels: bool = True
    needs_reference: bool = False
    unit: str = ""
    builtin: bool = field(default=False, repr=False)  # built-ins always get the full Outputs list
    ctc_blank: int | None = None   # CTC metrics: the blank class (reports add greedy-decode agreement with FP32)

    def score(self, outputs: Outputs, labels=None, reference: Outputs | None = None) -> float:
        """Call ``fn`` and return its result as a float; anything else raises MetricError."""
        outputs = as_outputs(outputs)
        if self.needs_reference and reference is None:
            raise MetricError(f"metric {self.name} compares against FP32 outputs, but none were given.")
        if self.needs_labels and not self.needs_reference and labels is None:
            raise MetricError(f"metric {self.name} needs labels, but the data has none.")
        second = as_outputs(reference) if self.needs_reference else labels
        if not self.builtin:
            outputs = _as_returned(outputs)
            second = _as_returned(second) if self.needs_reference else second
        try:
            value = self.fn(outputs, second)
        except MetricError:
            raise
        except Exception as exc:  # noqa: BLE001 - user code
            detail = str(exc).strip().rstrip(".")
            raise MetricError(f"metric {self.name} raised {type(exc).__name__}"
                              + (f": {detail}." if detail else ".")) from None
        return _as_number(self.name, value, allow_inf=self.builtin)  # sqnr of identical outputs is inf

    def display(self, value: float) -> float:
        """The value in display units: fractions become percent for "pp" metrics."""
        return value * 100.0 if self.unit == "pp" else value

    def drop(self, reference_score: float, score: float) -> float:
        """How much worse ``score`` is than ``reference_score``, in display units (positive = worse).

        sqnr's FP32 reference score is inf, so its drop is inf for any lossy model: budget on a
        minimum sqnr instead.
        """
        if reference_score == score:  # also inf == inf (sqnr of identical outputs)
            return 0.0
        diff = reference_score - score if self.higher_is_better else score - reference_score
        return self.display(diff)


def _as_returned(outputs: Outputs):
    return outputs[0] if len(outputs) == 1 else outputs


def _as_number(name: str, value, allow_inf: bool = False) -> float:
    """A finite float from a Python/numpy scalar or a one-element array, else MetricError."""
    number = None
    if not isinstance(value, (str, bytes, bool, np.bool_)) and value is not None:
        try:
            arr = np.asarray(value)
        except Exception:  # noqa: BLE001 - e.g. a CUDA tensor
            arr = None
        if arr is not None and arr.dtype.kind in "iuf" and arr.size == 1:
            number = float(arr.reshape(-1)[0])
    if number is None:
        shape = getattr(value, "shape", None)
        shown = f"an array of shape {tuple(shape)}" if shape is not None and len(shape) else repr(value)[:40]
        raise MetricError(f"metric {name} returned {shown} ({type(value).__name__}), not a number.")
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise MetricError(f"metric {name} returned {number} ({type(value).__name__}), not a finite number.")
    return number


# ---- built-ins ---------------------------------------------------------------------------------

def _logits(name: str, entry) -> np.ndarray:
    """Output 0 as ``[N, C]``; a ragged list is stacked when all samples share one shape."""
    if is_ragged(entry):
        shapes = {np.shape(s) for s in entry}
        if len(shapes) > 1:
            raise MetricError(f"metric {name} needs one class-score row per sample, "
                              f"but output 0 is ragged ({len(shapes)} different shapes).")
        entry = np.stack([np.asarray(s) for s in entry])
    return np.asarray(entry).reshape(len(entry), -1)


def _class_labels(name: str, labels, n: int) -> np.ndarray:
    try:
        arr = np.asarray(labels)
    except ValueError:
        raise MetricError(f"metric {name} needs integer class labels, got a ragged "
                          f"{type(labels).__name__}.") from None
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise MetricError(f"metric {name} needs integer class labels, got a {arr.ndim}-D "
                          f"{type(labels).__name__} (dtype {arr.dtype}).")
    if len(arr) != n:
        raise MetricError(f"metric {name} got {len(arr)} labels for {n} samples.")
    return arr


def _topk(k: int, name: str):
    def fn(outputs: Outputs, labels) -> float:
        logits = _logits(name, outputs[0])
        labels = _class_labels(name, labels, len(logits))
        kk = min(k, logits.shape[1])
        best = np.argpartition(-logits, kk - 1, axis=1)[:, :kk]
        return float(np.mean((best == labels[:, None]).any(1)))
    return fn


def _cosine_all(outputs: Outputs, reference: Outputs) -> float:
    return float(np.mean([_cosine_entry(r, t) for r, t in _output_pairs(reference, outputs)]))


def _sqnr_all(outputs: Outputs, reference: Outputs) -> float:
    return float(min(_sqnr_entry(r, t) for r, t in _output_pairs(reference, outputs)))


def _output_pairs(reference: Outputs, outputs: Outputs) -> list:
    if len(reference) != len(outputs):
        raise MetricError(f"the model returned {len(outputs)} outputs but the FP32 reference has "
                          f"{len(reference)}.")
    return list(zip(reference, outputs))


def _ctc(name: str, table: list[str] | None, blank: int, words: bool):
    def fn(outputs: Outputs, labels) -> float:
        return ctc.ctc_error(name, outputs[0], labels, table, blank, words)
    return fn


BUILTIN_METRICS = ("top1", "top5", "cosine", "sqnr", "ctc-cer", "ctc-wer", "ctc-seq", "ctc-agreement")


def _builtin(name: str, charset, blank: int) -> Metric:
    if name in ("top1", "top5"):
        return Metric(name, _topk(int(name[3:]), name), unit="pp", builtin=True)
    if name == "cosine":
        return Metric(name, _cosine_all, needs_labels=False, needs_reference=True, builtin=True)
    if name == "sqnr":
        return Metric(name, _sqnr_all, needs_labels=False, needs_reference=True, unit="dB", builtin=True)
    if name == "ctc-agreement":
        return Metric(name, lambda outputs, reference: ctc.decode_agreement(outputs[0], reference[0], blank),
                      needs_labels=False, needs_reference=True, unit="pp", builtin=True, ctc_blank=blank)
    table = ctc.load_charset(charset, blank) if charset is not None else None
    if name == "ctc-seq":
        return Metric(name, lambda outputs, labels: ctc.sequence_accuracy(name, outputs[0], labels, table, blank),
                      unit="pp", builtin=True, ctc_blank=blank)
    return Metric(name, _ctc(name, table, blank, name == "ctc-wer"), higher_is_better=False,
                  unit="points", builtin=True, ctc_blank=blank)


# ---- lookup and plug-ins -----------------------------------------------------------------------

def get_metric(spec: str, charset: str | Path | None = None, blank: int = 0) -> Metric:
    """A built-in name, ``path/to/file.py:fn`` or ``package.module:fn``.

    ``charset`` and ``blank`` configure ctc-cer/ctc-wer and are ignored by other metrics.
    """
    if spec in BUILTIN_METRICS:
        return _builtin(spec, charset, blank)
    if ":" not in spec:
        hint = f" (write {spec}:function)" if spec.endswith(".py") else ""
        raise MetricError(f"unknown metric {spec!r}{hint}; built-ins are {', '.join(BUILTIN_METRICS)}, "
                          "or give path/to/file.py:function or package.module:function.")
    target, fn_name = spec.rsplit(":", 1)
    is_file = target.endswith(".py") or "/" in target or "\\" in target
    module = _load_file(target) if is_file else _load_module(target)
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise MetricError(f"{target} has no function {fn_name!r}.")
    if not callable(fn):
        raise MetricError(f"{spec} is not callable (it is a {type(fn).__name__}).")
    flags = {attr: getattr(fn, attr, default)
             for attr, default in (("higher_is_better", True), ("needs_labels", True), ("needs_reference", False))}
    for attr, flag in flags.items():
        if not isinstance(flag, (bool, np.bool_)):
            raise MetricError(f"{fn_name}.{attr} in {target} must be True or False, not {flag!r}.")
    return Metric(fn_name, fn, unit=str(getattr(fn, "unit", "")), **{k: bool(v) for k, v in flags.items()})


def _load_file(target: str):
    from .usercode import import_file
    return import_file(Path(target), "edgeq_metric", MetricError, "metric file")


def _load_module(target: str):
    try:
        return importlib.import_module(target)
    except ImportError as exc:
        raise MetricError(f"cannot import metric module {target!r}: {exc}.") from None
    except Exception as exc:  # noqa: BLE001 - user code
        raise MetricError(f"importing metric module {target!r} failed: {type(exc).__name__}: {exc}.") from None


def metric_for(dataset, fallback: str | None = None) -> "Metric | None":
    """The metric a data set is scored with when the user names none: the set's own (the speech zoo's
    sequence accuracy), top-1 for class ids, else ``fallback`` (None: no metric)."""
    if getattr(dataset, "metric", None):
        name, charset = dataset.metric
        return get_metric(name, charset)
    name = default_metric(dataset.labels if dataset is not None else None) or fallback
    return get_metric(name) if name else None


def default_metric(labels) -> str | None:
    """"top1" for 1-D integer class ids; None otherwise (callers fall back to cosine)."""
    if labels is None:
        return None
    try:
        arr = np.asarray(labels)
    except ValueError:
        return None
    return "top1" if arr.ndim == 1 and arr.dtype.kind in "iu" and arr.size else None
