"""Learnable quantizers plugged into the graph's WeightQuant/ActQuant modules while blocks are learned.

- ``AdaRound`` (Nagel et al., 2020): weight = s·(floor(W/s) + h(V) − zp) with h a rectified sigmoid;
  a regulariser with an annealed temperature pushes h to exactly 0 or 1, so each weight ends rounded
  down or up (never more than one step from round-to-nearest).
- ``LearnedStep`` (LSQ, Esser et al., 2020): the activation step size is a parameter trained through a
  straight-through rounding estimator, with LSQ's gradient scaling; the zero-point stays the observer's.
- QDrop (Wei et al., 2022): while learning, each activation element is left in float with probability p.

All learners of one run share a ``Mode``: ``float`` (the teacher: no quantization), ``soft`` (learning)
and ``hard`` (exactly what will be exported).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..quant.observers import QParams

ZETA, GAMMA = 1.1, -0.1   # AdaRound's stretch of the sigmoid, so h reaches 0 and 1 exactly


class Mode:
    """Shared switch for every learner in a run; ``generator`` drives QDrop's random draws."""

    def __init__(self, drop_prob: float = 0.0):
        self.value = "hard"
        self.drop_prob = drop_prob
        self.generator: torch.Generator | None = None


def _broadcast_shape(ndim: int, axis: int | None) -> list[int]:
    shape = [1] * ndim
    if axis is not None:
        shape[axis] = -1
    return shape


class AdaRound(nn.Module):
    def __init__(self, weight: torch.Tensor, qp: QParams, mode: Mode):
        super().__init__()
        self.mode, self.qmin, self.qmax = mode, qp.qmin, qp.qmax
        shape = _broadcast_shape(weight.dim(), qp.axis)
        w = weight.detach().float()
        self.register_buffer("float_weight", w.clone())
        self.register_buffer("scale", qp.scale.float().view(shape).clone())
        self.register_buffer("zero_point", qp.zero_point.float().view(shape).clone())
        self.register_buffer("w_floor", torch.floor(w / self.scale))
        rest = (w / self.scale - self.w_floor).clamp(0.0, 1.0)
        # start where h(V) equals the fractional part: the hard decision starts at round-to-nearest
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        self.fixed_int: torch.Tensor | None = None

    def h(self) -> torch.Tensor:
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def hard_int(self) -> torch.Tensor:
        if self.fixed_int is not None:
            return self.fixed_int
        q = torch.clamp(self.w_floor + (self.v >= 0).float() + self.zero_point, self.qmin, self.qmax)
        return q.detach().to(torch.int8 if self.qmin < 0 else torch.uint8)

    def fix(self, ints: torch.Tensor | None = None) -> None:
        """Freeze the hard decisions (or load saved ones); the rounding variables are no longer used."""
        self.fixed_int = (ints if ints is not None else self.hard_int()).to(self.float_weight.device)

    def regularizer(self, beta: float) -> torch.Tensor:
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()

    def forward(self, _current: torch.Tensor) -> torch.Tensor:
        if self.mode.value == "float":
            return self.float_weight
        if self.mode.value == "hard" or self.fixed_int is not None:
            q = self.hard_int().float()
        else:
            q = torch.clamp(self.w_floor + self.h() + self.zero_point, self.qmin, self.qmax)
        return (q - self.zero_point) * self.scale


class _LsqQuantize(torch.autograd.Function):
    """LSQ's quantizer with its straight-through gradients, in one node that saves only its input.

    Written out of autograd-tracked steps (a straight-through round, a gradient-scaled step) it kept seven
    full-size tensors per quantizer for the backward pass (a gigabyte for an early region at 224², batch 32);
    here the backward recomputes them.
    Gradients (LSQ, Esser et al.): x passes where x/s + zp lies in [qmin, qmax]; the step gets, per element,
    round(x/s) − x/s there and (qmin or qmax) − zp outside, times LSQ's gradient scale.
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, grad_scale, shape):
        s, zp = scale.view(shape), zero_point.view(shape)
        ctx.save_for_backward(x, scale, zero_point)
        ctx.qmin, ctx.qmax, ctx.grad_scale, ctx.shape = qmin, qmax, grad_scale, shape
        return (x / s).round_().add_(zp).clamp_(qmin, qmax).sub_(zp).mul_(s)

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point = ctx.saved_tensors
        s, zp = scale.view(ctx.shape), zero_point.view(ctx.shape)
        scaled = x / s
        level = scaled + zp   # LSQ's condition is on the unrounded level
        below, above = level < ctx.qmin, level > ctx.qmax
        inside = ~(below | above)
        grad_x = grad * inside
        per_element = torch.where(below, ctx.qmin - zp, torch.where(above, ctx.qmax - zp, torch.round(scaled) - scaled))
        reduce = [d for d, size in enumerate(ctx.shape) if size == 1]
        grad_scale = (grad * per_element).sum(dim=reduce).reshape(scale.shape) * ctx.grad_scale
        return grad_x, grad_scale, None, None, None, None, None


class LearnedStep(nn.Module):
    def __init__(self, qp: QParams, mode: Mode, label: str = ""):
        super().__init__()
        self.mode, self.label = mode, label
        self.qmin, self.qmax, self.axis = qp.qmin, qp.qmax, qp.axis
        self.scale = nn.Parameter(qp.scale.float().clone())
        self.register_buffer("zero_point", qp.zero_point.float().clone())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        shape = _broadcast_shape(x.dim(), self.axis)
        per_step = x.numel() / self.scale.numel()
        return _LsqQuantize.apply(x, self.scale.clamp(min=1e-10), self.zero_point, self.qmin, self.qmax,
                                  1.0 / math.sqrt(per_step * self.qmax), shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode.value == "float":
            return x
        if self.mode.value == "hard" and not torch.is_grad_enabled():
            return self.fake_quantize(x)
        xq = self.quantize(x)
        if self.mode.value == "soft" and self.mode.drop_prob > 0:
            keep_float = torch.rand(x.shape, generator=self.mode.generator, device=x.device) < self.mode.drop_prob
            return torch.where(keep_float, x, xq)
        return xq

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The hard decision, evaluation only: in-place steps on one new tensor, 2x faster at 224² than
        torch's fused fake-quant kernel, and dividing by the step as ONNX QuantizeLinear does."""
        shape = _broadcast_shape(x.dim(), self.axis)
        scale = self.scale.detach().clamp(min=torch.finfo(torch.float32).eps).view(shape)
        zp = self.zero_point.view(shape)
        return (x / scale).round_().add_(zp).clamp_(self.qmin, self.qmax).sub_(zp).mul_(scale)

    def qparams(self) -> QParams:
        scale = self.scale.detach().float().clamp(min=torch.finfo(torch.float32).eps).cpu()
        return QParams(scale.contiguous(), self.zero_point.detach().cpu().to(torch.int32).contiguous(),
                       self.qmin, self.qmax, self.axis)
