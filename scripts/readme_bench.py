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


def zoo_table(rows: list[dict]) -> list[str]:
    lines = ["| model | variant | top-1 % (ORT) | drop pp | top-1 % (torch fake-quant) | agreement with FP32 % | "
             "p50 ms | speed-up vs ORT FP32 | PTQ s | size MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['variant']} | {pct(r['top1'])} | {num(r['drop_pp'])} | "
                     f"{pct(r.get('top1_torch'))} | {pct(r.get('top1_agreement_vs_fp32'))} | "
                     f"{num(r['latency_ms_p50'])} | "
                     f"{num(r['speedup_vs_fp32'], '{:.2f}x')} | {num(r['ptq_seconds'], '{:.1f}')} | "
                     f"{r['artifact_bytes'] / 1e6:.1f} |")
    return lines


def speed_table(rows: list[dict]) -> list[str]:
    variants = list(dict.fromkeys(r["variant"] for r in rows if r["variant"] != "fp32"))
    lines = ["| model | fp32 p50 ms | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["variant"]: r for r in rows if r["model"] == model}
        cells = [num(by[v]["speedup_vs_fp32"], "{:.2f}x") if v in by else "–" for v in variants]
        lines.append(f"| {model} | {by['fp32']['latency_ms_p50']:.1f} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    report = json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "reports/bench.json").read_text())
    rows = report["rows"]
    print(f"generated {report['generated']}\n")
    print("\n".join(zoo_table([r for r in rows if r["suite"] == "zoo"])))
    print()
    print("\n".join(speed_table([r for r in rows if r["suite"] == "speed"])))


if __name__ == "__main__":
    main()
