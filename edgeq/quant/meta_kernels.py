"""Shape-only (Meta) kernels for torch's fake-quantize ops.

torch ships no Meta kernel for ``fake_quantize_*_cachemask``, so torch.export — and therefore
the ONNX exporter — cannot trace them with a symbolic (dynamic) batch axis. These kernels only
describe output shapes and dtypes; the numerics still come from torch's own CPU kernels.
"""
from __future__ import annotations

import torch

_LIB = None


def register() -> None:
    global _LIB
    if _LIB is not None:
        return
    _LIB = torch.library.Library("aten", "IMPL")
    _LIB.impl("fake_quantize_per_tensor_affine_cachemask", _per_tensor, "Meta")
    _LIB.impl("fake_quantize_per_channel_affine_cachemask", _per_channel, "Meta")


def _per_tensor(x, scale, zero_point, quant_min, quant_max):
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)


def _per_channel(x, scale, zero_point, axis, quant_min, quant_max):
    return torch.empty_like(x), torch.empty_like(x, dtype=torch.bool)
