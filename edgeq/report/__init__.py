"""``edgeq report``: the per-device latency-accuracy report (report.json, report.md, report.html).

build.py measures, schema.py defines and checks the JSON, render.py writes Markdown and the self-contained
page, plots.py draws its charts. ``edgeq demo`` and ``edgeq bench`` write through ``write_report``.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..fsutil import atomic_path, check_output
from .build import ReportSpec, build_report
from .render import to_html, to_markdown
from .schema import SCHEMA, ReportError, dumps, read_report, validate

__all__ = ["ReportSpec", "SCHEMA", "ReportError", "build_report", "make_report", "read_report", "validate",
           "write_report"]


def write_report(report: dict, folder: Path) -> dict:
    """report.json (validated first), report.md and report.html into an existing ``folder``."""
    text = dumps(report)
    (folder / "report.json").write_text(text)
    (folder / "report.md").write_text(to_markdown(report))
    (folder / "report.html").write_text(to_html(report))
    return {name: str(folder / f"report.{name}") for name in ("json", "md", "html")}


def make_report(spec: ReportSpec, out: str | Path, force: bool = False, keep_artifacts: bool = False) -> dict:
    """Build and write the report into the folder ``out`` (all or nothing: a failure leaves no folder).
    With ``keep_artifacts`` the measured files stay in ``out/artifacts``."""
    out = check_output(out, force, is_dir=True)
    with atomic_path(out, is_dir=True) as tmp:
        work = tmp / "artifacts" if keep_artifacts else Path(tempfile.mkdtemp(prefix="edgeq-report-"))
        try:
            report = build_report(spec, work)
            write_report(report, tmp)
        finally:
            if not keep_artifacts:
                shutil.rmtree(work, ignore_errors=True)
    return {"report": report, "files": {n: str(out / f"report.{n}") for n in ("json", "md", "html")},
            "markdown": to_markdown(report)}
