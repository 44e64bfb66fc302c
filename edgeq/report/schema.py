"""The report's versioned schema: checked when a report is written and when one is read (the gate reads
stored reports, so a report from another version is refused by name, never half understood)."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgeqError

SCHEMA = "edgeq.report/1"
NUMBER = (int, float)
OPTIONAL_NUMBER = (int, float, type(None))

TOP = {"schema": str, "generated": str, "model": str, "data": dict, "metric": dict, "targets": list,
       "variants": list, "rows": list, "env": dict}
TARGET = {"name": str, "runtime": str, "form": str, "measured": bool}
VARIANT = {"name": str, "kind": str}
ROW = {"variant": str, "kind": str, "target": str, "label": str, "measured": bool}
MEASURED_ROW = {"artifact": str, "bytes": int, "latency": dict, "speedup_vs_target_fp32": OPTIONAL_NUMBER,
                "ptq_seconds": OPTIONAL_NUMBER}
SCORED_ROW = {"score": NUMBER, "fp32_score": NUMBER, "drop": NUMBER}
LATENCY = {"batch": int, "runs": int, "p50_ms": NUMBER, "p90_ms": NUMBER, "p99_ms": NUMBER, "mean_ms": NUMBER,
           "std_ms": NUMBER, "samples_ms": list}


class ReportError(EdgeqError):
    """A report file is missing, malformed or from another schema version."""


def validate(report: dict, where: str = "report") -> dict:
    """``report`` if it follows SCHEMA; otherwise ReportError naming the field."""
    if not isinstance(report, dict):
        raise ReportError(f"{where} is not a JSON object.")
    if report.get("schema") != SCHEMA:
        raise ReportError(f"{where} is {report.get('schema') or 'not an edgeq report'}; this edgeq reads {SCHEMA}.")
    _fields(report, TOP, where)
    for i, target in enumerate(report["targets"]):
        _fields(target, TARGET, f"{where}: targets[{i}]")
    for i, variant in enumerate(report["variants"]):
        _fields(variant, VARIANT, f"{where}: variants[{i}]")
    for i, row in enumerate(report["rows"]):
        _row(row, f"{where}: rows[{i}]")
    return report


def _row(row: dict, where: str) -> None:
    _fields(row, ROW, where)
    if not row["measured"]:
        if not isinstance(row.get("not_measured"), str) or not row["not_measured"]:
            raise ReportError(f"{where}: a row that was not measured must say why (field 'not_measured').")
        if row.get("latency") is not None or row.get("score") is not None:
            raise ReportError(f"{where}: a row that was not measured carries no latency or score.")
        return
    _fields(row, MEASURED_ROW, where)
    if row.get("score") is not None:
        _fields(row, SCORED_ROW, where)
    latency = row["latency"]
    _fields(latency, LATENCY, f"{where}.latency")
    if not latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"]:
        raise ReportError(f"{where}.latency: percentiles out of order (p50 {latency['p50_ms']}, "
                          f"p90 {latency['p90_ms']}, p99 {latency['p99_ms']}).")
    if len(latency["samples_ms"]) != latency["runs"] or latency["runs"] <= 0:
        raise ReportError(f"{where}.latency: {latency['runs']} runs but {len(latency['samples_ms'])} raw samples.")


def _fields(obj, spec: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise ReportError(f"{where} must be an object.")
    for key, kind in spec.items():
        value = obj.get(key)
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
            raise ReportError(f"{where}: field {key!r} must be {_describe(kind)}, got {value!r:.60}.")


def _kinds(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _describe(kind) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object",
             list: "a list", type(None): "null"}
    return " or ".join(dict.fromkeys(names[k] for k in _kinds(kind)))


def read_report(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise ReportError(f"report {path} does not exist.")
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path} is not a JSON report ({str(exc).splitlines()[0][:80]}).") from None
    return validate(report, str(path))


def dumps(report: dict) -> str:
    return json.dumps(validate(report), indent=1) + "\n"
