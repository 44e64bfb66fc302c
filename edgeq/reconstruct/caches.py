"""Cached region values, at full size only where a learned region needs them.

Learning a region needs its inputs (from the quantized regions before it) and its float targets for every
calibration sample; a region that is not learned needs them only for the few samples its scheme choice
looks at. At 224² one value of an early stage, cached for 256 samples, takes 300 MB per copy (float and
quantized), and keeping it for every region put the default recipe over 2 GB on fastvit_t8. So the regions
that are not learned advance a *small* cache (the first samples), and the *full* cache catches up — every
sample streamed through those regions batch by batch, so only one batch of their values is alive — when a
learned region comes. Between regions values are stored as ``run_region`` stores them (float16) either way.
"""
from __future__ import annotations

import torch

from .regions import HALF_MAX, Region, on_device


class Caches:
    """Float (targets) and quantized (inputs) values per graph node name; ``small`` samples kept current."""

    def __init__(self, inputs: dict[str, torch.Tensor], small: int, mode, batch_size: int, device: str):
        self.full_float, self.full_quant = dict(inputs), dict(inputs)
        self.small, self.mode, self.batch_size, self.device = small, mode, batch_size, device
        self.pending: list[tuple[int, Region]] = []   # regions the full caches have not caught up with
        self._slice_small()

    def _slice_small(self) -> None:
        self.small_float = {k: v[:self.small] for k, v in self.full_float.items()}
        self.small_quant = {k: v[:self.small] for k, v in self.full_quant.items()}

    def catch_up(self) -> None:
        """Bring the full caches to the current region (streaming every sample through the pending ones)."""
        if not self.pending:
            return
        self.full_float, self.full_quant = stream(self.pending, self.full_float, self.full_quant, self.mode,
                                                  self.batch_size, self.device, keep=list(self.small_float))
        self.pending = []
        self._slice_small()

    def advance_small(self, i: int, region: Region, targets, outputs) -> None:
        """Region ``i`` ran on the small caches only (it was not learned)."""
        _advance(self.small_float, self.small_quant, i, region, targets, outputs)
        self.pending.append((i, region))

    def advance_full(self, i: int, region: Region, targets, outputs) -> None:
        """Region ``i`` ran on the full caches (it was learned, after ``catch_up``)."""
        _advance(self.full_float, self.full_quant, i, region, targets, outputs)
        self._slice_small()


def _advance(floats: dict, quants: dict, i: int, region: Region, targets, outputs) -> None:
    for name, f, q in zip(region.outputs, targets, outputs):
        floats[name], quants[name] = f, q
    for name in [k for k in floats if region.last_use.get(k, -1) <= i]:
        floats.pop(name), quants.pop(name)


def stream(steps: list[tuple[int, Region]], floats: dict, quants: dict, mode, batch_size: int, device: str,
           keep: list[str], visit=None) -> tuple[dict, dict]:
    """Run the regions ``steps`` ((index, region), in order) on every cached sample, a batch at a time, in
    float and hard mode; returns the float and quantized values named in ``keep`` for every sample.
    ``visit(index, targets, outputs)`` sees each region's float and quantized outputs per batch."""
    n = len(next(iter(floats.values())))
    kept_float: dict[str, torch.Tensor] = {}
    kept_quant: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, n, batch_size):
            part = slice(start, min(n, start + batch_size))
            f = {k: v[part] for k, v in floats.items()}
            q = {k: v[part] for k, v in quants.items()}
            for i, region in steps:
                targets = _run(region, f, mode, "float", device)
                outputs = _run(region, q, mode, "hard", device)
                if visit is not None:
                    visit(i, targets, outputs)
                _advance(f, q, i, region, [_stored(t) for t in targets], [_stored(o) for o in outputs])
            for name in keep:
                _fill(kept_float, name, f[name], part, n)
                _fill(kept_quant, name, q[name], part, n)
    return kept_float, kept_quant


def _run(region: Region, values: dict, mode, value: str, device: str) -> list[torch.Tensor]:
    mode.value = value
    return list(region.module(*[on_device(values[k], device) for k in region.inputs]))


def _stored(t: torch.Tensor) -> torch.Tensor:
    """As ``run_region`` stores a value: float16 on the CPU unless beyond float16's range."""
    if t.dtype == torch.float32 and bool(t.abs().amax() < HALF_MAX):
        return t.to(device="cpu", dtype=torch.float16)
    return t.cpu()


def _fill(kept: dict, name: str, part_value: torch.Tensor, part: slice, n: int) -> None:
    if name not in kept:
        kept[name] = torch.empty((n, *part_value.shape[1:]), dtype=part_value.dtype)
    elif kept[name].dtype != part_value.dtype:   # one batch beyond float16's range: the value stays float32
        kept[name] = kept[name].float()
    kept[name][part] = part_value

