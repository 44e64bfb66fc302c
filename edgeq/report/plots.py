"""The report's charts, drawn with matplotlib and returned as SVG text to embed in the page (no files, no
network: the page opens offline)."""
from __future__ import annotations

import io
import math

PRECISION_COLOURS = {"int8": "#1f77b4", "sub-8-bit": "#9467bd", "latency": "#ff7f0e", "budget": "#d62728",
                     "outliers": "#8c564b", "recipe": "#7f7f7f"}
LEGEND = {"int8": "int8 (8-bit weights and inputs)", "sub-8-bit": "below 8 bits",
          "latency": "float: int8 slower on the target", "budget": "float: accuracy budget",
          "outliers": "float: outlier channels", "recipe": "float: kept by the recipe"}


def _figure(width: float, height: float):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "svg.hashsalt": "edgeq"})
    return plt, plt.subplots(figsize=(width, height))


def _svg(plt, fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]   # drop the XML prolog and doctype: the SVG sits inside HTML


def pareto_svg(rows: list[dict], metric: dict, target: str) -> str:
    """Accuracy against p50 latency for one target's rows; the Pareto front (nothing both faster and more
    accurate) joined by a line."""
    points = [(r["latency"]["p50_ms"], r["score"], r["label"]) for r in rows if r.get("score") is not None]
    plt, (fig, ax) = _figure(7.0, 4.2)
    better_high = metric.get("higher_is_better", True)
    front = pareto_front([(x, y) for x, y, _ in points], better_high)
    for i, (x, y, label) in enumerate(points):
        on_front = (x, y) in front
        ax.scatter([x], [y], s=46 if on_front else 30, color="#1f77b4" if on_front else "#aaaaaa", zorder=3)
        # staggered offsets keep the labels of close points apart
        ax.annotate(_short(label), (x, y), textcoords="offset points", xytext=(6, 4 - 11 * (i % 3)), fontsize=8)
    if len(front) > 1:
        ax.plot(*zip(*front), color="#1f77b4", linewidth=1, zorder=2, drawstyle="steps-post")
    unit = f" ({metric['unit']})" if metric.get("unit") else ""
    ax.set_xlabel("p50 latency, ms (lower is better)")
    ax.set_ylabel(f"{metric.get('name') or 'score'}{unit}")
    ax.set_title(f"{target}: accuracy vs latency", fontsize=10)
    ax.grid(True, alpha=0.3)
    return _svg(plt, fig)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[tuple[float, float]]:
    """The points no other point beats on both latency and score, fastest first."""
    best, front = -math.inf, []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1] if higher_is_better else p[1])):
        value = y if higher_is_better else -y
        if value > best:
            front.append((x, y))
            best = value
    return front


def layers_svg(layers: list[dict], title: str) -> str:
    """One bar per quantizable layer in execution order: the height is its region's observer-only output
    error (what the reconstruction triage measured; 1 where not measured), the colour what it runs in."""
    plt, (fig, ax) = _figure(max(7.0, 0.12 * len(layers)), 3.2)
    known = [l["sensitivity_nmse"] for l in layers if l.get("sensitivity_nmse")]
    heights = [l.get("sensitivity_nmse") or (max(known) if known else 1.0) for l in layers]
    classes = [layer_class(l) for l in layers]
    ax.bar(range(len(layers)), heights, color=[PRECISION_COLOURS[c] for c in classes], width=0.85)
    if known:
        ax.set_yscale("log")
        ax.set_ylabel("region NMSE, observers only")
    else:
        ax.set_yticks([])
        ax.set_ylabel("sensitivity not measured\n(observers-only recipe)")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels([l["name"] for l in layers], rotation=90, fontsize=6)
    ax.set_title(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=PRECISION_COLOURS[c]) for c in LEGEND if c in classes]
    ax.legend(handles, [LEGEND[c] for c in LEGEND if c in classes], fontsize=7, loc="upper right")
    return _svg(plt, fig)


def layer_class(layer: dict) -> str:
    if layer["precision"] == "fp32":
        return layer.get("stage") if layer.get("stage") in PRECISION_COLOURS else "recipe"
    return "int8" if layer["precision"] == "w8a8" else "sub-8-bit"


def _short(label: str) -> str:
    return label if len(label) <= 28 else label[:26] + "…"
