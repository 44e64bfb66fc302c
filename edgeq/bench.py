"""``edgeq bench``: models × variants → reports/bench.json and reports/bench.md.

Variants per model: ``fp32`` (ONNX), the incumbents — ``ort-minmax`` (ONNX Runtime's quantize_static),
``nncf`` (NNCF's ONNX backend), ``nncf-ov`` and ``nncf-ov-transformer`` (NNCF's OpenVINO backend, OpenVINO IR,
OpenVINO rows only; all NNCF rows only where nncf is installed) — and one row per edgeq recipe, each on every
runtime (ONNX Runtime and OpenVINO CPU, ``runtime`` field). A recipe with latency-aware placement (w8a8)
gets a placement per target, because the placement is searched per runtime; on the zoo suite it reuses the
placement searched on the 224×224 speed-suite model of the same architecture (the deployment resolution)
when that exists. Accuracy is a metric (each test set's own unless ``--metric`` names another: top-1 on the
bundled Fashion-MNIST test set, digit-string accuracy on the spoken digits; every row says which), measured
on the exported file in each runtime and, for edgeq recipes, also on the bundle's fake-quant torch model
(``score_torch``; ``top1_torch`` for top-1).
Sub-8-bit recipes run on 8-bit kernels with their narrow integer ranges (exact: Clip before
QuantizeLinear, weights on the narrow grid).
Latency: batch 1 (and 8 on the speed suite), 2 threads, all variants of a model on both runtimes
measured in alternating blocks in one run, so that the ratios are fair on a noisy machine;
``speedup_vs_fp32`` is always against ORT FP32 of the same model, ``speedup_vs_runtime_fp32`` against
FP32 on the row's runtime. The speed suite (random-init models) shortens block reconstruction to
SPEED_ITERS iterations: latency depends on the graph, not on the learned values.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from . import ui
from .envinfo import machine, package_versions
from .errors import EdgeqError
from .fsutil import write_text_atomic
from .calibsets import shipped as shipped_set
from .target import get_target

ZOO_SUITE = ("mobilevit_xxs", "edgenext_xx_small", "levit_128s", "conformer_ctc_s")
SPEED_SUITE = ("mobilevit_xxs", "efficientformerv2_s0", "levit_128s", "fastvit_t8", "edgenext_xx_small")
ROW_FIELDS = ("model", "variant", "runtime", "metric", "top1", "drop_pp", "drop_pp_seeds", "top1_torch",
              "latency_ms_p50", "speedup_vs_fp32", "speedup_vs_runtime_fp32", "speedup_vs_fp32_b8", "float_units",
              "ptq_seconds", "fallback_seconds")
SPEECH_FIELDS = ("model", "variant", "runtime", "metric", "score", "drop", "drop_seeds_summary",
                 "ctc_agreement_vs_fp32", "latency_ms_p50", "rtf", "speedup_vs_runtime_fp32", "float_units",
                 "ptq_seconds")
ZOO_RECIPES = ("w8a8-fast", "w8a8", "w6a6", "w4a8")
SPEED_RECIPES = ("w8a8-fast", "w8a8")
SPEED_CALIB = 32
SPEED_ITERS = 10


def run_bench(suite: str, models: list[str] | None, recipes: list[str] | None, runs: int,
              eval_limit: int | None, out_dir: str | Path, metric=None, seeds: int = 1) -> dict:
    """``metric``: an api.MetricChoice for the zoo suite's accuracy (default: each test set's own, top-1 for the
    images, digit-string accuracy for speech). ``seeds`` > 1: the zoo
    suite's recipes without latency search are also quantized with seeds 1..seeds-1 and each row gets the
    drops of all seeds (one seed's drop moves by ~0.1 pp on a 10k test set; a goal is judged on the mean)."""
    if seeds < 1:
        raise EdgeqError(f"--seeds must be at least 1, not {seeds}.")
    from .quant.recipe import load_recipe
    if metric is not None:
        metric.load()   # a bad metric fails before hours of work
    per_suite = {"zoo": recipes or list(ZOO_RECIPES), "speed": recipes or list(SPEED_RECIPES)}
    loaded = {r: load_recipe(r) for rs in per_suite.values() for r in rs}  # fail fast on a bad name
    # None: no reconstruction; False/True: reconstruction without/with latency search
    searches = {r: (rec.fallback.latency_search if rec.reconstruction is not None else None)
                for r, rec in loaded.items()}
    plan = _plan(suite, models)
    if not plan:
        raise EdgeqError(f"no models selected; the {suite} suite has "
                         f"{', '.join(ZOO_SUITE if suite == 'zoo' else SPEED_SUITE)}.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    work = Path(tempfile.mkdtemp(prefix="edgeq-bench-"))
    try:
        for suite_name, name in ui.track(plan, "benchmarking"):
            model_rows, report = bench_model(suite_name, name, per_suite[suite_name], runs, eval_limit,
                                             work / f"{suite_name}-{name}", searches, out_dir / "placements", metric,
                                             seeds if suite_name == "zoo" else 1)
            rows += model_rows
            folder = out_dir / "models" / f"{suite_name}-{name}"
            if recipes is None or not folder.exists():
                _write_model_report(folder, report)
            else:   # bench.json merges rows; a model's report is one run's, so a --recipes subset keeps the old
                ui.log(f"bench: kept {folder} (this run measured only {', '.join(recipes)})")
            markdown = _write_report(out_dir, rows)  # after every model: a crash later keeps what was measured
    except BaseException:
        _keep_if_it_holds_learned_work(work)
        raise
    shutil.rmtree(work, ignore_errors=True)
    return {"rows": rows, "markdown": markdown, "json": str(out_dir / "bench.json")}


def _keep_if_it_holds_learned_work(work: Path) -> None:
    """A failed quantization leaves its learned model (``*.learned.edgeq``, ``*.best-effort.edgeq``) in the work
    folder and names it in its error: that folder must outlive the bench; anything else goes."""
    kept = sorted(p for tag in ("learned", "best-effort") for p in work.rglob(f"*.{tag}.edgeq"))
    if kept:
        ui.log(f"bench: kept {work} ({len(kept)} learned model{'s' if len(kept) > 1 else ''} named in the error)")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _write_model_report(folder: Path, report: dict) -> None:
    """The model's latency-accuracy report (report.json, .md, .html), written through edgeq report's writer."""
    from .fsutil import atomic_path
    from .report import write_report
    folder.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder, is_dir=True) as tmp:
        write_report(report, tmp)


def _write_report(out_dir: Path, rows: list[dict]) -> str:
    report = _merge(out_dir / "bench.json", rows)
    write_text_atomic(out_dir / "bench.json", json.dumps(report, indent=2) + "\n")
    markdown = to_markdown(report)
    write_text_atomic(out_dir / "bench.md", markdown)
    return markdown


def _plan(suite: str, models: list[str] | None) -> list[tuple[str, str]]:
    suites = {"zoo": ZOO_SUITE, "speed": SPEED_SUITE}
    chosen = ("zoo", "speed") if suite == "all" else (suite,)
    known = {n for s in chosen for n in suites[s]}
    unknown = [m for m in models or [] if m not in known]
    if unknown:
        raise EdgeqError(f"{unknown[0]!r} is not in the {suite} suite ({', '.join(sorted(known))}).")
    # speed first: the zoo suite reuses the placements searched at the deployment resolution
    return [(s, n) for s in sorted(chosen, key=("speed", "zoo").index) for n in suites[s]
            if not models or n in models]


def bench_model(suite: str, name: str, recipes: list[str], runs: int, eval_limit: int | None,
                work: Path, searches: dict[str, bool], placements: Path, metric,
                seeds: int = 1) -> tuple[list[dict], dict]:
    """Rows for one model and its latency-accuracy report: every variant on every bench target, measured by
    the report's code (accuracy of each exported file on its runtime, latency in one shared rotation at batch 1,
    and 8 on the speed suite)."""
    from . import api
    from .data import load_data
    from .export.onnx import read_artifact
    from .models.intake import InputSpec
    from .baselines import incumbent_variants
    from .report.build import Built, Variant, assess, time_variants

    work.mkdir(parents=True)
    spec = f"zoo:{name}" if suite == "zoo" else f"timm:{name}"
    calib_size = None if suite == "zoo" else SPEED_CALIB
    made: dict[str, dict] = {}   # artifact file name -> how it was made (fallback, iterations)
    variants = []
    for i, recipe in enumerate(recipes):
        short = {"iters": SPEED_ITERS, "batch_size": 8} if suite == "speed" and searches[recipe] is not None else {}
        variant = Variant(recipe, "edgeq")
        # a recipe with latency search gets one bundle with a placement per runtime; exported per runtime
        bundle = work / f"{file_stem(recipe)}.edgeq"
        q = api.quantize(spec, ZOO_CALIB, recipe, bundle, calib_size=calib_size, **short,
                         **_placement_args(suite, name, searches[recipe], placements))
        for runtime in RUNTIMES:   # each runtime gets its own graph form (and placement, where searched)
            tag = f"{file_stem(recipe)}-{runtime}"
            api.export(bundle, "onnx", work / f"{tag}.onnx", precision="int8", target=TARGET_OF[runtime])
            made[f"{tag}.onnx"] = {"iterations": SPEED_ITERS if short else None, "fallback": q["fallback"],
                                   "bundle": bundle, "target": TARGET_OF[runtime]}
            variant.built[TARGET_OF[runtime]] = Built(work / f"{tag}.onnx", q["ptq_seconds"], bundle)
        if searches[recipe] and suite == "speed":
            _save_placements(bundle, placements / f"{name}.json")
        variants.append(variant)
        if i == 0:
            api.export(bundle, "onnx", work / "fp32.onnx", precision="fp32")
    spec_in = InputSpec.from_dict(read_artifact(work / "fp32.onnx")["input"])
    calib = load_data(ZOO_CALIB, spec_in, limit=calib_size or 256)
    targets = [get_target(t) for t in BENCH_TARGETS]
    variants = [Variant("fp32", "float", {t.name: Built(work / "fp32.onnx") for t in targets}),
                *incumbent_variants(work, calib.samples, targets), *variants]
    chosen = metric.load() if suite == "zoo" and metric is not None else None
    report = assess({"spec": spec, "input_shape": list(spec_in.shape), "audio_seconds": spec_in.audio_seconds()},
                    variants, targets,
                    ZOO_TEST if suite == "zoo" else None, eval_limit, chosen, runs, batch=1)
    batch8 = time_variants(variants, targets, max(20, runs // 4), batch=8) if suite == "speed" else {}
    chosen_recipe = next((r for r in recipes if searches[r]), None)   # the latency-searched recipe: what users ship
    rematch = _head_to_head(variants, targets, chosen_recipe) if suite == "speed" and chosen_recipe else {}
    torch_scores = {}
    if suite == "zoo":   # the bundle's fake-quant torch model on the same images (what the export must match)
        from .evaluate import evaluate_bundle
        for file, info in made.items():   # with the placement that file carries
            evaluated = evaluate_bundle(info["bundle"], ZOO_TEST, eval_limit, metric, target=info["target"])
            torch_scores[file] = evaluated["metric"]["value"]
    spread = _seed_spread(spec, [r for r in recipes if searches[r] is not True], seeds, work, variants[0], targets,
                          eval_limit, chosen) if seeds > 1 else {}
    rows = [_row(suite, name, r, report, batch8, made.get(r.get("artifact")) or {}, torch_scores.get(r.get("artifact")),
                 spread.get((r["variant"], r["target"])), rematch.get((r["variant"], r["target"])))
            for r in report["rows"] if r["measured"]]   # NNCF's OpenVINO IR rows exist for OpenVINO only
    return sorted(rows, key=lambda r: (_variant_rank(r["variant"], recipes), RUNTIMES.index(r["runtime"]))), report


BENCH_TARGETS = ("x86-cpu-ort", "x86-cpu-openvino")   # the CPU targets that run on this machine
TARGET_OF = {get_target(t).runtime: t for t in BENCH_TARGETS}   # rows name the runtime
RUNTIMES = tuple(TARGET_OF)
ZOO_CALIB = str(shipped_set("zoo-calib"))   # calib/zoo-calib.yaml: 256 Fashion-MNIST training images
ZOO_TEST = str(shipped_set("zoo-test"))     # calib/zoo-test.yaml: the 10,000-image test split


def _seed_spread(spec: str, recipes: list[str], seeds: int, work: Path, fp32, targets, eval_limit, metric) -> dict:
    """(recipe, target) -> drops of seeds 0..seeds-1 (seed 0 is the row's own artifact), each measured like the
    row: the exported ONNX on the target's runtime against FP32 on that runtime, same test images."""
    from . import api
    from .report.build import Built, Variant, score_variants
    spread = {}
    for recipe in recipes:
        runs = [Variant(f"{recipe}@seed{seed}", "edgeq") for seed in range(seeds)]
        stem = file_stem(recipe)
        for seed, variant in enumerate(runs):
            artifacts = {t.name: work / (f"{stem}-{t.runtime}.onnx" if seed == 0
                                         else f"{stem}-seed{seed}-{t.runtime}.onnx") for t in targets}
            if seed:
                bundle = work / f"{stem}-seed{seed}.edgeq"
                api.quantize(spec, ZOO_CALIB, recipe, bundle, seed=seed, latency_search=False)
                for t in targets:   # each runtime's graph form
                    api.export(bundle, "onnx", artifacts[t.name], precision="int8", target=t.name)
            variant.built = {t.name: Built(artifacts[t.name]) for t in targets}
        ui.log(f"bench: {recipe} seeds 0..{seeds - 1} on {spec} evaluated")
        scores = score_variants([fp32, *runs], targets, ZOO_TEST, eval_limit, metric)
        for t in targets:
            spread[(recipe, t.name)] = [scores[(v.name, t.name)]["drop"] for v in runs]
    return spread


HEAD_TO_HEAD_RUNS = 1000   # per file; a ratio of two files at parity then reads within about ±2 % (90 %)


def _head_to_head(variants: list, targets: list, chosen: str, runs: int = HEAD_TO_HEAD_RUNS) -> dict:
    """{(chosen, target name): fields}: edgeq's chosen artifact re-timed against every incumbent and FP32 on each
    runtime, in a rotation of their own with ``runs`` runs each. The shared rotation's 200 runs of a dozen files
    leave about ±6 % on a ratio, too wide to tell an incumbent at parity (within 2 %) from one ahead."""
    from .profile.latency import block_ratio, interleave
    from .report.build import BLOCK
    result = {}
    for t in targets:
        paths = {v.name: (v.built[t.name].path, t.name) for v in variants
                 if t.name in v.built and (v.kind != "edgeq" or v.name == chosen)}
        incumbents = [name for name in paths if name not in ("fp32", chosen)]
        if chosen not in paths or "fp32" not in paths or not incumbents:
            continue
        probes = interleave(paths, runs, warmup=10, batch=1, threads=None, target=t.name, block=BLOCK)
        times = {name: session.times for name, (_, session) in probes.items()}
        speedup = {name: block_ratio(times[name], times["fp32"], BLOCK) for name in paths}   # FP32 time / its time
        best = max(incumbents, key=lambda name: speedup[name].ratio)
        versus = block_ratio(times[chosen], times[best], BLOCK)   # the incumbent's time / edgeq's: edgeq's speed
        result[(chosen, t.name)] = {
            "runs": runs, "speedup_vs_runtime_fp32": speedup[chosen].ratio,
            "speedup_interval": [speedup[chosen].low, speedup[chosen].high],
            "incumbents": {name: speedup[name].ratio for name in incumbents}, "fastest_incumbent": best,
            "vs_fastest_incumbent": versus.ratio, "vs_fastest_incumbent_interval": [versus.low, versus.high]}
    return result


def _variant_rank(variant: str, recipes: list[str]) -> int:
    incumbents = {"fp32": -5, "ort-minmax": -4, "nncf": -3, "nncf-ov": -2, "nncf-ov-transformer": -1}
    return incumbents.get(variant, recipes.index(variant) if variant in recipes else 99)


def file_stem(recipe: str) -> str:
    """The name a recipe's files get in the work folder: a recipe file's stem (``dir/mine.yaml`` → ``mine``), not
    its path, which would put them outside the folder and make every model of the run write the same bundle."""
    return Path(recipe).stem if Path(recipe).suffix.lower() in (".yaml", ".yml", ".json") else recipe


def _placement_args(suite: str, name: str, searched: bool, placements: Path) -> dict:
    """Latency-searching recipes get a placement per bench target; on the zoo suite they reuse the placements
    searched on the 224×224 speed-suite model of the same architecture (the deployment resolution) when there
    are some."""
    if not searched:
        return {}
    saved = placements / f"{name}.json"
    if suite == "zoo" and saved.is_file():
        return {"placement_from": str(saved)}
    return {"target": list(BENCH_TARGETS)}


def _save_placements(bundle: Path, path: Path) -> None:
    from .fallback.run import read_placements
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"placements": read_placements(bundle)}, indent=2) + "\n")


