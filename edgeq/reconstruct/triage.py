"""Which regions are worth learning: reconstruction where it pays, most harmful first, within a time budget.

At 8 bits most blocks gain nothing from learning (their observer solution is already within noise of the
float block), and learning every block for hundreds of iterations at 224×224 takes far longer than users
wait. Before learning, one pass over a fixed evaluation subset runs every region on the observer-only
quantized model (inputs from the quantized regions before it, targets from the float model — what
reconstruction minimises) and measures
  - its output error as NMSE = ‖quantized − float‖² / ‖float‖² of the region's outputs, and
  - the time one learning step takes on it (forward in soft mode and backward), timed.
Regions above ``learn_above`` are ranked by NMSE and planned, most harmful first, while the shortest useful
run of each (two progress checks, ``2 × patience`` steps) fits ``time_budget``; the others keep the observer
solution, and the manifest says which and why. While learning, a planned region may use what the budget has
left after reserving the shortest runs of the planned regions after it, so regions that stop early hand
their time on (``Budget``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from .caches import stream
from .regions import on_device, run_region


def rounded_nmse(value: float) -> float | None:
    """For the manifest (JSON has no infinity)."""
    return float(f"{value:.4g}") if math.isfinite(value) else None


@dataclass
class Triage:
    nmse: list[float]                     # per region, observer-only output error on the evaluation subset
    estimate: list[float]                 # per region, seconds its full learning run is expected to take
    shortest: list[float]                 # per region, seconds of its shortest useful run
    selected: set[int] = field(default_factory=set)
    time_budget: float = 0.0
    learn_above: float = 0.0

    def reason_skipped(self, i: int) -> str:
        if not self.worth(i):
            return (f"output NMSE {self.nmse[i]:.2e} ≤ {self.learn_above:.0e} with observer ranges: learning would "
                    f"not pay; kept the observer ranges and round-to-nearest weights")
        return (f"output NMSE {self.nmse[i]:.2e}, but learning it (at least {self.shortest[i]:.0f} s) did not fit "
                f"the {self.time_budget:.0f} s time budget after more harmful regions; kept the observer ranges")

    def skip_label(self, i: int) -> str:
        return "not worth learning" if not self.worth(i) else "over the time budget"

    def summary(self) -> str:
        worth = sum(self.worth(i) for i in range(len(self.nmse)))
        budget = f"within {self.time_budget:.0f} s of learning" if self.time_budget else "without a time limit"
        return (f"  triage: {worth} of {len(self.nmse)} regions worth learning (observer-only output NMSE > "
                f"{self.learn_above:.0e}); {len(self.selected)} planned, most harmful first, {budget}")

    def worth(self, i: int) -> bool:
        return not self.learn_above or self.nmse[i] > self.learn_above   # 0: every region is worth it

    def to_dict(self) -> dict:
        return {"time_budget_s": self.time_budget, "learn_above_nmse": self.learn_above,
                "selected": sorted(self.selected), "nmse": [rounded_nmse(v) for v in self.nmse],
                "estimate_s": [round(v, 2) for v in self.estimate]}


def triage(regions, inputs: dict[str, torch.Tensor], mode, spec, device: str, eval_batch: int,
           fixed_batch: bool = False) -> Triage:
    """Measure every region on the evaluation subset ``inputs`` (placeholder name → tensor) and pick the
    ones to learn. ``mode`` is the learners' Mode (float targets, hard = observer-only quantized);
    ``fixed_batch``: the program runs only at ``eval_batch``."""
    n = len(next(iter(inputs.values())))
    error, energy = [0.0] * len(regions), [0.0] * len(regions)

    def measure(i: int, targets, outputs) -> None:
        error[i] += sum(float(((o.float() - t.float()) ** 2).sum()) for o, t in zip(outputs, targets))
        energy[i] += sum(float((t.float() ** 2).sum()) for t in targets)

    # batch by batch through every region: only one batch of the early, large values is alive at a time
    stream(list(enumerate(regions)), inputs, inputs, mode, eval_batch, device, keep=[], visit=measure)
    nmse = [e / max(s, 1e-30) for e, s in zip(error, energy)]
    nmse = [v if math.isfinite(v) else math.inf for v in nmse]   # non-finite outputs: learn (or fall back) first
    worth = [not spec.learn_above or v > spec.learn_above for v in nmse]
    batch = min(spec.batch_size, n)
    timed = batch if fixed_batch else min(TIMED_BATCH, batch)
    seconds = _step_seconds_each(regions, {k: v[:timed] for k, v in inputs.items()}, worth, mode, timed, device)
    estimate = [spec.iterations * t * batch / timed for t in seconds]
    fraction = min(1.0, 2 * spec.patience / spec.iterations) if spec.patience else 1.0
    result = Triage(nmse, estimate, [e * fraction for e in estimate], time_budget=spec.time_budget,
                    learn_above=spec.learn_above)
    spent = 0.0
    for i in sorted(range(len(regions)), key=lambda k: -nmse[k]):
        if not result.worth(i):
            continue
        if spec.time_budget and spent + result.shortest[i] > spec.time_budget:
            continue   # a cheaper, less harmful region may still fit
        result.selected.add(i)
        spent += result.shortest[i]
    return result


TIMED_BATCH = 8   # a learning step is timed on a few samples and scaled (a full batch's autograd graph of an
                 # early region at 224² holds about a gigabyte)


def _step_seconds_each(regions, inputs: dict, wanted: list[bool], mode, batch: int, device: str) -> list[float]:
    """Seconds of one learning step of each wanted region on ``batch`` samples (0 for the others); the regions
    run in hard mode on those samples to pass their values on."""
    cache, seconds = dict(inputs), []
    for i, region in enumerate(regions):
        seconds.append(_step_seconds(region, cache, mode, batch, device) if wanted[i] else 0.0)
        outputs = run_region(region, cache, mode, "hard", batch, device)
        for name, q in zip(region.outputs, outputs):
            cache[name] = q
        for name in [k for k in cache if region.last_use.get(k, -1) <= i]:
            cache.pop(name)
    return seconds


def _step_seconds(region, cache, mode, batch: int, device: str) -> float:
    """One learning step's forward and backward on ``batch`` samples, timed (the second of two: the first
    warms up)."""
    mode.value, mode.generator = "soft", torch.Generator(device=device).manual_seed(0)  # QDrop's draws
    inputs = [on_device(cache[k][:batch], device) for k in region.inputs]
    seconds = 0.0
    for _ in range(2):
        start = time.perf_counter()
        outs = region.module(*inputs)
        loss = sum(o.float().pow(2).sum() for o in outs if o.requires_grad)
        if isinstance(loss, torch.Tensor):
            loss.backward()   # into the learners' .grad, which every optimizer step clears first
        seconds = time.perf_counter() - start
    mode.value, mode.generator = "hard", None
    return seconds


class Budget:
    """Learning time while the regions run in graph order: a planned region may spend what is left after the
    shortest runs of the planned regions after it; a region worth learning that was not planned joins when
    that leftover covers its own shortest run.

    The triage times a step on a few samples and scales it to the batch, which underestimates the large
    early regions at 224² (memory-bound: 0.6 s estimated, 0.73 s measured for mobilevit_xxs stages.0.0);
    so the estimates of the regions still to come are corrected by the measured-to-estimated ratio of the
    steps run so far."""

    def __init__(self, plan: Triage, iterations: int):
        self.plan, self.seconds, self.spent = plan, plan.time_budget, 0.0
        self.iterations = iterations
        self.measured, self.expected = 0.0, 0.0   # learning seconds, and what the estimates said they would be

    @property
    def correction(self) -> float:
        return self.measured / self.expected if self.expected > 0 else 1.0

    def _shortest(self, i: int) -> float:
        return self.plan.shortest[i] * self.correction

    def _reserved_after(self, i: int) -> float:
        return sum(self._shortest(k) for k in self.plan.selected if k > i)

    def allows(self, i: int) -> bool:
        if i in self.plan.selected:
            if self.seconds and self.spent + self._shortest(i) > self.seconds:
                self.plan.selected.discard(i)   # the estimates were low: the budget is a bound, not a wish
                return False
            return True
        if not self.plan.worth(i) or not self.seconds:
            return False
        if self.spent + self._reserved_after(i) + self._shortest(i) <= self.seconds:
            self.plan.selected.add(i)
            return True
        return False

    def allowance(self, i: int) -> float | None:
        """Seconds region ``i`` may learn (None: no time limit)."""
        if not self.seconds:
            return None
        return max(self.seconds - self.spent - self._reserved_after(i), self._shortest(i))

    def spend(self, i: int, seconds: float, steps: int) -> None:
        self.spent += seconds
        if steps and self.plan.estimate[i] > 0:
            self.measured += seconds
            self.expected += self.plan.estimate[i] * steps / self.iterations

    def eta(self, i: int, total: int, elapsed: float) -> float:
        """Seconds left after region ``i``: the other work at its pace so far, plus the learning planned."""
        other = (elapsed - self.spent) / (i + 1) * (total - i - 1)
        learning = sum(self.plan.estimate[k] for k in self.plan.selected if k > i) * self.correction
        if self.seconds:
            learning = min(learning, max(0.0, self.seconds - self.spent))
        return max(0.0, other + learning)
