"""The fallback stage: outlier blocks, accuracy budget, then latency-aware placement, in that order.

The outlier and budget stages revert units to float in the fake-quant graph (so later stages see earlier
decisions) and record why; the latency placement is searched per target on what they left, and recorded per
target. ``write_quantized`` then writes the bundle without the reverted units and with every placement.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import ui
from ..data import Dataset
from ..errors import BudgetError, EdgeqError, StageError
from ..metrics import compare_outputs
from ..target import DEFAULT_TARGET, get_target
from . import budget as budget_search
from . import placement, sensitivity
from .outliers import BLOCK
from .units import Decision, FloatSwitch, Unit, build_units, drop_units

SENSITIVITY_SAMPLES = 256


def best_effort_path(out: Path) -> Path:
    """Where a run that misses its accuracy budget leaves the best model it found."""
    return _sibling(out, "best-effort")


def learned_path(out: Path) -> Path:
    """Where a run whose fallback stage or bundle write failed leaves the model it learned (no fallback)."""
    return _sibling(out, "learned")


def _sibling(out: Path, tag: str) -> Path:
    out = Path(out)
    stem = out.name[: -len(".edgeq")] if out.name.endswith(".edgeq") else out.name
    return out.with_name(f"{stem}.{tag}.edgeq")


class StageFailure(Exception):
    """Something failed inside a named stage; ``keep_learned`` turns it into a StageError sentence."""

    def __init__(self, stage: str, cause: BaseException):
        super().__init__(f"{stage}: {cause}")
        self.stage, self.cause = stage, cause


@contextlib.contextmanager
def stage(name: str):
    """Name the stage of whatever fails inside (a missed budget is a result, not a failure)."""
    try:
        yield
    except (BudgetError, StageFailure):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever it is, the learned model must not be lost
        raise StageFailure(name, exc) from exc


# what to add to a --resume rerun so that it does not fail the same way
SKIP_STAGE = {"latency placement": "--no-latency-search"}


@contextlib.contextmanager
def keep_learned(out: Path, write_learned, learned_blocks: int | None):
    """Around the fallback stages and the bundle write, after quantization (and reconstruction) succeeded:
    a failure writes the learned model to ``learned_path(out)`` first, so the learned work is never lost
    (``out`` stays unwritten, the resume state stays where it is), and ends in one StageError sentence naming
    the stage. An EdgeqError is already a sentence raised on purpose: it keeps its class and sentence, which
    gains where the learned model went; a BudgetError, a result rather than a failure, writes nothing more.

    ``write_learned(path, report)`` writes the bundle without fallback decisions; ``learned_blocks``:
    how many reconstructed blocks a ``--resume`` rerun loads instead of learning (None: none saved).
    """
    try:
        yield
    except BudgetError:
        raise
    except Exception as exc:  # noqa: BLE001 - see stage()
        failure = exc if isinstance(exc, StageFailure) else StageFailure("fallback", exc)
        what = describe_failure(failure.cause)
        path = learned_path(out)
        try:
            write_learned(path, {"failed_stage": failure.stage, "error": what})
            kept = f"the learned model is in {path}"
        except Exception as again:  # noqa: BLE001
            kept = f"the learned model could not be written either ({describe_failure(again)})"
        resume = ""
        if learned_blocks:
            skip = f" {SKIP_STAGE[failure.stage]}" if failure.stage in SKIP_STAGE else ""
            resume = f", and rerunning with --resume{skip} skips the {learned_blocks} learned blocks"
        if isinstance(failure.cause, EdgeqError):   # the same sentence, and where the learned model went
            raise type(failure.cause)(f"{str(failure.cause).rstrip('.')}; {kept}{resume}.") from None
        raise StageError(f"the {failure.stage} stage failed: {what}; {kept}{resume}.") from failure.cause


def describe_failure(exc: BaseException) -> str:
    """A few words on what went wrong, naming the node where ONNX Runtime says which one it refused."""
    text = str(exc).strip()
    if isinstance(exc, EdgeqError):
        return text.rstrip(".")
    node = re.search(r"Name:'([^']+)'", text)
    if node:
        status = re.search(r"Status Message: ([^\n]*)", text)
        detail = status.group(1).split(" was false. ")[-1] if status else ""  # drop ORT's source location
        return f"ONNX Runtime refused node {node.group(1)}" + (f" ({detail.strip().rstrip('.')[:160]})"
                                                                 if detail else "")
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@dataclass
class FallbackResult:
    """Decisions per unit: ``reverted_units`` (outliers, accuracy budget) hold on every target; ``placements``
    holds each target's latency placement (target -> unit -> Decision), the default target first."""

    reverted_units: dict[str, Decision] = field(default_factory=dict)
    placements: dict[str, dict[str, Decision]] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    seconds: float = 0.0
    fidelity: dict | None = None
    budget_met: bool | None = None

    @property
    def default_target(self) -> str | None:
        return next(iter(self.placements), None)

    def floated_units(self, target: str | None = None) -> dict[str, Decision]:
        """Every unit in float for ``target`` (default: the default target)."""
        target = target or self.default_target
        return {**self.reverted_units, **self.placements.get(target, {})}

    def summary(self) -> dict:
        placements = self.report.get("placements") or {}
        first = next(iter(placements.values()), {})
        return {"reverted_units": len(self.floated_units()), "units": self.report.get("units"),
                "outliers": len((self.report.get("outliers") or {}).get("flagged", [])),
                "budget": (self.report.get("budget") or {}).get("budget"), "budget_met": self.budget_met,
                "target": first.get("target"), "placement": first.get("verdict"),
                "placements": {t: {"verdict": p.get("verdict"), "float_units": len(self.placements.get(t, {}))}
                               for t, p in placements.items()},
                "seconds": round(self.seconds, 2)}


