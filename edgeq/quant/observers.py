"""Range observers: statistics only, separate from the quantizers that use them (as in QDrop).

An observer sees tensors, keeps exact per-channel min/max plus a bounded, seeded sample of values,
and turns them into a clipping range with one of three methods: ``minmax``, ``percentile`` or
``mse`` (the clipping range that minimises the quantization error on the sample).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .recipe import LayerSpec

SAMPLES_PER_BATCH = 4096   # values kept per channel from each observed batch
MAX_SAMPLES = 65536        # values kept per channel in total
MAX_SAMPLE_ELEMENTS = 1 << 20  # values kept over all channels (per-channel observers of wide layers
                               # held over 1 GB at 224², and the MSE search does not need that many)
MSE_GRID = torch.linspace(0.02, 1.0, 99)  # includes 1.0, so MSE is never worse than min/max
MSE_CHUNK_ELEMENTS = 1 << 22  # bound the [grid, channels, values] temporaries


@dataclass(frozen=True)
class QParams:
    """Affine quantization parameters; ``axis`` is None for per-tensor."""

    scale: torch.Tensor        # float32, shape [C] (C = 1 for per-tensor)
    zero_point: torch.Tensor   # int32, shape [C]
    qmin: int
    qmax: int
    axis: int | None


def qrange(bits: int, symmetric: bool, nonnegative: bool = False) -> tuple[int, int]:
    """Signed range for symmetric quantizers of signed tensors; unsigned for asymmetric ones (fast on x86
    int8 kernels) and for symmetric ones of tensors that never go below zero."""
    if symmetric and not nonnegative:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2 ** bits - 1


def compute_qparams(lo: torch.Tensor, hi: torch.Tensor, spec: LayerSpec, axis: int | None,
                    unsigned_from_zero: bool = False) -> QParams:
    """Scale and zero-point covering [lo, hi] (per channel), always including 0 exactly.

    ``unsigned_from_zero`` (activations): a symmetric quantizer of a range that never goes below zero
    (ReLU, softmax, sigmoid outputs) takes the unsigned range with zero-point 0 instead of wasting the
    negative half of a signed one. Still zero-point 0, which is what makes symmetric quantizers fast in
    OpenVINO (no zero-point compensation; NNCF's performance preset does the same). Weights stay signed:
    runtimes take int8 weights only."""
    nonnegative = unsigned_from_zero and spec.symmetric and bool((lo >= 0).all())
    qmin, qmax = qrange(spec.effective_bits, spec.symmetric, nonnegative)
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    eps = torch.finfo(torch.float32).eps
    if spec.symmetric:
        scale = torch.maximum(hi, -lo) / qmax
        scale = torch.clamp(scale, min=eps)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=eps)
        zero_point = torch.clamp(torch.round(qmin - lo / scale), qmin, qmax).to(torch.int32)
    return QParams(scale.float().contiguous(), zero_point.contiguous(), qmin, qmax, axis)


def fake_quant(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Quantize-dequantize ``x`` with ``qp`` (the float value an int8 kernel would see)."""
    if qp.axis is None:
        return torch.fake_quantize_per_tensor_affine(
            x, float(qp.scale[0]), int(qp.zero_point[0]), qp.qmin, qp.qmax)
    return torch.fake_quantize_per_channel_affine(
        x, qp.scale, qp.zero_point, qp.axis, qp.qmin, qp.qmax)


class Observer:
    """Collects statistics of one tensor over calibration batches."""

    def __init__(self, spec: LayerSpec, channel_axis: int | None, seed: int = 0, activation: bool = False):
        self.spec = spec
        self.activation = activation   # symmetric ranges of non-negative activations go unsigned
        self.axis = channel_axis if spec.granularity == "per_channel" else None
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        self.kept = 0
        self.batches = 0
        self.nonfinite = 0
        self.generator = torch.Generator().manual_seed(seed)

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        rows = self._rows(x)
        lo, hi = rows.amin(1), rows.amax(1)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):  # NaN and ±inf reach the extremes
            finite = torch.isfinite(rows)
            self.nonfinite += int((~finite).sum())
            rows = torch.where(finite, rows, torch.zeros_like(rows))
            lo, hi = rows.amin(1), rows.amax(1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.batches += 1
        channels = rows.shape[0]
        limit = max(1024, min(MAX_SAMPLES, MAX_SAMPLE_ELEMENTS // channels))
        if self.spec.observer != "minmax" and self.kept < limit:
            per_batch = SAMPLES_PER_BATCH if limit == MAX_SAMPLES else max(256, limit // 8)
            take = min(per_batch, rows.shape[1], limit - self.kept)
            # O(take) draw (with replacement): a full randperm per batch and layer dominated calibration
            idx = torch.randint(rows.shape[1], (take,), generator=self.generator)
            self.samples.append(rows[:, idx].clone())
            self.kept += take

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """View as [channels, values] (one row for per-tensor)."""
        if self.axis is None:
            return x.reshape(1, -1)
        return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    def qparams(self) -> QParams:
        if self.lo is None:
            raise RuntimeError("observer saw no data")
        lo, hi = choose_range(self.lo, self.hi, self._sample(), self.spec, self.activation)
        return compute_qparams(lo, hi, self.spec, self.axis, self.activation)

    def _sample(self) -> torch.Tensor | None:
        return torch.cat(self.samples, 1) if self.samples else None

    def summary(self) -> dict:
        return {"min": float(self.lo.min()), "max": float(self.hi.max()), "batches": self.batches}


def observe_weight(weight: torch.Tensor, spec: LayerSpec) -> QParams:
    """Weights are known in full: observe them once along the output-channel axis."""
    obs = Observer(spec, channel_axis=0)
    obs.observe(weight)
    if spec.observer != "minmax":  # the whole weight, not a sample
        obs.samples = [obs._rows(weight.detach().float())]
    return obs.qparams()


def choose_range(lo: torch.Tensor, hi: torch.Tensor, sample: torch.Tensor | None,
                 spec: LayerSpec, activation: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.observer == "minmax" or sample is None:
        return lo, hi
    if spec.observer == "percentile":
        q = spec.percentile / 100.0
        return (torch.quantile(sample, 1.0 - q, dim=1).clamp(max=0.0).minimum(hi),
                torch.quantile(sample, q, dim=1).clamp(min=0.0).maximum(lo))
    return _mse_range(lo, hi, sample, spec, activation)


def _mse_range(lo: torch.Tensor, hi: torch.Tensor, sample: torch.Tensor,
               spec: LayerSpec, activation: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipping range minimising the per-channel squared error on the sample.

    Symmetric ranges shrink both ends together; asymmetric ones shrink the upper end first and
    then the lower end (a one-sided outlier must not drag the other side in with it).
    """
    if spec.symmetric:
        return _mse_search(lo, hi, sample, spec, True, True, activation)
    lo, hi = _mse_search(lo, hi, sample, spec, False, True, activation)
    return _mse_search(lo, hi, sample, spec, True, False, activation)


def _mse_search(lo, hi, sample, spec, scale_lo: bool, scale_hi: bool, activation: bool):
    errors = []
    chunk = max(1, MSE_CHUNK_ELEMENTS // max(1, sample.numel()))
    for alphas in MSE_GRID.split(chunk):
        a = alphas.view(-1, 1)                                   # [G, 1]
        cand_lo = (lo * a if scale_lo else lo.expand(len(alphas), -1)).reshape(-1)
        cand_hi = (hi * a if scale_hi else hi.expand(len(alphas), -1)).reshape(-1)
        qp = compute_qparams(cand_lo, cand_hi, spec, axis=0, unsigned_from_zero=activation)
        scale = qp.scale.view(len(alphas), -1, 1)                # [G, C, 1]
        zp = qp.zero_point.view(len(alphas), -1, 1).float()
        q = torch.clamp(torch.round(sample / scale) + zp, qp.qmin, qp.qmax)
        errors.append(((q - zp) * scale - sample).pow(2).mean(-1))   # [G, C]
    alpha = MSE_GRID[torch.cat(errors).argmin(0)]
    return (lo * alpha if scale_lo else lo), (hi * alpha if scale_hi else hi)
