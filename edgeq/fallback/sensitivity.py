"""Sensitivity of the quantized model to each unit and each block.

For every unit: the final-output error when only that unit is quantized (everything else float) and
when only that unit is left in float (everything else quantized), as SQNR (dB) and KL divergence of
the softmax outputs against the float model; with labelled evaluation data also the top-1 change.
The ranking (most sensitive first) orders units by their only-quantized SQNR.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..metrics import sqnr_db, top1
from ..samples import Outputs, Samples, run_graph
from .units import FloatSwitch, Unit


@dataclass
class Probe:
    """Inputs to judge the model on, its float outputs, and class labels when there are any.

    Sensitivity scores all outputs together (each sample's outputs flattened side by side), so a
    detection head's boxes count as much as its scores; top-1 reads output 0."""

    samples: Samples
    float_out: Outputs
    labels: np.ndarray | None
    batch_size: int

    def outputs(self, gm) -> Outputs:
        return run_graph(gm, self.samples, self.batch_size)

    def score(self, out: Outputs) -> dict:
        ref, test = joined(self.float_out), joined(out)
        result = {"sqnr_db": round(sqnr_db(ref, test), 3), "kl": round(kl_divergence(ref, test), 6)}
        if self.labels is not None:
            result["top1_drop_pp"] = round(100 * (top1(self.float_out[0], self.labels) - top1(out[0], self.labels)), 3)
        return result


def joined(outputs: Outputs) -> np.ndarray:
    """[N, D]: every output of a sample flattened and concatenated (equal-length samples only)."""
    return np.concatenate([np.asarray(o).reshape(len(o), -1) for o in outputs], axis=1)


def kl_divergence(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean KL(softmax(reference) ‖ softmax(test)) over samples."""
    p, q = _log_softmax(reference), _log_softmax(test)
    return float(np.mean(np.sum(np.exp(p) * (p - q), axis=-1)))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def rank_units(gm, switch: FloatSwitch, units: list[Unit], probe: Probe) -> list[dict]:
    """Units, most sensitive first, by their output error when only they are quantized."""
    rows = []
    for u in units:
        with switch.only_quantized([u], units):
            rows.append({**u.to_dict(), "only_quantized": probe.score(probe.outputs(gm))})
    return sorted(rows, key=lambda r: r["only_quantized"]["sqnr_db"])


def analyse(gm, switch: FloatSwitch, units: list[Unit], probe: Probe) -> dict:
    """Per-unit and per-block sensitivity; leaves the graph as it found it."""
    full = probe.score(probe.outputs(gm))
    rows = [_row(gm, switch, [u], units, probe, u.to_dict()) for u in units]
    blocks: dict[str, list[Unit]] = {}
    for u in units:
        blocks.setdefault(u.block, []).append(u)
    block_rows = [_row(gm, switch, members, units, probe, {"block": name, "kind": members[0].kind,
                                                            "units": [m.name for m in members]})
                  for name, members in blocks.items()]
    rank = lambda r: r["only_quantized"]["sqnr_db"]  # noqa: E731 - lower SQNR = more sensitive
    return {"all_quantized": full, "samples": int(len(probe.samples)), "labelled": probe.labels is not None,
            "units": sorted(rows, key=rank), "blocks": sorted(block_rows, key=rank)}


def _row(gm, switch: FloatSwitch, members: list[Unit], units: list[Unit], probe: Probe, head: dict) -> dict:
    with switch.only_quantized(members, units):
        only_q = probe.score(probe.outputs(gm))
    with switch.floating(members):
        only_f = probe.score(probe.outputs(gm))
    return {**head, "only_quantized": only_q, "only_float": only_f}
