"""What the gate compares: each side is an exported artifact, a bundle, or a stored report.json.

Every side is reduced to ``Entry`` rows, one per (variant, target) — an artifact or bundle is a single entry,
a report one per measured row — and the two sides are paired by (variant, target). A side from another model
or input shape, another target, another CPU (for stored timings) or another schema version is refused by
name before anything is timed.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError, EdgeqError
from ..profile.measure import artifact_form
from ..report.schema import read_report
from ..runtimes.base import onnx_file
from ..target import DEFAULT_TARGET, get_target, target_names


class GateError(EdgeqError):
    """The two sides cannot be compared (one sentence says which field differs or what is missing)."""


@dataclass
class Entry:
    """One thing to compare: a (variant, target) with whatever is known about it."""
    variant: str
    target: str
    artifact: Path | None = None     # a file this machine can time (None: stored numbers only)
    bytes: int | None = None
    samples_ms: list[float] | None = None
    score: float | None = None


@dataclass
class Side:
    role: str                        # baseline | current
    path: Path
    kind: str                        # artifact | bundle | report
    model: str | None
    input_shape: object
    entries: dict[tuple[str, str], Entry] = field(default_factory=dict)
    report: dict | None = None
    pinned_target: str | None = None  # the target an artifact was exported for, when it names one


def load_side(role: str, path: str | Path, target: str | None, work: Path) -> Side:
    """``path`` as a Side; a bundle is exported to ONNX for ``target`` under ``work`` first. Without a
    ``target``: the one an artifact was exported for, a bundle's default placement target, or the default."""
    path = Path(path)
    if not path.exists():
        raise GateError(f"the {role} {path} does not exist.")
    if path.suffix == ".json" or (path.is_dir() and (path / "report.json").is_file()):
        return _report_side(role, path)
    form = artifact_form(path)
    if form == "bundle":
        return _bundle_side(role, path, target, work)
    return _artifact_side(role, path, target)


def _report_side(role: str, path: Path) -> Side:
    report = read_report(path)   # refuses another schema version by name
    folder = path if path.is_dir() else path.parent
    side = Side(role, path, "report", report["model"], report.get("input_shape"), report=report)
    metric = report["metric"]
    for row in report["rows"]:
        if not row["measured"]:
            continue
        side.entries[(row["variant"], row["target"])] = Entry(
            row["variant"], row["target"], _kept_artifact(path, folder, row["artifact"]), row["bytes"],
            row["latency"]["samples_ms"], row.get("score") if metric.get("name") else None)
    return side


def _kept_artifact(path: Path, folder: Path, name: str) -> Path | None:
    """A report's artifact kept beside it: ``edgeq report --keep-artifacts`` puts it in ``artifacts/``; a
    report stored as ``NAME.json`` may keep its artifacts in a folder ``NAME/``."""
    for candidate in (folder / "artifacts" / name, folder / path.stem / name):
        if candidate.is_file():
            return candidate
    return None


def _artifact_side(role: str, path: Path, target: str) -> Side:
    from ..export.onnx import read_artifact
    file = onnx_file(path)
    if not file.is_file():
        raise GateError(f"the {role} {path} is not an artifact edgeq can time (an .onnx file, an edgeq export "
                        f"folder, a bundle or a report.json).")
    record = read_artifact(file)
    pinned = record.get("target") if record.get("target") in target_names() else None   # not "TensorRT" etc.
    target = target or pinned or DEFAULT_TARGET
    side = Side(role, path, "artifact", record.get("model"), (record.get("input") or {}).get("shape"),
                pinned_target=pinned)
    variant = record.get("recipe") or record.get("precision") or "model"
    side.entries[(variant, target)] = Entry(variant, target, file, file.stat().st_size)
    return side


