"""A Conformer-CTC speech encoder in plain torch (torchaudio does not match the pinned torch).

Log-mel features ``[B, T, 40]`` → convolutional subsampling (two 3×3 stride-2 convs, time / 4, as WeNet's
``Conv2dSubsampling4``) → Conformer blocks (½ FFN – multi-head self-attention – convolution module – ½ FFN,
Gulati et al. 2020, with WeNet's module names) → CTC head ``[B, ceil(T / 4), classes]`` (blank = 0).

Training pads batches; ``lengths`` then masks the padded frames out of attention and the convolution module
(as WeNet's ``mask_pad``). Deployment runs one clip at its own length, so the traced and exported graph has
one input and no mask: edgeq never pads (samples of equal length are batched together).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Subsampling(nn.Module):
    """[B, T, F] → [B, ceil(T / 4), dim]."""

    def __init__(self, feats: int, channels: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.out = nn.Linear(channels * ((feats + 3) // 4), dim)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x.unsqueeze(1)))))     # [B, C, T/4, F/4]
        b, c, t, f = x.shape
        return self.out(x.permute(0, 2, 1, 3).reshape(b, t, c * f))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.norm, self.w_1, self.w_2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.w_2(F.silu(self.w_1(self.norm(x))))


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x, key_mask=None):
        b, t, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]      # [B, 1, 1, T]: True = attend
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, c))


class ConvModule(nn.Module):
    """Pointwise → GLU → depthwise over time (a 1×K conv2d) → BatchNorm → SiLU → pointwise."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pointwise_conv1 = nn.Conv2d(dim, 2 * dim, 1)
        self.depthwise_conv = nn.Conv2d(dim, dim, (1, kernel), padding=(0, kernel // 2), groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.pointwise_conv2 = nn.Conv2d(dim, dim, 1)

    def forward(self, x, pad_mask=None):                                # [B, T, dim]
        c = F.glu(self.pointwise_conv1(self.norm(x).transpose(1, 2).unsqueeze(2)), dim=1)   # [B, dim, 1, T]
        if pad_mask is not None:   # padded frames must not leak into the depthwise window
            c = c * pad_mask[:, None, None, :].to(c.dtype)
        c = self.pointwise_conv2(F.silu(self.bn(self.depthwise_conv(c))))
        return c.squeeze(2).transpose(1, 2)


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, kernel: int):
        super().__init__()
        self.feed_forward_macaron = FeedForward(dim, ffn)
        self.self_attn = SelfAttention(dim, heads)
        self.conv_module = ConvModule(dim, kernel)
        self.feed_forward = FeedForward(dim, ffn)
        self.norm_final = nn.LayerNorm(dim)

    def forward(self, x, mask=None):
        x = x + 0.5 * self.feed_forward_macaron(x)
        x = x + self.self_attn(x, mask)
        x = x + self.conv_module(x, mask)
        return self.norm_final(x + 0.5 * self.feed_forward(x))


class ConformerCTC(nn.Module):
    edgeq_input_shape = (1, 300, 40)          # 3 s of 10 ms frames
    edgeq_dynamic_axis = (1, 32, 1000)        # 0.33 s .. 10 s

    def __init__(self, feats: int = 40, classes: int = 11, dim: int = 128, heads: int = 4, ffn: int = 512,
                 kernel: int = 15, blocks: int = 4, channels: int = 64):
        super().__init__()
        self.embed = Subsampling(feats, channels, dim)
        self.encoders = nn.ModuleList(ConformerBlock(dim, heads, ffn, kernel) for _ in range(blocks))
        self.ctc_head = nn.Linear(dim, classes)

    def forward(self, x, lengths=None):
        x = self.embed(x)
        mask = None if lengths is None else subsampled_mask(lengths, x.shape[1])
        for block in self.encoders:
            x = block(x, mask)
        return self.ctc_head(x)


def subsampled_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Frames after the two stride-2 convolutions (padding 1): ceil(ceil(T / 2) / 2)."""
    return (((lengths + 1) // 2) + 1) // 2


def subsampled_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    return torch.arange(frames, device=lengths.device)[None, :] < subsampled_lengths(lengths)[:, None]
