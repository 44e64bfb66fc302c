"""Structural reparameterization before capture: the deploy form is what gets quantized and exported.

FastViT, MobileOne, RepVGG-style and similar timm models train with parallel branches (conv + 1×1 conv +
identity BatchNorm, RepMixer) that fold into one conv for inference. Quantizing the training form would
quantize every branch separately and export several convs where one suffices, so timm's own
``reparameterize_model`` runs first, and the fused model is checked against the original on real inputs.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import ui
from ..models.intake import LoadedModel

TOLERANCE = 1e-4   # max abs difference of the outputs, FP32
HOOKS = ("fuse", "reparameterize", "switch_to_deploy")   # what timm's reparameterize_model calls


def reparameterizable(module: torch.nn.Module) -> list[str]:
    """Names of timm submodules that have a deploy form."""
    return [name for name, m in module.named_modules()
            if name and type(m).__module__.startswith("timm.") and any(hasattr(m, h) for h in HOOKS)]


def reparameterize(loaded: LoadedModel, x) -> tuple[LoadedModel, dict]:
    """The loaded model in its deploy form (when it has one) and the record for the manifest.

    ``x``: a few real inputs (an array, or a tuple with one array per model input)."""
    if loaded.module is None:
        return loaded, {"applied": False, "reason": "a torch.export program is used as given"}
    names = reparameterizable(loaded.module)
    if not names:
        return loaded, {"applied": False, "reason": "no timm module with a deploy form"}
    from timm.utils.model import reparameterize_model
    fused = reparameterize_model(loaded.module.eval())
    from ..samples import as_samples, flatten_outputs
    inputs = [torch.from_numpy(a) for a in as_samples(x).uniform().inputs]
    with torch.no_grad():
        pairs = zip(flatten_outputs(loaded.module(*inputs)), flatten_outputs(fused(*inputs)))
        diff = max(float((a - b).abs().max()) for a, b in pairs)
    record = {"modules": len(names), "max_abs_diff": diff, "tolerance": TOLERANCE, "samples": len(inputs[0])}
    if not diff <= TOLERANCE:   # also catches NaN
        ui.log(f"warning: the reparameterized model differs from the trained one by {diff:.2e} (> {TOLERANCE}); "
               f"quantizing the training-time form instead")
        return loaded, {"applied": False, "reason": "outputs differ beyond the tolerance", **record}
    return dataclasses.replace(loaded, module=fused), {"applied": True, **record}