def _row(suite: str, name: str, row: dict, report: dict, batch8: dict, made: dict, score_torch,
         seed_drops: list | None = None, head_to_head: dict | None = None) -> dict:
    """A bench.json row from a report row (bench.json keeps the fields earlier bench runs wrote)."""
    runtime = get_target(row["target"]).runtime
    out = {"suite": suite, "model": name, "variant": row["variant"], "runtime": runtime,
           **_accuracy_fields(row, report["metric"], score_torch), **_seed_fields(seed_drops),
           "reconstruction_iterations": made.get("iterations")}
    ort_fp32 = next(r for r in report["rows"] if r["variant"] == "fp32" and r["target"] == TARGET_OF["ort"])
    lat = row["latency"]
    if "rtf" in row:
        out.update(rtf=row["rtf"], audio_seconds=report["audio_seconds"],
                   ctc_agreement_vs_fp32=row.get("ctc_agreement_vs_fp32"))
    out.update(latency_ms_p50=lat["p50_ms"], latency_ms_p90=lat["p90_ms"],
               speedup_vs_fp32=round(ort_fp32["latency"]["p50_ms"] / lat["p50_ms"], 3),
               speedup_vs_runtime_fp32=row["speedup_vs_target_fp32"],
               speedup_interval=row.get("speedup_interval"), within_noise=row.get("within_noise"))
    key = (row["variant"], row["target"])
    if key in batch8:
        p50 = batch8[key]["p50_ms"]
        out.update(latency_ms_p50_b8=p50, latency_ms_p90_b8=batch8[key]["p90_ms"],
                   speedup_vs_fp32_b8=round(batch8[("fp32", TARGET_OF["ort"])]["p50_ms"] / p50, 3),
                   speedup_vs_runtime_fp32_b8=round(batch8[("fp32", row["target"])]["p50_ms"] / p50, 3))
    fallback = made.get("fallback") or {}
    out.update({"ptq_seconds": row["ptq_seconds"], "artifact_bytes": row["bytes"],
                "fallback_seconds": fallback.get("seconds"), "float_units": row.get("float_units"),
                "units": row.get("units"), "placement": row.get("placement"),
                "input_shape": report["input_shape"], "eval_samples": report["data"]["samples"], **_cpu_fields()})
    if head_to_head:
        out["head_to_head"] = head_to_head
    return out


