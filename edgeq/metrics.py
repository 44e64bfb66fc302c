"""Output comparisons and accuracy, shared by quantize, export, eval and bench."""
from __future__ import annotations

import numpy as np


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