@dataclass
class FallbackRun:
    """Run options: a budget (with its evaluation data), the latency targets, and whether to search."""

    budget: budget_search.Budget | None = None
    eval_data: Dataset | None = None
    targets: tuple[str, ...] = (DEFAULT_TARGET,)   # a placement per target; the first is the bundle's default
    latency_search: bool | None = None   # None: the recipe decides
    placements: dict | None = None       # placements found earlier (read_placements), applied instead of a search
    # writes the model as decided so far as target's int8 QDQ ONNX: export_int8(q, decisions, data, path,
    # target). The caller passes it in, so this stage never calls back up into the pipeline or the exporter that drive it.
    export_int8: Callable | None = None
    _budget_metric: budget_search.BudgetMetric | None = field(default=None, init=False, repr=False)

    def apply(self, q, data: Dataset, out: Path) -> FallbackResult:
        start = time.perf_counter()
        result = FallbackResult()
        units = build_units(q.records, q.block_map)
        switch = FloatSwitch(q.gm, q.records)
        result.report["units"] = len(units)
        if q.recipe.fallback.outliers:
            with stage("outlier fallback"):
                result.report["outliers"] = _outliers(q, units, switch, result)
        if self.budget is not None:
            with stage("accuracy budget"):
                result.report["budget"] = self._budget(q, data, units, switch, result)
        search = q.recipe.fallback.latency_search if self.latency_search is None else self.latency_search
        if self.placements is not None or search:
            with stage("latency placement"), _workdir(out) as work:   # one int8 export serves every target
                result.report["placements"] = {t: self._place(t, q, data, units, result, work)
                                               for t in self._placement_targets()}
        by_name = {u.name: u for u in units}
        if self.budget is not None and result.placements:  # placements float more: judge each again
            with stage("accuracy budget"):
                self._judge_placements(q, data, by_name, switch, result)
        with switch.floating([by_name[n] for n in result.placements.get(result.default_target, {})]):
            result.fidelity = compare_outputs(q.float_out, _run(q, q.samples))   # as the default target ships it
        result.seconds = time.perf_counter() - start
        return result

    def _placement_targets(self) -> list[str]:
        if self.placements is None:
            return list(dict.fromkeys(self.targets))
        return list(self.placements)

    def _place(self, target: str, q, data: Dataset, units: list[Unit], result: FallbackResult, work: Path) -> dict:
        """One target's placement: applied from an earlier search, searched here, or (where this machine cannot
        time the target) the recipe's placement with the reason; the decisions go to ``result.placements``."""
        decisions: dict[str, Decision] = {}
        if self.placements is not None:
            report = _apply_placement(self.placements[target], units, result, decisions)
        elif _cannot_search(target):
            report = {"target": target, "steps": [], "floated_units": [], "not_searched": _cannot_search(target),
                      "verdict": f"not searched: {_cannot_search(target)}; the recipe's placement is kept"}
        else:
            if self.export_int8 is None:
                raise EdgeqError("the latency placement search needs an int8 exporter (FallbackRun.export_int8).")
            report = _placement(q, data, units, result, target, work, self.export_int8, decisions)
        result.placements[target] = decisions
        report["float_layers"] = {layer: d.reason for u, d in decisions.items() for layer in _unit_layers(units, u)}
        return report

    def _judge_placements(self, q, data: Dataset, by_name: dict[str, Unit], switch: FloatSwitch,
                          result: FallbackResult) -> None:
        """The budget on each target's placement; the bundle meets it only if every placement does."""
        metric = self._metric(q, data, list(by_name.values()), switch)
        judged = {}
        for target, decisions in result.placements.items():
            with switch.floating([by_name[n] for n in decisions]):
                judged[target] = metric.measure(q.gm)
        failing = [t for t, m in judged.items() if not metric.holds(m)]
        budget = result.report["budget"]
        budget["after_placement"] = judged[failing[0] if failing else result.default_target]
        budget["after_placement_by_target"] = judged
        result.budget_met = not failing

    def _metric(self, q, data: Dataset, units: list[Unit], switch: FloatSwitch) -> budget_search.BudgetMetric:
        """The budget judged on the evaluation data (or the calibration data), against the float model."""
        if self._budget_metric is None:
            source = self.eval_data if self.eval_data is not None else data
            labels = source.labels if self.budget.max_drop is not None else None
            with switch.floating(units):
                float_out = _run(q, source.samples)
            self._budget_metric = budget_search.BudgetMetric(
                self.budget, sensitivity.Probe(source.samples, float_out, labels, q.batch_size))
        return self._budget_metric

    def _budget(self, q, data: Dataset, units: list[Unit], switch: FloatSwitch, result: FallbackResult) -> dict:
        calib = data.samples.uniform().take(slice(0, SENSITIVITY_SAMPLES))
        with switch.floating(units):
            float_out = _run(q, calib)
        live = [u for u in units if u.name not in switch.floated]
        with ui.status("ranking units by sensitivity"):
            ranking = sensitivity.rank_units(q.gm, switch, live, sensitivity.Probe(calib, float_out, None,
                                                                                   q.batch_size))
        metric = self._metric(q, data, units, switch)
        with ui.status(f"searching for the accuracy budget ({self.budget.describe()})"):
            report = budget_search.search(q.gm, switch, live, metric, [r["unit"] for r in ranking])
        for step in report["reverted"]:
            result.reverted_units[step["unit"]] = Decision(
                "budget", f"{step['reason']}; after reverting: {_fmt(step['after'])}")
        result.budget_met = report["met"]
        report["sensitivity_top"] = ranking[:10]
        report["evaluation"] = {"source": (self.eval_data or data).source, "samples": len(metric.probe.samples),
                                "labelled": metric.probe.labels is not None}
        return report


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in m.items())


