"""``edgeq gate``: fail CI when a change makes the shipped model slower, less accurate or bigger — and only then.

Two modes (``--mode auto`` picks interleaved for artifacts and bundles, report for two report.json files):
  - interleaved: baseline and candidate timed side by side on this machine (gate/interleaved.py), a
    regression only when even the fast end of the ratio's interval is slower than ``max_slowdown``;
  - report: stored raw samples of two reports, a regression only when a one-sided Mann-Whitney U test gives
    p < ``alpha`` *and* the median ratio exceeds ``max_slowdown`` (asv's rule); weaker, since the two sides
    were timed at different times.
Accuracy (``max_drop``, in the report's metric units) and size (``max_size_growth``) are checked per
(variant, target) whenever both sides know them. Every check becomes a finding; the result says which failed.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..envinfo import machine
from ..target import get_target
from .inputs import Entry, GateError, check_artifacts_timeable, check_comparable, load_side, pair_entries
from .interleaved import MAX_ROUNDS, MIN_ROUNDS, time_pair
from .stats import INTERVAL_COVERAGE, mann_whitney_slower, min_samples

SCHEMA = "edgeq.gate/1"
MODES = ("auto", "interleaved", "report")
# The smallest slowdown the gate must catch is 10 %, the largest it must let pass 3 %: with the rule "even the
# fast end of the interval is slower than the threshold", a threshold between the two, at 5 %, catches 10 % as
# soon as the interval is narrower than ±5 % and flags 3 % only if the interval is off by 2 % (see README).
DEFAULT_MAX_SLOWDOWN = 0.05
DEFAULT_ALPHA = 0.002
DEFAULT_MAX_SIZE_GROWTH = 0.10
CROSS_RUN_NOTE = ("report mode compares timings taken in two separate runs: machine load, clock and where the "
                  "sessions landed in memory differ between them (identical graphs measured up to ~6 % apart "
                  "across sessions on shared CI machines), so it is weaker than interleaved mode, which times "
                  "both sides together.")


@dataclass(frozen=True)
class GateOptions:
    target: str | None = None        # None: the artifact's own target, else the default
    mode: str = "auto"
    max_slowdown: float = DEFAULT_MAX_SLOWDOWN
    alpha: float = DEFAULT_ALPHA
    max_drop: float | None = None
    max_size_growth: float | None = DEFAULT_MAX_SIZE_GROWTH
    variants: tuple[str, ...] = ()
    max_rounds: int = MAX_ROUNDS
    threads: int | None = None
    data: str | None = None          # artifacts only: evaluation data for --max-drop
    metric: object = None            # an api.MetricChoice for that evaluation
    labels: str | None = None        # labels stored apart from --data
    eval_limit: int | None = None    # evaluate both artifacts on the first N samples of --data

    def validate(self) -> "GateOptions":
        if self.mode not in MODES:
            raise GateError(f"--mode must be one of {', '.join(MODES)}, not {self.mode}.")
        for name, value in (("--max-slowdown", self.max_slowdown), ("--max-size-growth", self.max_size_growth),
                            ("--max-drop", self.max_drop)):
            if value is not None and value < 0:
                raise GateError(f"{name} must not be negative (got {value}).")
        if not 0 < self.alpha < 1:
            raise GateError(f"--alpha must lie between 0 and 1 (got {self.alpha}).")
        if self.eval_limit is not None and self.eval_limit <= 0:
            raise GateError(f"--eval-limit must be positive (got {self.eval_limit}).")
        if self.max_rounds < MIN_ROUNDS:
            raise GateError(f"--max-rounds must be at least {MIN_ROUNDS} (got {self.max_rounds}).")
        return self


@dataclass
class GateResult:
    mode: str
    options: GateOptions
    findings: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not any(f["verdict"] == "regression" for f in self.findings)

    def to_dict(self) -> dict:
        o = self.options
        return {"schema": SCHEMA, "passed": self.passed, "mode": self.mode,
                "thresholds": {"max_slowdown": o.max_slowdown, "alpha": o.alpha if self.mode == "report" else None,
                               "max_drop": o.max_drop, "max_size_growth": o.max_size_growth},
                "regressions": sum(f["verdict"] == "regression" for f in self.findings),
                "findings": self.findings, "notes": self.notes, "seconds": round(self.seconds, 2),
                "machine": machine()}


def run_gate(baseline: str | Path, current: str | Path, options: GateOptions) -> GateResult:
    options.validate()
    if options.target:   # a target given as a YAML file is known by its name from here on
        options = dataclasses.replace(options, target=get_target(options.target).name)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgeq-gate-"))
    try:
        base = load_side("baseline", baseline, options.target, work)
        cur = load_side("current", current, options.target, work)
        mode = _mode(options.mode, base.kind, cur.kind)
        check_comparable(base, cur, timed_from_reports=mode == "report")
        pairs = pair_entries(base, cur, options.variants, options.target)
        _check_before_timing(pairs, base, cur, mode, options)
        result = GateResult(mode, options, notes=[CROSS_RUN_NOTE] if mode == "report" else [])
        for b, c in pairs:
            result.findings.append(_latency(b, c, mode, options))
            result.findings += _size(b, c, options) + _accuracy(b, c, base, cur, options)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


def _mode(asked: str, base_kind: str, cur_kind: str) -> str:
    reports = [k == "report" for k in (base_kind, cur_kind)]
    if asked == "report" and not all(reports):
        raise GateError("--mode report compares two report.json files (edgeq report); give one for each side.")
    if asked == "auto":
        if any(reports) and not all(reports):
            raise GateError("one side is a report.json and the other an artifact: give two artifacts or bundles "
                            "(interleaved) or two reports (report mode).")
        return "report" if all(reports) else "interleaved"
    return asked


def _check_before_timing(pairs: list[tuple[Entry, Entry]], base, cur, mode: str, o: GateOptions) -> None:
    """Everything that would refuse the comparison, before minutes of timing."""
    if mode == "interleaved":
        check_artifacts_timeable(pairs)
    else:
        need = min_samples(o.alpha)
        for entry, role in [(e, r) for b, c in pairs for e, r in ((b, "baseline"), (c, "current"))]:
            if len(entry.samples_ms) < need:
                raise GateError(f"the {role} report has {len(entry.samples_ms)} latency samples for {entry.variant} "
                                f"on {entry.target}; the Mann-Whitney test needs at least {need} per side to reach "
                                f"p < {o.alpha} (edgeq report --runs {max(need, 30)} or more).")
    if o.max_drop is None:
        return
    if base.kind == "report" and cur.kind == "report":
        a, b = base.report, cur.report
        if a["metric"] != b["metric"] or a["data"]["source"] != b["data"]["source"]:
            raise GateError(f"the reports measured accuracy differently (metric {a['metric'].get('name')} on "
                            f"{a['data']['source']} vs {b['metric'].get('name')} on {b['data']['source']}); "
                            f"--max-drop needs the same metric and data.")
    elif not o.data:
        raise GateError("--max-drop with artifacts needs --data to evaluate both on (e.g. --data zoo:test).")


def _finding(b: Entry, metric: str, baseline, current, change, statistic: str, verdict: str,
             change_unit: str = "fraction") -> dict:
    """``change``: current against baseline, as a fraction (latency, size) or in the metric's units."""
    return {"variant": b.variant, "target": b.target, "metric": metric, "baseline": baseline, "current": current,
            "change": change, "change_unit": change_unit, "statistic": statistic, "verdict": verdict}


