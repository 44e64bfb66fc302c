"""Print the README's benchmark tables from reports/bench.json (so README numbers come from a run).

    python scripts/readme_bench.py [reports/bench.json]
"""
import json
import sys
from pathlib import Path


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def num(value, fmt="{:.2f}") -> str:
    return "–" if value is None else fmt.format(value)


def floats(r: dict) -> str:
    return "–" if r.get("units") is None else f"{r['float_units']}/{r['units']}"


def variant(r: dict) -> str:
    """A row whose units are all float is the FP32 graph and says so."""
    return f"{r['variant']} (all float)" if r.get("units") and r.get("float_units") == r["units"] else r["variant"]


def own_speedup(r: dict) -> str:
    """Speed-up over FP32 on the row's runtime; "≈1" when its paired-block interval includes 1 (noise)."""
    if r.get("within_noise") and r["variant"] != "fp32":
        low, high = r["speedup_interval"]
        return f"≈1 ({low:.2f}–{high:.2f})"
    return num(r.get("speedup_vs_runtime_fp32"), "{:.2f}x")


def zoo_table(rows: list[dict]) -> list[str]:
    lines = ["| model | variant | runtime | top-1 % | drop pp | top-1 % torch | agreement w/ FP32 % | float units | "
             "PTQ s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {variant(r)} | {r['runtime']} | {pct(r['top1'])} | {num(r['drop_pp'])} | "
                     f"{pct(r.get('top1_torch'))} | {pct(r.get('top1_agreement_vs_fp32'))} | {floats(r)} | "
                     f"{num(r['ptq_seconds'], '{:.1f}')} |")
    return lines


def speed_table(rows: list[dict]) -> list[str]:
    lines = ["| model | variant | runtime | p50 ms (b1) | vs ORT FP32 (b1) | vs own-runtime FP32 (b1) | "
             "vs ORT FP32 (b8) | vs own-runtime FP32 (b8) | float units | PTQ s (search s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        search = f" ({r['fallback_seconds']:.0f})" if r.get("fallback_seconds") else ""
        lines.append(f"| {r['model']} | {variant(r)} | {r['runtime']} | {num(r['latency_ms_p50'])} | "
                     f"{num(r['speedup_vs_fp32'], '{:.2f}x')} | {own_speedup(r)} | "
                     f"{num(r.get('speedup_vs_fp32_b8'), '{:.2f}x')} | "
                     f"{num(r.get('speedup_vs_runtime_fp32_b8'), '{:.2f}x')} | {floats(r)} | "
                     f"{num(r['ptq_seconds'], '{:.0f}')}{search} |")
    return lines


INCUMBENTS = ("ort-minmax", "nncf", "nncf-ov", "nncf-ov-transformer")


def incumbent_table(rows: list[dict], runtime: str) -> list[str]:
    """Speed-up over the runtime's FP32 per variant, edgeq's chosen artifact (w8a8) against the fastest
    incumbent (the ratio of the two speed-ups, both from the same rotation), and the same ratio from the
    head-to-head rotation (edgeq's artifact, FP32 and the incumbents only, 1000 runs each) with its interval."""
    variants = [*INCUMBENTS, "w8a8-fast", "w8a8"]
    lines = ["| model | " + " | ".join(variants) + " | w8a8 / fastest incumbent | head to head (interval) |",
             "|---|" + "---|" * (len(variants) + 2)]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = {r["variant"]: r for r in rows if r["model"] == model and r["runtime"] == runtime}
        got = {v: r.get("speedup_vs_runtime_fp32") for v, r in mine.items()}
        best = max((got[v] for v in INCUMBENTS if got.get(v)), default=None)
        ratio = got["w8a8"] / best if best and got.get("w8a8") else None
        lines.append(f"| {model} | " + " | ".join(num(got.get(v), "{:.2f}x") for v in variants)
                     + f" | {num(ratio)} | {head_to_head(mine.get('w8a8') or {})} |")
    return lines


def head_to_head(r: dict) -> str:
    h = r.get("head_to_head")
    if not h:
        return "–"
    low, high = h["vs_fastest_incumbent_interval"]
    return f"{h['vs_fastest_incumbent']:.3f} ({low:.2f}–{high:.2f}) vs {h['fastest_incumbent']}"


def main() -> None:
    report = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "reports/bench.json").read_text())
    rows = report["rows"]
    print(f"generated {report['generated']}\n")
    print("\n".join(zoo_table([r for r in rows if r["suite"] == "zoo" and "top1" in r])))
    print()
    print("\n".join(speed_table([r for r in rows if r["suite"] == "speed"])))
    print()
    print("\n".join(incumbent_table([r for r in rows if r["suite"] == "speed"], "openvino")))


if __name__ == "__main__":
    main()