def _cpu_fields() -> dict:
    env = machine()
    return {"cpu": env["processor"], "isa": env["isa"]}


def _accuracy_fields(row: dict, metric: dict, score_torch) -> dict:
    """The row's metric in display units; top-1 rows keep the fields earlier reports used (fractions, pp)."""
    if row.get("score") is None:
        return {"metric": None, "top1": None, "drop_pp": None, "top1_torch": None, "top1_agreement_vs_fp32": None}
    fields = {"metric": metric["name"], "score": row["score"], "drop": row["drop"], "score_torch": score_torch,
              "top1_agreement_vs_fp32": row.get("top1_agreement_vs_fp32")}
    if metric["name"] == "top1":   # display units are percent
        fields.update(top1=round(row["score"] / 100, 4), drop_pp=round(row["drop"], 2),
                      top1_torch=round(score_torch / 100, 4) if score_torch is not None else None,
                      onnx_minus_torch_pp=round(row["score"] - score_torch, 2) if score_torch is not None else None)
    return fields


def _seed_fields(drops: list | None) -> dict:
    """Drops of every seed (seed 0 first) with their mean and sample standard deviation."""
    if not drops:
        return {}
    import statistics
    return {"drop_seeds": drops, "drop_mean": round(statistics.fmean(drops), 4),
            "drop_sd": round(statistics.stdev(drops), 4) if len(drops) > 1 else None}


