"""Which regions are worth learning: reconstruction where it pays, most harmful first, within a time budget.

At 8 bits most blocks gain nothing from learning (their observer solution is already within noise of the
float block), and learning every block for hundreds of iterations at 224×224 takes far longer than users
wait. Before learning, one pass over a fixed evaluation subset runs every region on the observer-only
quantized model (inputs from the quantized regions before it, targets from the float model — what
reconstruction minimises) and measures
  - its output error as NMSE = ‖quantized − float‖² / ‖float‖² of the region's outputs, and
  - the time one forward takes, from which learning it is estimated (a training step ≈ 3 forwards).
Regions above ``learn_above`` are ranked by NMSE and learned, most harmful first, while their estimates fit
``time_budget``; the others keep the observer solution, and the manifest says which and why.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .regions import run_region

STEP_COST = 3.0   # a training step (forward in soft mode + backward) in forwards of the same batch


@dataclass
class Triage:
    nmse: list[float]                     # per region, observer-only output error on the evaluation subset
    estimate: list[float]                 # per region, seconds its learning is expected to take
    selected: set[int] = field(default_factory=set)
    time_budget: float = 0.0
    learn_above: float = 0.0

    def reason_skipped(self, i: int) -> str:
        if self.nmse[i] <= self.learn_above:
            return (f"output NMSE {self.nmse[i]:.2e} ≤ {self.learn_above:.0e} with observer ranges: learning would "
                    f"not pay; kept the observer ranges and round-to-nearest weights")
        return (f"output NMSE {self.nmse[i]:.2e}, but learning it (about {self.estimate[i]:.0f} s) did not fit "
                f"the {self.time_budget:.0f} s time budget after more harmful regions; kept the observer ranges")

    def worth(self, i: int) -> bool:
        return not self.learn_above or self.nmse[i] > self.learn_above   # 0: every region is worth it

    def to_dict(self) -> dict:
        return {"time_budget_s": self.time_budget, "learn_above_nmse": self.learn_above,
                "selected": sorted(self.selected), "nmse": [float(f"{v:.4g}") for v in self.nmse],
                "estimate_s": [round(v, 2) for v in self.estimate]}


def triage(regions, inputs: dict[str, torch.Tensor], mode, spec, device: str, eval_batch: int) -> Triage:
    """Measure every region on the evaluation subset ``inputs`` (placeholder name → tensor) and pick the
    ones to learn. ``mode`` is the learners' Mode (float targets, hard = observer-only quantized)."""
    float_cache, quant_cache = dict(inputs), dict(inputs)
    n = len(next(iter(inputs.values())))
    nmse, estimate = [], []
    for i, region in enumerate(regions):
        targets = run_region(region, float_cache, mode, "float", eval_batch, device)
        start = time.perf_counter()
        outputs = run_region(region, quant_cache, mode, "hard", eval_batch, device)
        seconds_per_sample = (time.perf_counter() - start) / n
        error = sum(float(((o - t) ** 2).sum()) for o, t in zip(outputs, targets))
        energy = sum(float((t ** 2).sum()) for t in targets)
        nmse.append(error / max(energy, 1e-30))
        estimate.append(spec.iterations * STEP_COST * seconds_per_sample * min(spec.batch_size, n))
        for name, f, q in zip(region.outputs, targets, outputs):
            float_cache[name], quant_cache[name] = f, q
        for name in [k for k in float_cache if region.last_use.get(k, -1) <= i]:
            float_cache.pop(name), quant_cache.pop(name)
    result = Triage(nmse, estimate, time_budget=spec.time_budget, learn_above=spec.learn_above)
    spent = 0.0
    for i in sorted(range(len(regions)), key=lambda k: -nmse[k]):
        if not result.worth(i):
            continue
        if spec.time_budget and spent + estimate[i] > spec.time_budget:
            continue   # a cheaper, less harmful region may still fit
        result.selected.add(i)
        spent += estimate[i]
    return result
