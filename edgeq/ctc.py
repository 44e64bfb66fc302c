"""Greedy CTC decoding and character/word error rates (numpy and plain Python only).

Model output: class scores ``[N, T, C]`` (batch first, any of logits/log-probs/probs), or a
ragged list of N arrays ``[T_i, C]``. Decoding takes the argmax per frame, collapses repeats and
drops the blank, so "aa" needs a blank between the two frames of "a".

Charset file: UTF-8, one symbol per line in class-id order, the blank left out. The table is the
lines with the blank inserted at index ``blank``: with ``blank=0`` (the PaddleOCR convention) line 1
is class 1, line 2 class 2, ...; with ``blank=C-1`` line 1 is class 0. A line holding a single space
is the space symbol (PaddleOCR's ``use_space_char`` appends it as the last class: add that line
yourself). Only the newline is stripped from each line; empty lines in the middle are an error.

Labels (transcripts as stored): numpy array of str, of bytes (decoded as UTF-8), object array or
list of str/bytes, or integer class-id sequences (a 2-D int array padded with -1, or a list of int
arrays). With a charset everything is compared as text (id labels are mapped through the charset);
without one, predictions and id labels are compared as id sequences, and WER is unavailable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import MetricError


def load_charset(path: str | Path, blank: int = 0) -> list[str]:
    """Class-id -> symbol table; the blank's entry is the empty string."""
    path = Path(path)
    if not path.is_file():
        raise MetricError(f"charset file {path} does not exist.")
    try:
        lines = path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise MetricError(f"charset file {path} is unreadable: {type(exc).__name__}: {exc}.") from None
    lines = [line.rstrip("\r") for line in lines]
    while lines and lines[-1] == "":  # trailing newline(s) at the end of the file
        lines.pop()
    if "" in lines:
        raise MetricError(f"charset file {path} has an empty line {lines.index('') + 1} "
                          "(one symbol per line; a space is a line with a single space).")
    if not 0 <= blank <= len(lines):
        raise MetricError(f"blank index {blank} is outside the {len(lines) + 1} classes of charset {path}.")
    return lines[:blank] + [""] + lines[blank:]


def greedy_decode(output, blank: int = 0) -> list[list[int]]:
    """Best-path decoding: argmax per frame, collapse repeats, drop blanks."""
    samples = list(output) if isinstance(output, (list, tuple)) else [output[i] for i in range(len(output))]
    decoded = []
    for scores in samples:
        ids = np.asarray(scores).argmax(-1).reshape(-1)
        keep = np.ones(len(ids), bool)
        keep[1:] = ids[1:] != ids[:-1]
        decoded.append([int(i) for i in ids[keep] if i != blank])
    return decoded


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (str, list or tuple)."""
    if a == b:
        return 0
    start = 0  # common prefix and suffix cost nothing; good models leave little else
    while start < min(len(a), len(b)) and a[start] == b[start]:
        start += 1
    a, b = a[start:], b[start:]
    while a and b and a[-1] == b[-1]:
        a, b = a[:-1], b[:-1]
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def error_rate(hypotheses: list, references: list) -> float:
    """Total edit distance / total reference length, in percent (0 reference tokens count as 1)."""
    errors = sum(edit_distance(h, r) for h, r in zip(hypotheses, references))
    return 100.0 * errors / max(sum(len(r) for r in references), 1)


def ctc_error(name: str, output, labels, table: list[str] | None, blank: int, words: bool) -> float:
    """CER (``words=False``) or WER of greedy-decoded ``output`` against ``labels``, in percent."""
    n = len(output)
    num_classes = np.asarray(output[0]).shape[-1] if n else 0
    if n and not 0 <= blank < num_classes:
        raise MetricError(f"metric {name}: blank index {blank} is outside the model's {num_classes} classes.")
    if table is not None and n and num_classes != len(table):
        raise MetricError(f"metric {name}: the model has {num_classes} classes but the charset gives "
                          f"{len(table)} ({len(table) - 1} symbols + blank).")
    refs = _label_sequences(name, labels, n)
    hyps = greedy_decode(output, blank)
    if table is not None:
        refs = [r if isinstance(r, str) else _to_text(name, r, table) for r in refs]
        hyps = [_to_text(name, h, table) for h in hyps]
    elif any(isinstance(r, str) for r in refs):
        raise MetricError(f"metric {name} compares against text transcripts and needs a charset.")
    elif words:
        raise MetricError(f"metric {name} needs a charset to split predictions into words.")
    else:
        hyps = [tuple(h) for h in hyps]
    if words:
        hyps, refs = [h.split() for h in hyps], [r.split() for r in refs]
    return error_rate(hyps, refs)


def sequence_accuracy(name: str, output, labels, table: list[str] | None, blank: int) -> float:
    """Fraction of samples whose greedy decode equals the transcript exactly (a spoken command or digit
    string is right or wrong as a whole)."""
    refs = _label_sequences(name, labels, len(output))
    hyps = greedy_decode(output, blank)
    if table is not None:
        refs = [r if isinstance(r, str) else _to_text(name, r, table) for r in refs]
        hyps = [_to_text(name, h, table) for h in hyps]
    elif any(isinstance(r, str) for r in refs):
        raise MetricError(f"metric {name} compares against text transcripts and needs a charset.")
    else:
        hyps = [tuple(h) for h in hyps]
    return float(np.mean([h == r for h, r in zip(hyps, refs)])) if refs else 0.0


def decode_agreement(output, reference, blank: int) -> float:
    """Fraction of samples whose greedy decode equals the FP32 model's greedy decode."""
    hyps, refs = greedy_decode(output, blank), greedy_decode(reference, blank)
    return float(np.mean([h == r for h, r in zip(hyps, refs)])) if refs else 0.0


def _to_text(name: str, ids, table: list[str]) -> str:
    if ids and max(ids) >= len(table):
        raise MetricError(f"metric {name}: class id {max(ids)} is outside the charset's {len(table)} classes.")
    return "".join(table[i] for i in ids)


def _label_sequences(name: str, labels, n: int) -> list:
    """Transcripts as str, or class-id sequences (negative values = padding) as tuples."""
    if labels is None:
        raise MetricError(f"metric {name} needs transcripts as labels, but there are none.")
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu" and labels.ndim == 2:
        items = list(labels)
    elif isinstance(labels, np.ndarray) and labels.ndim == 1 or isinstance(labels, (list, tuple)):
        items = list(labels)
    else:
        shape = getattr(labels, "shape", None)
        raise MetricError(f"metric {name} needs one transcript per sample, got {type(labels).__name__}"
                          + (f" of shape {shape}." if shape is not None else "."))
    if len(items) != n:
        raise MetricError(f"metric {name} got {len(items)} transcripts for {n} samples.")
    return [_one_label(name, item) for item in items]


def _one_label(name: str, item):
    if isinstance(item, str):
        return item
    if isinstance(item, bytes):
        try:
            return item.decode("utf-8")
        except UnicodeDecodeError:
            raise MetricError(f"metric {name}: transcript {item[:20]!r} is not valid UTF-8.") from None
    ids = np.asarray(item)
    if ids.dtype.kind not in "iu" or ids.ndim > 1:
        raise MetricError(f"metric {name} needs str transcripts or integer id sequences, "
                          f"got {type(item).__name__} (dtype {ids.dtype}).")
    return tuple(int(v) for v in ids.reshape(-1) if v >= 0)