def _run(q, x):
    from ..samples import run_graph
    return run_graph(q.gm, x, q.batch_size)


def _outliers(q, units: list[Unit], switch: FloatSwitch, result: FallbackResult) -> dict:
    threshold = q.recipe.fallback.outlier_ratio
    flagged = []
    for unit in units:
        stats = q.outlier_stats.get(unit.name)
        if stats and stats["outlier"]:
            switch.set_float(unit, True)
            result.reverted_units[unit.name] = Decision("outliers",
                f"outlier channel blocks: largest block max |x| / median channel max = {stats['ratio']} > {threshold} "
                f"(blocks of {BLOCK} channels); the int8 kernels of the target take one scale per tensor")
            flagged.append(unit.name)
    return {"threshold": threshold, "block_channels": BLOCK, "flagged": flagged,
            "ratios": {name: s["ratio"] for name, s in q.outlier_stats.items()}}


def _cannot_search(target: str) -> str | None:
    """Why the latency search cannot time candidates for ``target`` here, or None."""
    found = get_target(target)
    if found.form != "onnx":
        return f"the search times QDQ ONNX candidates, and {found.name} runs {found.form} artifacts"
    return found.unavailable()


def _unit_layers(units: list[Unit], name: str) -> tuple[str, ...]:
    return next(u.layers for u in units if u.name == name)


