"""The gate's Markdown summary, written for a pull-request comment: the verdict first, then every finding."""
from __future__ import annotations

VERDICT = {"regression": "❌ regression", "pass": "✅ pass"}


def markdown(result: dict) -> str:
    t = result["thresholds"]
    n = result["regressions"]
    head = ("## edgeq gate: passed" if result["passed"]
            else f"## edgeq gate: {n} regression{'s' if n != 1 else ''}")
    limits = [f"slowdown > {t['max_slowdown']:.0%}" + (f" with p < {t['alpha']}" if t["alpha"] else "")]
    if t["max_size_growth"] is not None:
        limits.append(f"size growth > {t['max_size_growth']:.0%}")
    limits.append(f"accuracy drop > {t['max_drop']:g}" if t["max_drop"] is not None
                  else "accuracy not checked (no --max-drop)")
    m = result["machine"]
    lines = [head, "",
             f"Mode: **{result['mode']}**; a regression is {', '.join(limits)}. "
             f"Measured on {m.get('processor') or 'an unknown CPU'} ({', '.join(m.get('isa') or []) or 'ISA unknown'}) "
             f"in {result['seconds']:.0f} s.", "",
             "| | variant | target | metric | baseline | current | change | statistic |",
             "|---|---|---|---|---|---|---|---|"]
    for f in sorted(result["findings"], key=lambda f: f["verdict"] != "regression"):
        lines.append(f"| {VERDICT[f['verdict']]} | {f['variant']} | {f['target']} | {f['metric']} | "
                     f"{_fmt(f['baseline'])} | {_fmt(f['current'])} | {_change(f)} | {f['statistic']} |")
    lines += [""] + [f"> {note}" for note in result["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _change(finding: dict) -> str:
    if finding["change_unit"] == "fraction":
        return f"{finding['change']:+.1%}"
    return f"{finding['change']:+.4g} {finding['change_unit']}"
