"""Image preprocessing shared by training, the bundled sets and image-folder calibration.

One function so the zoo is trained, calibrated and evaluated on identically prepared pixels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CalibrationError


def preprocess_uint8(images: np.ndarray, size: int | tuple[int, int], in_chans: int,
                     mean, std) -> np.ndarray:
    """uint8 images [N, H, W] or [N, H, W, C] → float32 [N, in_chans, size, size], normalised."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    x = _match_channels(x, in_chans)
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    mean_t = torch.tensor(per_channel(mean, in_chans)).view(1, -1, 1, 1)
    std_t = torch.tensor(per_channel(std, in_chans)).view(1, -1, 1, 1)
    return ((x - mean_t) / std_t).numpy().astype(np.float32)


def _match_channels(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    if x.shape[1] == in_chans:
        return x
    if in_chans == 1:  # luminance, as PIL's "L" mode
        weights = torch.tensor([0.299, 0.587, 0.114])[: x.shape[1]]
        return (x * weights.view(1, -1, 1, 1)).sum(1, keepdim=True) / weights.sum()
    if x.shape[1] == 1:
        return x.expand(-1, in_chans, -1, -1)
    raise CalibrationError(f"the images have {x.shape[1]} channels and the model takes {in_chans}; edgeq maps "
                           f"colour to grey, grey to colour, and nothing else.")


def per_channel(values, in_chans: int) -> list[float]:
    values = [float(v) for v in values]
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return [sum(values) / len(values)]
    raise CalibrationError(f"the normalisation has {len(values)} values for a {in_chans}-channel input; give one "
                           f"value or one per channel.")
