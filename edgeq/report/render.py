"""The report as Markdown (for a pull request or a terminal) and as one self-contained HTML page (charts as
inline SVG, a few lines of inline script, no external file or network access)."""
from __future__ import annotations

import html
import json
from collections import Counter

from .plots import layers_svg, pareto_svg

COLUMNS = ("variant", "target", "metric", "drop", "p50 ms", "p90 ms", "speed-up vs target FP32", "size MB",
           "PTQ s", "float units")


def table_cells(row: dict) -> list[str]:
    """The variant table's cells for one row (shared by Markdown and HTML)."""
    if not row["measured"]:
        return [row["label"], row["target"], f"not measured: {row['not_measured']}"] + ["–"] * (len(COLUMNS) - 3)
    lat = row["latency"]
    score = "–" if row.get("score") is None else f"{row['score']:.2f}"
    drop = "–" if row.get("drop") is None else f"{row['drop']:+.2f}"
    speed = _speed_cell(row)
    units = f"{row['float_units']} / {row['units']}" if row.get("units") is not None else "–"
    p50 = f"{lat['p50_ms']:.3f}" + (f" (RTF {row['rtf']:.4f})" if row.get("rtf") is not None else "")
    return [row["label"], row["target"], score, drop, p50, f"{lat['p90_ms']:.3f}", speed,
            f"{row['bytes'] / 1e6:.2f}", "–" if row.get("ptq_seconds") is None else f"{row['ptq_seconds']:.1f}",
            units]


def _speed_cell(row: dict) -> str:
    if row.get("speedup_vs_target_fp32") is None:
        return "–"
    if row["variant"] == "fp32":
        return "1.00x"
    if row.get("units") and row.get("float_units") == row["units"]:
        # the FP32 graph itself: whatever it measured against the FP32 file is the difference between two
        # sessions of one model (up to ±6 % on these machines), not a speed-up
        return f"= FP32 graph (measured {row['speedup_vs_target_fp32']:.2f}x)"
    if row.get("within_noise"):
        low, high = row["speedup_interval"]
        return f"≈1 (noise: {low:.2f}–{high:.2f}x)"
    return f"{row['speedup_vs_target_fp32']:.2f}x"


def table_rows(report: dict) -> list[tuple[bool, list[str]]]:
    """Measured rows one by one; the unmeasured rows of a target, which all say the same, as one line."""
    cells, said = [], set()
    for row in report["rows"]:
        if row["measured"]:
            cells.append((True, table_cells(row)))
        elif (row["target"], row["not_measured"]) not in said:
            said.add((row["target"], row["not_measured"]))
            variants = [r["label"] for r in report["rows"] if r["target"] == row["target"] and not r["measured"]]
            cells.append((False, table_cells({**row, "label": ", ".join(variants)})))
    return cells


def _export_cells(report: dict) -> list[list[str]]:
    return [[e["target"], e["artifact"] or "–", f"{e['bytes'] / 1e6:.2f}" if e["bytes"] else "–", e["check"]]
            for e in report["exports"]]


def _metric_title(metric: dict) -> str:
    """The metric column's title: a "pp" metric (top-1) shows percent; its drops are percentage points."""
    unit = {"pp": "%", "": ""}.get(metric.get("unit") or "", metric.get("unit"))
    return f"{metric.get('name') or 'score'}" + (f" ({unit})" if unit else "")


def _header(metric: dict) -> list[str]:
    header = list(COLUMNS)
    header[2] = _metric_title(metric)
    if metric.get("unit"):
        header[3] = f"drop ({metric['unit']})"
    return header


def _intro(report: dict) -> list[str]:
    env = report["env"]["machine"]
    data = report["data"]
    speech = ([f"Speech model: latency of one {report['audio_seconds']:.2f} s clip; RTF (real-time factor) = p50 / "
               f"clip seconds, below 1 is faster than real time."] if report.get("audio_seconds") else [])
    return [f"Model {report['model']}, input {report.get('input_shape')}; {_metric_title(report['metric'])} on "
            f"{data['source']} ({data.get('samples') or '–'} samples), measured on each target's runtime on the "
            f"exported file it runs; drop against FP32 on the same target.",
            f"Latency: every measured row in one run, in blocks of 5 runs visited in a new random order each round "
            f"(batch and threads from each target's file); speed-ups from paired blocks with a 90 % interval, "
            f"\"≈1\" when it includes 1; on {env['processor']}, {env['cpu_count']} cores, "
            f"ISA {', '.join(env.get('isa') or ['unknown'])}. Generated {report['generated']}.", *speech,
            *(["Incumbent quantizers (ONNX Runtime's quantize_static, NNCF) not run: --no-incumbents."]
              if report.get("incumbents_skipped") else [])]


def bundles(report: dict) -> list[tuple[dict, list[str]]]:
    """Each edgeq bundle once (one row that ran it, and every target that ran it)."""
    seen: dict[str, tuple[dict, list[str]]] = {}
    for row in report["rows"]:
        if row.get("layers"):
            seen.setdefault(row["artifact"], (row, []))[1].append(row["target"])
    return list(seen.values())


