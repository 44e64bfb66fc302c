"""Learning one region: Adam on AdaRound rounding variables and LSQ activation steps, QDrop active.

AdaRound's regulariser is annealed from ``beta_start`` to ``beta_end`` after the warm-up; it pushes the soft
rounding towards 0/1 and so *raises* the soft reconstruction loss while it works, and the hard-rounded loss
(what is exported) often stays flat for a hundred steps before it improves again (measured on the zoo at
4 bits). So every ``patience`` steps the hard-rounded region runs on a fixed probe batch, the best state so far
is kept (and restored at the end), and learning stops early only when it does nothing: after
``NO_PROGRESS_CHECKS`` checks the best hard loss is not 1 % below where it started (random-init models, easy
8-bit regions) and the recipe allows it (``stop_early``); otherwise it runs to the iterations or its share of
the time budget.
"""
from __future__ import annotations

import time

import torch

from .. import ui
from ..quant.recipe import ReconSpec
from .regions import Region, on_device

MIN_GAIN = 0.01        # the hard loss must fall this fraction below its start to count as progress
NO_PROGRESS_CHECKS = 2


class NonFiniteLoss(Exception):
    pass


def block_loss(outs, targets, weights) -> torch.Tensor:
    """BRECQ's block objective: squared error summed over elements, averaged over the batch."""
    total = 0.0
    for out, target, w in zip(outs, targets, weights):
        err = (out - target) ** 2
        total = total + (err * w if w is not None else err).sum()
    return total / outs[0].shape[0]


class _Probe:
    """The hard-rounded loss on one fixed batch, and the best learner state seen so far."""

    def __init__(self, region: Region, learners, quant_cache, targets, grads, index, device: str):
        self.region, self.mode = region, learners.mode
        self.inputs = [on_device(quant_cache[k][index], device) for k in region.inputs]
        self.targets = [on_device(t[index], device) for t in targets]
        self.weights = [g[index].to(device) if g is not None else None for g in grads]
        self.params = [learners.weights[name].v for name in region.layers] + \
                      [learners.acts[name].scale for name in region.act_quantizers]
        self.initial_loss, self.best_loss, self.best_state = float("inf"), float("inf"), None

    def loss(self) -> float:
        before, self.mode.value = self.mode.value, "hard"
        with torch.no_grad():
            value = float(block_loss(self.region.module(*self.inputs), self.targets, self.weights))
        self.mode.value = before
        return value

    def check(self) -> None:
        value = self.loss()
        if self.best_state is None:
            self.initial_loss = value
        if value < self.best_loss:
            self.best_loss, self.best_state = value, [p.detach().clone() for p in self.params]

    def moved(self) -> bool:
        return self.best_loss < (1 - MIN_GAIN) * self.initial_loss

    def restore_best(self) -> None:
        if self.best_state is not None and self.loss() > self.best_loss:
            with torch.no_grad():
                for p, saved in zip(self.params, self.best_state):
                    p.copy_(saved)


STEP_ELEMENTS = 1 << 22   # cached input + target elements per forward/backward pass of a learning step


def micro_batches(region: Region, quant_cache, targets, batch: int) -> int:
    """Passes a learning step is split into. An early region at 224² holds about a gigabyte of autograd
    state at batch 32; split into passes of at most STEP_ELEMENTS cached elements, the step's gradient is
    the same (accumulated), memory stays bounded, and each pass is faster per sample (cache-resident):
    mobilevit_xxs stages.0.0, batch 32: 0.68 s in one pass, 0.57 s in two of 16."""
    per_sample = sum(quant_cache[k][0].numel() for k in region.inputs) + sum(t[0].numel() for t in targets)
    return max(1, min(batch, -(-batch * per_sample // STEP_ELEMENTS)))


def train_region(i: int, region: Region, learners, quant_cache, targets, grads, spec: ReconSpec,
                 seed: int, device: str, deadline: float | None = None) -> tuple[int, str | None]:
    """Learn ``region`` in place; returns the steps run and why learning stopped early, if it did."""
    rounding = [learners.weights[name] for name in region.layers]
    steps = [learners.acts[name] for name in region.act_quantizers]
    learners.mode.generator = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
    sampler = torch.Generator().manual_seed(seed * 1_000_003 + i)
    opt_w = torch.optim.Adam([r.v for r in rounding], lr=spec.weight_lr) if rounding else None
    opt_a = torch.optim.Adam([s.scale for s in steps], lr=spec.act_lr) if steps and spec.act_lr > 0 else None
    sched_a = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=spec.iterations) if opt_a else None
    n = len(quant_cache[region.inputs[0]])
    batch = min(spec.batch_size, n)
    chunks = micro_batches(region, quant_cache, targets, batch)
    probe = _Probe(region, learners, quant_cache, targets, grads,
                   torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:batch], device) \
        if spec.patience else None
    if probe is not None:
        probe.check()
    warm = int(spec.warmup * spec.iterations)
    done, stopped = 0, None
    with ui.progress(spec.iterations, f"  {region.name[:48]}") as update:
        for it in range(spec.iterations):
            idx = torch.randint(n, (batch,), generator=sampler)
            for opt in (opt_w, opt_a):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            learners.mode.value = "soft"
            rec = 0.0
            for part in idx.chunk(chunks):   # gradients accumulate: the same step as one batch
                outs = region.module(*[on_device(quant_cache[k][part], device) for k in region.inputs])
                part_loss = block_loss(outs, [on_device(t[part], device) for t in targets],
                                       [g[part].to(device) if g is not None else None for g in grads])
                part_loss = part_loss * (len(part) / batch)
                if not torch.isfinite(part_loss):
                    raise NonFiniteLoss(f"non-finite loss at iteration {it}")
                part_loss.backward()
                rec = rec + part_loss.detach()
            if it >= warm and rounding and spec.round_weight > 0:
                beta = spec.beta_end + (spec.beta_start - spec.beta_end) * max(
                    0.0, 1 - (it - warm) / max(1, spec.iterations - warm))
                regularizer = spec.round_weight * sum(r.regularizer(beta) for r in rounding)
                if not torch.isfinite(regularizer):
                    raise NonFiniteLoss(f"non-finite loss at iteration {it}")
                regularizer.backward()
            for opt in (opt_w, opt_a):
                if opt is not None:
                    opt.step()
            if sched_a is not None:
                sched_a.step()
            done = it + 1
            update(1, f"loss {float(rec.detach()):.4g}" if it % 10 == 0 else None)
            stopped = _should_stop(probe, done, spec.patience, deadline, spec.stop_early)
            if stopped:
                break
    if probe is not None:
        probe.restore_best()
    learners.mode.generator = None
    return done, stopped


def _should_stop(probe: _Probe | None, done: int, patience: int, deadline: float | None,
                 stop_early: bool = True) -> str | None:
    if deadline is not None and time.perf_counter() > deadline:
        return "time budget"
    if probe is not None and done % patience == 0:
        probe.check()
        if stop_early and done == NO_PROGRESS_CHECKS * patience and not probe.moved():
            return "no progress"
    return None
