"""Structural reparameterization before capture: the deploy form is what gets quantized and exported.

FastViT, MobileOne, RepVGG-style and similar timm models train with parallel branches (conv + 1×1 conv +
identity BatchNorm, RepMixer) that fold into one conv for inference. Quantizing the training form would
quantize every branch separately and export several convs where one suffices, so timm's own
``reparameterize_model`` runs first, and the fused model is checked against the original on real inputs.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .. import ui
from ..models.intake import LoadedModel

TOLERANCE = 1e-4   # max abs difference of the outputs, FP32
HOOKS = ("fuse", "reparameterize", "switch_to_deploy")   # what timm's reparameterize_model calls


def reparameterizable(module: torch.nn.Module) -> list[str]:
    """Names of timm submodules that have a deploy form."""
    return [name for name, m in module.named_modules()
            if name and type(m).__module__.startswith("timm.") and any(hasattr(m, h) for h in HOOKS)]


def reparameterize(loaded: LoadedModel, x: np.ndarray) -> tuple[LoadedModel, dict]:
    """The loaded model in its deploy form (when it has one) and the record for the manifest."""
    if loaded.module is None:
        return loaded, {"applied": False, "reason": "a torch.export program is used as given"}
    names = reparameterizable(loaded.module)
    if not names:
        return loaded, {"applied": False, "reason": "no timm module with a deploy form"}
    from timm.utils.model import reparameterize_model
    fused = reparameterize_model(loaded.module.eval())
    with torch.no_grad():
        inputs = torch.from_numpy(x)
        diff = float((loaded.module(inputs) - fused(inputs)).abs().max())
    record = {"modules": len(names), "max_abs_diff": diff, "tolerance": TOLERANCE, "samples": len(x)}
    if not diff <= TOLERANCE:   # also catches NaN
        ui.log(f"warning: the reparameterized model differs from the trained one by {diff:.2e} (> {TOLERANCE}); "
               f"quantizing the training-time form instead")
        return loaded, {"applied": False, "reason": "outputs differ beyond the tolerance", **record}
    return dataclasses.replace(loaded, module=fused), {"applied": True, **record}