def to_markdown(report: dict) -> str:
    header = _header(report["metric"])
    lines = [f"# edgeq report: {report['model']}", "", *_intro(report), "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for _, cells in table_rows(report)]
    for row, targets in bundles(report):
        floats = [l for l in row["layers"] if l["precision"] == "fp32"]
        if floats:
            by_stage = Counter(l["stage"] for l in floats)
            lines += ["", f"**{row['label']} on {', '.join(targets)}**: {len(floats)} of {len(row['layers'])} layers "
                          f"in float (" + ", ".join(f"{n} by {stage}" for stage, n in by_stage.items()) + "): "
                          + ", ".join(f"`{l['name']}`" for l in floats[:8]) + (" …" if len(floats) > 8 else "")]
    if report.get("exports"):
        lines += ["", "Other export forms, checked as far as this machine can:", "",
                  "| export | artifact | size MB | checked here |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in _export_cells(report)]
    return "\n".join(lines) + "\n"


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 8px}
th{background:#f3f3f3;cursor:pointer}td.num{text-align:right}tr.unmeasured td{color:#888}
.chart{margin:1em 0;overflow-x:auto}.note{color:#555;font-size:13px}code{font-size:12px}
details{margin:.5em 0}summary{cursor:pointer}
"""

# sorts the variant table by a clicked column; marks the page ready so a test can tell the script ran
SCRIPT = """
(function(){
  var table=document.getElementById('variants');
  table.querySelectorAll('th').forEach(function(th,col){
    th.addEventListener('click',function(){
      var body=table.tBodies[0],rows=Array.from(body.rows),asc=th.dataset.dir!=='asc';
      rows.sort(function(a,b){
        var x=a.cells[col].textContent,y=b.cells[col].textContent,nx=parseFloat(x),ny=parseFloat(y);
        var c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});th.dataset.dir=asc?'asc':'desc';});
  });
  var charts=document.querySelectorAll('.chart svg').length;
  document.body.dataset.ready=(charts>0&&table.tBodies[0].rows.length>0)?'yes':'no';
})();
"""


def to_html(report: dict) -> str:
    esc = html.escape
    metric = report["metric"]
    header = _header(metric)
    parts = [f"<h1>edgeq report: {esc(report['model'])}</h1>"] + [f"<p class='note'>{esc(p)}</p>"
                                                                   for p in _intro(report)]
    parts.append("<h2>Accuracy against latency, per target</h2>")
    for target in report["targets"]:
        rows = [r for r in report["rows"] if r["target"] == target["name"] and r["measured"]]
        if rows:
            parts.append(f"<div class='chart' id='pareto-{esc(target['name'])}'>"
                         f"{pareto_svg(rows, metric, target['name'])}</div>")
        else:
            parts.append(f"<p class='note'><b>{esc(target['name'])}</b>: not measured — "
                         f"{esc(target.get('not_measured') or 'no rows')}.</p>")
    parts.append("<h2>Variants</h2><table id='variants'><thead><tr>"
                 + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
    for measured, cells in table_rows(report):
        css = "" if measured else " class='unmeasured'"
        parts.append(f"<tr{css}>" + "".join(f"<td{' class=num' if i >= 2 else ''}>{esc(c)}</td>"
                                            for i, c in enumerate(cells)) + "</tr>")
    parts.append("</tbody></table>")
    if report.get("exports"):
        parts.append("<h2>Other export forms</h2><p class='note'>Checked as far as this machine can.</p><table>"
                     "<tr><th>export</th><th>artifact</th><th>size MB</th><th>checked here</th></tr>"
                     + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
                               for cells in _export_cells(report)) + "</table>")
    parts += _layer_sections(report)
    parts.append("<h2>Environment</h2><pre>" + esc(json.dumps(
        {"env": report["env"], "targets": report["targets"]}, indent=1)) + "</pre>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>edgeq report: {esc(report['model'])}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + f"<script>{SCRIPT}</script></body></html>\n")


def _layer_sections(report: dict) -> list[str]:
    """Per edgeq row: a chart of every layer (sensitivity, precision) and the float layers with their reasons."""
    esc = html.escape
    parts = ["<h2>Per layer: sensitivity, and what stayed in float and why</h2>"]
    for row, targets in bundles(report):
        layers = row["layers"]
        title = f"{row['label']} on {', '.join(targets)}"
        parts.append(f"<div class='chart'>{layers_svg(layers, title)}</div>")
        floats = [l for l in layers if l["precision"] == "fp32"]
        if floats:
            items = "".join(f"<li><code>{esc(l['name'])}</code> ({esc(l['block'])}, {esc(l['stage'] or '')}): "
                            f"{esc(l['reason'])}</li>" for l in floats)
            parts.append(f"<details><summary>{len(floats)} layers in float</summary><ul>{items}</ul></details>")
    return parts if len(parts) > 1 else []
