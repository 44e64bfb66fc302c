"""Outlier-block detection on calibration statistics (after "Accurate INT8 Training Through Dynamic
Block-Level Fallback"): an activation whose channels, grouped in blocks of BLOCK channels, include a
block whose largest magnitude dwarfs the typical block's forces a per-tensor int8 scale so coarse
that the other blocks lose most of their levels.

Per activation quantizer: per-channel max |x| over the calibration set, folded into channel blocks;
``ratio`` = largest block max / median channel max (robust when there are only a few blocks). Above the threshold the unit stays in float on
targets without per-block activation scales (ONNX Runtime and OpenVINO CPU int8 kernels take one
activation scale per tensor); the statistics and the decision go into the manifest.
"""
from __future__ import annotations

import numpy as np
import torch

from ..quant.fakequant import ActQuant

BLOCK = 8
DEFAULT_THRESHOLD = 64.0


class BlockStats:
    """Running per-channel max |x| of one activation (channel axis 1 for 4-D, last axis otherwise)."""

    def __init__(self):
        self.absmax: torch.Tensor | None = None

    def __call__(self, module, args) -> None:
        x = args[0].detach()
        axis = 1 if x.dim() == 4 else x.dim() - 1
        others = [d for d in range(x.dim()) if d != axis]
        per_channel = x.abs().amax(dim=others).float().cpu()
        self.absmax = per_channel if self.absmax is None else torch.maximum(self.absmax, per_channel)

    def summary(self) -> dict:
        channels = self.absmax.numpy().astype(np.float64)
        pad = (-len(channels)) % BLOCK
        blocks = np.concatenate([channels, np.full(pad, np.nan)]).reshape(-1, BLOCK)
        block_max = np.nanmax(blocks, axis=1)
        median = float(np.median(channels))
        ratio = float(block_max.max() / median) if median > 0 else (float("inf") if block_max.max() > 0 else 1.0)
        worst = np.argsort(block_max)[::-1][:3]
        return {"channels": int(len(channels)), "blocks": int(len(block_max)), "ratio": round(ratio, 2),
                "median_channel_max": round(median, 6), "worst_blocks": [int(b) for b in worst],
                "worst_block_max": [round(float(block_max[b]), 6) for b in worst]}


def attach(gm: torch.fx.GraphModule) -> tuple[dict[str, BlockStats], list]:
    """Hooks every activation quantizer; returns the stats and the handles to remove afterwards."""
    stats, handles = {}, []
    for name, module in gm.named_children():
        if isinstance(module, ActQuant):
            stats[name] = BlockStats()
            handles.append(module.register_forward_pre_hook(stats[name]))
    return stats, handles


def detect(stats: dict[str, BlockStats], threshold: float) -> dict[str, dict]:
    """Summary per quantizer with ``outlier`` set where the block ratio exceeds ``threshold``."""
    result = {}
    for name, s in stats.items():
        if s.absmax is None:
            continue
        summary = s.summary()
        summary["outlier"] = bool(summary["ratio"] > threshold)
        result[name] = summary
    return result
