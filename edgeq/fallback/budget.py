"""Accuracy-budget fallback: revert the most sensitive units to float until the budget holds.

Budgets: ``max_drop`` (the drop of a metric against the float model on evaluation data, in that metric's
units: top-1 in percentage points, CTC character error rate in points, a user metric in its own) or
``min_cosine`` (mean output cosine against the float model, for unlabelled data). Each step tries
the CANDIDATES most promising remaining units (ranked by their only-quantized SQNR at the start,
then by what each try measured), reverts the one that helps most, and re-ranks. An all-float model is
not a quantization result: when the budget needs every unit in float, the search says so.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..metrics import Metric, get_metric
from .sensitivity import Probe
from .units import FloatSwitch, Unit

CANDIDATES = 4


def output_cosine(outputs, reference) -> float:
    """Mean per-sample cosine against the float outputs, over every output."""
    return get_metric("cosine").score(outputs, None, reference)


@dataclass(frozen=True)
class Budget:
    max_drop: float | None = None      # in the metric's display units
    min_cosine: float | None = None
    metric: Metric | None = None       # what max_drop measures (top1 by default for class labels)

    def describe(self) -> str:
        if self.max_drop is None:
            return f"cosine ≥ {self.min_cosine}"
        unit = f" {self.metric.unit}" if self.metric.unit else ""
        return f"{self.metric.name} drop ≤ {self.max_drop}{unit}"


class BudgetMetric:
    """Scores the current graph against the budget; larger ``key`` is better."""

    def __init__(self, budget: Budget, probe: Probe):
        self.budget, self.probe = budget, probe
        self.float_score = (budget.metric.score(probe.float_out, probe.labels, probe.float_out)
                            if budget.max_drop is not None else None)

    def measure(self, gm) -> dict:
        out = self.probe.outputs(gm)
        result = {"cosine": output_cosine(out, self.probe.float_out)}  # unrounded: the budget is judged on it
        if self.float_score is not None:
            metric = self.budget.metric
            score = metric.score(out, self.probe.labels, self.probe.float_out)
            result[metric.name] = round(metric.display(score), 4)
            result["drop"] = round(metric.drop(self.float_score, score), 4)
        return result

    def holds(self, m: dict) -> bool:
        if self.budget.max_drop is not None:
            return m["drop"] <= self.budget.max_drop
        return m["cosine"] >= self.budget.min_cosine

    def key(self, m: dict) -> tuple:
        return (-m.get("drop", 0.0), m["cosine"])


def search(gm, switch: FloatSwitch, units: list[Unit], metric: BudgetMetric, ranking: list[str]) -> dict:
    """Reverts units in ``switch`` (left reverted) and returns the decisions and the final measurement."""
    order = {name: i for i, name in enumerate(ranking)}
    remaining = sorted(units, key=lambda u: order.get(u.name, len(order)))
    current = metric.measure(gm)
    steps = []
    start = current
    while not metric.holds(current) and len(remaining) > 1:
        tried = []
        for unit in remaining[:CANDIDATES]:
            with switch.floating([unit]):
                tried.append((metric.measure(gm), unit))
        result, unit = max(tried, key=lambda t: metric.key(t[0]))
        switch.set_float(unit, True)
        steps.append({**unit.to_dict(), "before": current, "after": result,
                      "reason": f"accuracy budget ({metric.budget.describe()}): most helpful of "
                                f"{len(tried)} candidates"})
        current = result
        tried_order = {u.name: -i for i, (_, u) in enumerate(sorted(tried, key=lambda t: metric.key(t[0]),
                                                                     reverse=True))}
        remaining = [u for u in remaining if u.name != unit.name]
        remaining.sort(key=lambda u: (0, -tried_order[u.name]) if u.name in tried_order
                       else (1, order.get(u.name, len(order))))
    met = metric.holds(current)
    return {"budget": metric.budget.describe(), "met": met, "start": start, "final": current,
            "reverted": steps, "quantized_units_left": len(remaining),
            "metric": metric.budget.metric.name if metric.budget.metric else "cosine",
            "float_score": (round(metric.budget.metric.display(metric.float_score), 4)
                            if metric.float_score is not None else None)}