def _merge(path: Path, rows: list[dict]) -> dict:
    """Replace the rows this run measured (same suite, model, variant and runtime) in an existing report and
    keep every other row, e.g. the w6a6/w4a8 rows when a later run benchmarks only two recipes."""
    old_rows = []
    if path.is_file():
        try:
            old_rows = json.loads(path.read_text()).get("rows", [])
        except ValueError:
            old_rows = []
    fresh = {_row_key(r) for r in rows}
    kept = [r for r in old_rows if _row_key(r) not in fresh]
    return {"schema_version": 1, "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "env": {"machine": machine(), "versions": package_versions()},
            "protocol": {"latency": "ONNX Runtime CPU EP and OpenVINO CPU, batch 1 (speed suite also 8), 2 threads; "
                                    "all variants of a model on both runtimes measured in alternating blocks of 5 "
                                    "runs in one run (each block after a pause until the process is idle, at least "
                                    "20 ms, and one untimed run, so one runtime's spinning worker threads are not "
                                    "billed to the next); p50",
                         "accuracy": "the test set's own metric on calib/zoo-test.yaml (top-1 on the 10,000-image "
                                     "Fashion-MNIST test split; ctc-seq, the share of digit strings decoded exactly, "
                                     "on the 1,000 held-out-voice clips for the speech model) of the exported file run "
                                     "by the row's runtime, drop against FP32 on that runtime; "
                                     "top1_torch: the bundle's fake-quant torch model on the same images; "
                                     "drop_seeds (with --seeds N): the drop of the recipe quantized with seeds "
                                     "0..N-1, measured the same way, with drop_mean and drop_sd",
                         "ptq_seconds": "edgeq quantize wall time (capture, calibration, reconstruction), "
                                        "2 CPU threads, 256 calibration images (zoo) / 32 (speed)",
                         "incumbents": "ort-minmax: onnxruntime.quantization.quantize_static (QDQ, MinMax, "
                                       "per-channel); "
                                       "nncf: NNCF's default nncf.quantize, ONNX backend (QDQ ONNX, both runtimes); "
                                       "nncf-ov / nncf-ov-transformer: its OpenVINO backend, default / "
                                       "model_type=TRANSFORMER, OpenVINO IR with FP32 weights (OpenVINO rows only); "
                                       "all from edgeq's FP32 ONNX and the same calibration samples",
                         "speedup_vs_fp32": "ORT FP32 p50 / variant p50 of the same model",
                         "speedup_vs_runtime_fp32": "FP32 on the row's runtime / variant, from the paired blocks "
                                                    "of the shared rotation; speedup_interval: its 90 % bootstrap "
                                                    "interval, within_noise when that includes 1",
                         "reports": "models/SUITE-MODEL/report.{json,md,html}: the same measurement as an edgeq "
                                    "report (raw latency samples, per-layer decisions)",
                         "fallback_seconds": "outlier, budget and placement search time inside ptq_seconds"},
            "rows": kept + rows}