@contextlib.contextmanager
def _workdir(out: Path):
    """A scratch folder next to the output (same file system as the bundle), removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix="edgeq-place-", dir=out.parent if out.parent.exists() else None))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _placement(q, data: Dataset, units: list[Unit], result: FallbackResult, target: str, work: Path,
               export_int8: Callable, decisions: dict[str, Decision]) -> dict:
    """Time candidate placements on ``target``, starting from the model as decided before any placement
    (exported once into ``work`` and shared by the targets), and record the units int8 does not pay for there
    in ``decisions`` (the fake-quant graph is left as it was)."""
    live = [u for u in units if u.name not in result.reverted_units]
    if not live:
        return {"target": target, "verdict": "nothing left in int8 to place", "steps": [], "floated_units": []}
    # one int8 export per graph form, shared by the targets that run it (the form decides what can be int8)
    int8, export_seconds = work / f"int8-{get_target(target).qdq_form}.onnx", 0.0
    if not int8.exists():
        started = time.perf_counter()
        provisional = FallbackResult(reverted_units=dict(result.reverted_units), report=dict(result.report))
        with ui.quiet():
            export_int8(q, provisional, data, int8, target)
        export_seconds = time.perf_counter() - started
    renamed, _ = drop_units(q.float_graph(), q.records, q.act_qparams(), set(result.reverted_units))
    to_new = {u.name: renamed[u.layers[0]].act_module for u in live}
    to_old = {new: old for old, new in to_new.items()}
    report = placement.search(int8, [dataclasses.replace(u, name=to_new[u.name]) for u in live], target)
    report["export_seconds"] = round(export_seconds, 2)
    reasons = {}
    for step in report["steps"]:
        step["units"] = [to_old[n] for n in step["units"]]
        for name in step["units"]:
            if step["decision"] == "float" and name not in reasons:  # the step that floated it
                reasons[name] = Decision("latency", f"latency on {target}: {step['candidate']} in float {step['float_ms']} ms "
                                 f"vs int8 {step['int8_ms']} ms (paired ratio {step['ratio']}, 90 % interval "
                                 f"{step['interval'][0]}–{step['interval'][1]})", target)
    report["floated_units"] = sorted(to_old[n] for n in report["floated_units"])
    for name in report["floated_units"]:
        decisions[name] = reasons.get(name, Decision("latency", f"latency on {target}: {report['verdict']}", target))
    return report


def read_placements(source: str | Path) -> dict[str, dict]:
    """The latency placements of a bundle (or a JSON file written from one), per target, the bundle's default
    first: which layers each keeps in float. A JSON file from an earlier edgeq (one placement) still reads."""
    import json

    from ..bundle import manifest_for, placement_targets
    from ..errors import BundleError
    source = Path(source)
    try:
        if source.is_dir():
            manifest = json.loads((source / "manifest.json").read_text())
        else:
            saved = json.loads(source.read_text())
            if not isinstance(saved, dict):   # a JSON list or number: the sentence below
                raise TypeError
            if "placements" in saved and "format" not in saved:
                checked = [_checked_placement(source, t, p) for t, p in saved["placements"].items()]
                return {p["target"]: p for p in checked}
            if "float_layers" in saved:
                checked = _checked_placement(source, saved.get("target"), saved)
                return {checked["target"]: checked}
            manifest = saved
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise BundleError(f"{source} is neither an edgeq bundle nor a placement file.") from None
    fallback = manifest.get("fallback") or {}
    targets = placement_targets(manifest)
    if not targets and "floated_units" in (fallback.get("placement") or {}):
        targets = [fallback["placement"]["target"]]   # a format-2 bundle: one placement, in its layers
    searched = [t for t in targets if _is_placement(manifest_for(manifest, t)["fallback"]["placement"])]
    if not searched:
        raise BundleError(f"{source} has no latency placement; quantize it with a latency-searching recipe (w8a8).")
    return {t: _placement_of(source, manifest_for(manifest, t)) for t in searched}


def _checked_placement(source: Path, target, placement) -> dict:
    """A placement read from a JSON file, which a user may have written or edited by hand: a sentence for what
    is missing or mistyped (before any work, not a KeyError after calibration), defaults for what only
    describes it."""
    from ..errors import BundleError
    from ..target import get_target

    def names(key: str) -> list[str]:
        value = placement.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BundleError(f"{source}: {key!r} must be a list of layer names (as in the bundle's manifest).")
        return value

    if not isinstance(placement, dict) or not isinstance(target, str):
        raise BundleError(f"{source}: each placement needs a 'target' (such as x86-cpu-openvino) and "
                          f"'float_layers'.")
    if "float_layers" not in placement:
        raise BundleError(f"{source}: the placement for {target} has no 'float_layers' list.")
    return {**placement, "target": get_target(target).name,   # an unknown target: its own sentence
            "float_layers": names("float_layers"), "int8_layers": names("int8_layers"),
            "verdict": placement.get("verdict") or f"placement read from {source.name}",
            "model": placement.get("model", "another model"), "input": placement.get("input", "unknown"),
            "source": placement.get("source", str(source))}


def _is_placement(report: dict) -> bool:
    return "floated_units" in report and not report.get("not_searched")


def _placement_of(source: Path, manifest: dict) -> dict:
    placement = manifest["fallback"]["placement"]
    layers = manifest["layers"]
    return {"source": str(source), "model": manifest["model"]["spec"], "input": manifest["input"]["shape"],
            "target": placement["target"], "verdict": placement["verdict"],
            "float_layers": sorted(n for n, d in layers.items()
                                   if not d["quantized"] and d.get("stage") == "latency"),
            "int8_layers": sorted(n for n, d in layers.items() if d["quantized"]),
            "search": {k: placement.get(k) for k in ("fp32_ms", "all_int8_ms", "final", "steps", "seconds",
                                                     "export_seconds", "measurements", "cache_hits")}}


def _apply_placement(placement: dict, units: list[Unit], result: FallbackResult,
                     decisions: dict[str, Decision]) -> dict:
    from ..errors import BundleError
    known = {layer for u in units for layer in u.layers}
    float_layers = set(placement["float_layers"])
    missing = sorted((float_layers | set(placement["int8_layers"])) - known)
    if missing:
        raise BundleError(f"the placement from {placement.get('source')} does not fit this model (it names layer "
                          f"{missing[0]!r}, which this model does not quantize); it was searched on another "
                          f"architecture or recipe.")
    target = placement["target"]
    for unit in units:
        if unit.name not in result.reverted_units and set(unit.layers) <= float_layers:
            decisions[unit.name] = Decision(
                "latency", f"latency on {target}: placement searched on {placement['model']} at input "
                           f"{placement['input']}", target)
    return {"target": target, "verdict": placement["verdict"], "from": placement.get("source"),
            "searched_on": {"model": placement["model"], "input": placement["input"]},
            "floated_units": list(decisions), "steps": []}