def _bundle_side(role: str, path: Path, target: str, work: Path) -> Side:
    """The bundle exported to ONNX as ``target`` ships it (its placement for it, or the recipe's)."""
    from .. import api
    from ..bundle import placement_targets, read_bundle
    manifest = read_bundle(path).manifest
    target = target or next(iter(placement_targets(manifest)), DEFAULT_TARGET)
    placed = target in placement_targets(manifest)
    out = Path(tempfile.mkdtemp(prefix=f"{role}-", dir=work)) / "model.onnx"
    api.export(path, "onnx", out, precision="int8", target=target if placed else None)
    side = Side(role, path, "bundle", manifest["model"]["spec"], manifest["input"]["shape"])
    variant = manifest["recipe"]["name"]
    side.entries[(variant, target)] = Entry(variant, target, out, out.stat().st_size)
    return side


def check_comparable(baseline: Side, current: Side, timed_from_reports: bool) -> None:
    """Refuse sides that describe different things, naming the field that differs."""
    for label, a, b in (("model", baseline.model, current.model),
                        ("input shape", _shape(baseline.input_shape), _shape(current.input_shape)),
                        ("target", baseline.pinned_target, current.pinned_target)):
        if a is not None and b is not None and a != b:
            raise GateError(f"the baseline and the current side differ in {label} ({a} vs {b}); the gate "
                            f"compares one model on one target.")
    targets = [{key[1] for key in s.entries} for s in (baseline, current)]
    if not targets[0] & targets[1]:
        raise GateError(f"the baseline and the current side differ in target ({', '.join(sorted(targets[0]))} vs "
                        f"{', '.join(sorted(targets[1]))}); the gate compares one model on one target.")
    if baseline.kind == "report" and current.kind == "report" and timed_from_reports:
        cpus = [(s.report["env"].get("machine") or {}).get("processor") for s in (baseline, current)]
        if cpus[0] and cpus[1] and cpus[0] != cpus[1]:
            raise GateError(f"the two reports were timed on different CPUs ({cpus[0]} vs {cpus[1]}); their "
                            f"latencies cannot be compared: keep the artifacts (edgeq report --keep-artifacts) and "
                            f"use --mode interleaved.")


def _shape(shape) -> str | None:
    if shape is None:
        return None
    return json.dumps(shape)


def pair_entries(baseline: Side, current: Side, variants: tuple[str, ...],
                 target: str | None = None) -> list[tuple[Entry, Entry]]:
    """(baseline, current) entries with the same variant and target (only ``variants`` and ``target`` when
    given); an entry on one side only is refused (--variant leaves the others out)."""
    def keep(key):
        return (not variants or key[0] in variants) and (target is None or key[1] == target)
    if baseline.kind != "report" and current.kind != "report":   # one artifact each: the same thing by intent
        return [(next(iter(baseline.entries.values())), next(iter(current.entries.values())))]
    a = {k: e for k, e in baseline.entries.items() if keep(k)}
    b = {k: e for k, e in current.entries.items() if keep(k)}
    for one, other, where in ((a, b, "current"), (b, a, "baseline")):
        missing = sorted(set(one) - set(other))
        if missing:
            variant, target = missing[0]
            raise GateError(f"variant {variant} on {target} is in the {'baseline' if where == 'current' else 'current'}"
                            f" side only (not in the {where} one); choose the variants to compare with --variant.")
    if not a:
        raise GateError("the two sides have no measured variant in common" +
                        (f" among {', '.join(variants)}" if variants else "") + (f" on {target}." if target else "."))
    return [(a[k], b[k]) for k in sorted(a)]


def check_artifacts_timeable(pairs: list[tuple[Entry, Entry]]) -> None:
    for base, cur in pairs:
        for entry, role in ((base, "baseline"), (cur, "current")):
            if entry.artifact is None:
                raise GateError(f"the {role} report keeps no artifact for {entry.variant} on {entry.target} "
                                f"(edgeq report --keep-artifacts keeps them), so it cannot be timed interleaved; "
                                f"use --mode report.")
        reason = get_target(base.target).unavailable()
        if reason:
            raise ArtifactError(f"cannot time {base.variant} on {base.target} here: {reason}.")