def _row_key(row: dict) -> tuple:
    return row.get("suite"), row.get("model"), row.get("variant"), row.get("runtime")


def to_markdown(report: dict) -> str:
    env = report["env"]["machine"]
    lines = ["# edgeq bench", "",
             f"Machine: {env['processor']}, {env['cpu_count']} cores, ISA {', '.join(env.get('isa') or ['unknown'])} "
             f"({env['platform']}); "
             f"generated {report['generated']}.", "", report["protocol"]["latency"] + ".",
             "Each row records the CPU and ISA flags it was measured on (`cpu`, `isa` in bench.json); rows without "
             "them come from earlier runs on an AVX2-only AMD EPYC (no VNNI).", ""]
    for section in ("zoo", "speed", "speech"):   # speech: the zoo suite's speech model, with its own columns
        suite = "zoo" if section == "speech" else section
        rows = [r for r in report["rows"] if r.get("suite") == suite and ("rtf" in r) == (section == "speech")]
        if not rows:
            continue
        fields, title = ROW_FIELDS, f"{suite} suite"
        if section == "speech":
            fields = SPEECH_FIELDS
            title = (f"zoo suite, speech (latency of one {rows[0]['audio_seconds']:.2f} s clip; "
                     "rtf = p50 / clip seconds)")
        lines += [f"## {title}", "", "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
        for r in rows:
            lines.append("| " + " | ".join(_field_cell(r, f) for f in fields) + " |")
        lines.append("")
    return "\n".join(lines + _placement_check(report["rows"]) + _incumbent_check(report["rows"]))


def _placement_check(rows: list[dict]) -> list[str]:
    """Whether each searched placement (``w8a8``) held up in the bench's own rotation, a fresh process and not
    the search's: its speed-up interval over the runtime's FP32 must reach both FP32 (1) and the all-int8 form
    (``w8a8-fast``, the same graph with every unit int8) measured beside it."""
    found = {(r["model"], r["runtime"], r["variant"]): r for r in rows if r.get("suite") == "speed"}
    checks = []
    for (model, runtime, variant), chosen in found.items():
        fast = found.get((model, runtime, "w8a8-fast"))
        if variant != "w8a8" or fast is None or not chosen.get("speedup_interval"):
            continue
        low, high = chosen["speedup_interval"]
        if chosen.get("float_units") == chosen.get("units"):   # the FP32 graph: against the FP32 file, drift only
            high = max(high, 1.0)
        best = max(1.0, fast["speedup_vs_runtime_fp32"])
        verdict = "yes" if high >= best else f"no: {best / high:.2f}x slower than the faster alternative at best"
        checks.append(f"| {model} | {runtime} | {chosen['speedup_vs_runtime_fp32']:.3g} ({low:.2f}–{high:.2f}) | "
                      f"{chosen.get('float_units')}/{chosen.get('units')} | {fast['speedup_vs_runtime_fp32']:.3g} | "
                      f"{verdict} |")
    if not checks:
        return []
    return ["## placements against their alternatives (speed suite)", "",
            "Speed-up over the runtime's FP32 in the rotation above: the searched placement (`w8a8`, 90 % interval) "
            "and the all-int8 form (`w8a8-fast`); it held up when its interval reaches both 1 and all-int8's (a "
            "placement with every unit float is the FP32 graph: it holds up when all-int8 is not faster than FP32).",
            "",
            "| model | runtime | w8a8 (interval) | float units | all-int8 | held up |", "|---|---|---|---|---|---|",
            *checks, ""]


PARITY = 0.98   # edgeq's artifact at least this fraction of the fastest incumbent's speed counts as level or ahead


def _incumbent_check(rows: list[dict]) -> list[str]:
    """edgeq's chosen artifact against the fastest incumbent on each runtime, from the head-to-head rotation."""
    checks = []
    for r in rows:
        h = r.get("head_to_head")
        if r.get("suite") != "speed" or not h:
            continue
        low, high = h["vs_fastest_incumbent_interval"]
        verdict = "yes" if h["vs_fastest_incumbent"] >= PARITY else "no"
        checks.append(f"| {r['model']} | {r['runtime']} | {r['variant']} {h['speedup_vs_runtime_fp32']:.3g} "
                      f"({h['speedup_interval'][0]:.2f}–{h['speedup_interval'][1]:.2f}) | {h['fastest_incumbent']} "
                      f"{h['incumbents'][h['fastest_incumbent']]:.3g} | {h['vs_fastest_incumbent']:.3f} "
                      f"({low:.3f}–{high:.3f}) | {verdict} |")
    if not checks:
        return []
    runs = next(r["head_to_head"]["runs"] for r in rows if r.get("head_to_head"))
    return ["## edgeq against the fastest incumbent (speed suite)", "",
            f"edgeq's chosen artifact, FP32 and every incumbent on the runtime re-timed at batch 1 in a rotation of "
            f"their own ({runs} runs each, alternating blocks): speed-ups over the runtime's FP32 (90 % interval), "
            f"the fastest incumbent's, and edgeq's speed over that incumbent's (1.0 = level); it holds when that "
            f"reads ≥ {PARITY}.", "",
            "| model | runtime | edgeq (interval) | fastest incumbent | edgeq / incumbent (interval) | ≥ "
            f"{PARITY} |", "|---|---|---|---|---|---|", *checks, ""]


def _field_cell(row: dict, field: str) -> str:
    """A row whose units are all float is the FP32 graph and says so; a speed-up whose paired-block interval
    includes 1 is noise and is printed as such."""
    if field == "variant" and row.get("units") and row.get("float_units") == row["units"]:
        return f"{row['variant']} (all float)"
    if field in ("drop_pp_seeds", "drop_seeds_summary"):
        if not row.get("drop_seeds"):
            return "–"
        return f"{row['drop_mean']:.2f} ± {row['drop_sd']:.2f} ({len(row['drop_seeds'])} seeds)"
    if field == "speedup_vs_runtime_fp32" and row.get("within_noise") and row["variant"] != "fp32":
        low, high = row["speedup_interval"]
        return f"≈1 ({low:.2f}–{high:.2f})"
    return _cell(row.get(field))


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
