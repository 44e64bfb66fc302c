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
    """LSQ's quantizer with QDrop and their straight-through gradients, in one node that saves only its input
    (and QDrop's mask).

    Written out of autograd-tracked steps (a straight-through round, a gradient-scaled step, QDrop's
    ``where``) it kept seven full-size tensors per quantizer for the backward pass (a gigabyte for an early
    region at 224², batch 32) and spent half of a learning step in elementwise passes; here the backward
    recomputes what it needs in a few in-place passes.
    Gradients (LSQ, Esser et al.): x passes where x/s + zp lies in [qmin, qmax] (or where QDrop kept it in
    float); the step gets, per quantized element, round(x/s) − x/s there and (qmin or qmax) − zp outside,
    times LSQ's gradient scale. With s the step and zp the zero point, both cases are
    clamp(round(x/s), qmin − zp, qmax − zp) − (x/s where inside, else 0).
    """

    @staticmethod
    def forward(ctx, x, scale, zero_point, keep_float, qmin, qmax, grad_scale, shape):
        s, zp = scale.view(shape), zero_point.view(shape)
        ctx.save_for_backward(x, scale, zero_point, keep_float)
        ctx.qmin, ctx.qmax, ctx.grad_scale, ctx.shape = qmin, qmax, grad_scale, shape
        out = (x / s).round_().add_(zp).clamp_(qmin, qmax).sub_(zp).mul_(s)
        if keep_float is not None:
            torch.where(keep_float, x, out, out=out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, scale, zero_point, keep_float = ctx.saved_tensors
        s, zp = scale.view(ctx.shape), zero_point.view(ctx.shape)
        low, high = ctx.qmin - zp, ctx.qmax - zp
        scaled = x / s
        inside = (scaled >= low) & (scaled <= high)
        per_element = scaled.round().clamp_(low, high).sub_(scaled.mul_(inside))
        if keep_float is not None:
            per_element.masked_fill_(keep_float, 0.0)
            inside |= keep_float
        grad_x = grad * inside
        reduce = [d for d, size in enumerate(ctx.shape) if size == 1]
        grad_scale = per_element.mul_(grad).sum(dim=reduce).reshape(scale.shape) * ctx.grad_scale
        return grad_x, grad_scale, None, None, None, None, None, None


def _qdrop_mask(shape, prob: float, generator) -> torch.Tensor:
    """True where QDrop keeps the activation in float. At the default probability 0.5 each random byte gives
    eight fair coins (7x faster than drawing one float per element, a tenth of a learning step at 224²)."""
    numel = math.prod(shape)
    if prob == 0.5 and numel % 8 == 0:
        device = generator.device if generator is not None else "cpu"
        coins = torch.randint(0, 256, (numel // 8, 1), generator=generator, dtype=torch.uint8, device=device)
        return (coins & _BITS.to(device)).view(shape) != 0
    return torch.rand(shape, generator=generator, device=generator.device if generator is not None else "cpu") < prob


_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


class LearnedStep(nn.Module):
    def __init__(self, qp: QParams, mode: Mode, label: str = ""):
        super().__init__()
        self.mode, self.label = mode, label
        self.qmin, self.qmax, self.axis = qp.qmin, qp.qmax, qp.axis
        self.scale = nn.Parameter(qp.scale.float().clone())
        self.register_buffer("zero_point", qp.zero_point.float().clone())

    def quantize(self, x: torch.Tensor, keep_float: torch.Tensor | None = None) -> torch.Tensor:
        shape = _broadcast_shape(x.dim(), self.axis)
        per_step = x.numel() / self.scale.numel()
        return _LsqQuantize.apply(x, self.scale.clamp(min=1e-10), self.zero_point, keep_float, self.qmin,
                                  self.qmax, 1.0 / math.sqrt(per_step * self.qmax), shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode.value == "float":
            return x
        if self.mode.value == "hard" and not torch.is_grad_enabled():
            return self.fake_quantize(x)
        keep_float = None
        if self.mode.value == "soft" and self.mode.drop_prob > 0:
            keep_float = _qdrop_mask(x.shape, self.mode.drop_prob, self.mode.generator)
        return self.quantize(x, keep_float)

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