def _latency(b: Entry, c: Entry, mode: str, o: GateOptions) -> dict:
    if mode == "interleaved":
        t = time_pair(b.artifact, c.artifact, b.target, o.max_slowdown, o.threads, max_rounds=o.max_rounds)
        i = t.interval
        stat = (f"time ratio {i.ratio:.3f}, {INTERVAL_COVERAGE:.0%} interval [{i.low:.3f}, {i.high:.3f}] over "
                f"{i.rounds} interleaved rounds ({t.runs_per_side} runs each side, {t.seconds:.1f} s)")
        verdict = "regression" if t.decision == "regression" else "pass"
        if t.decision == "undecided":
            stat += f"; undecided after {i.rounds} rounds: not shown to exceed the threshold"
        return _finding(b, "latency_p50_ms", _median(t.baseline_ms), _median(t.current_ms), round(i.ratio - 1, 4),
                        stat, verdict)
    u = mann_whitney_slower(b.samples_ms, c.samples_ms)
    slower = u.p_value < o.alpha and u.ratio > 1 + o.max_slowdown
    stat = (f"Mann-Whitney U one-sided p = {u.p_value:.2g} (n = {u.n_baseline}/{u.n_current}), median ratio "
            f"{u.ratio:.3f}")
    return _finding(b, "latency_p50_ms", _median(b.samples_ms), _median(c.samples_ms), round(u.ratio - 1, 4),
                    stat, "regression" if slower else "pass")


def _median(samples: list[float]) -> float:
    return round(float(np.median(samples)), 4)


def _size(b: Entry, c: Entry, o: GateOptions) -> list[dict]:
    if o.max_size_growth is None or not b.bytes or c.bytes is None:
        return []
    growth = c.bytes / b.bytes - 1
    verdict = "regression" if growth > o.max_size_growth else "pass"
    return [_finding(b, "bytes", b.bytes, c.bytes, round(growth, 4),
                     f"size {growth:+.1%} (limit +{o.max_size_growth:.0%})", verdict)]


def _accuracy(b: Entry, c: Entry, base, cur, o: GateOptions) -> list[dict]:
    if o.max_drop is None:
        return []
    if base.kind == "report" and cur.kind == "report":   # the stored scores (same metric and data: checked)
        if b.score is None or c.score is None:
            return []
        return [_drop_finding(b, b.score, c.score, base.report["metric"], o.max_drop)]
    scores = [_evaluate(e.artifact, e.target, o) for e in (b, c)]
    return [_drop_finding(b, scores[0][0], scores[1][0], scores[0][1], o.max_drop,
                          f" on {scores[0][2]} samples of {o.data}")]


def _drop_finding(b: Entry, base: float, cur: float, metric: dict, max_drop: float, on: str = "") -> dict:
    drop = (base - cur) if metric.get("higher_is_better", True) else (cur - base)
    unit = metric.get("unit") or ""
    return _finding(b, f"accuracy ({metric.get('name')})", base, cur, round(cur - base, 4),
                    f"drop {drop:.4g}{unit} (limit {max_drop:g}{unit}){on}",
                    "regression" if drop > max_drop else "pass", unit or "units")


def _evaluate(artifact: Path, target: str, o: GateOptions) -> tuple[float, dict, int]:
    from ..evaluate import evaluate_artifact
    result = evaluate_artifact(artifact, o.data, o.eval_limit, metric=o.metric, labels=o.labels, target=target)
    if "metric" not in result:
        raise GateError(f"{o.data} has no labels for a metric; --max-drop needs labelled data or --metric.")
    m = result["metric"]
    return (m["value"], {"name": m["name"], "unit": m["unit"], "higher_is_better": m["higher_is_better"]},
            result["samples"])
