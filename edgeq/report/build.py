"""Build a latency-accuracy report: every variant of one model on every target.

Variants: FP32 and FP16 ONNX, ONNX Runtime's ``quantize_static`` (the peer), and each edgeq recipe with its
fallback mix. A recipe with a latency search is quantized once, with a placement searched on each target it
can time here, and exported per target with that target's placement. Each (variant, target) row carries the
accuracy of the very file the target runs, measured by the target's runtime, and its latency, measured with
every other row of the report in alternating blocks (so machine noise hits all rows alike); the raw samples
stay in the report for the gate. A target that cannot run here gets rows that say why, never a number.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import ui
from ..envinfo import machine, package_versions
from ..errors import EdgeqError
from ..target import Target, get_target
from .schema import SCHEMA

DEFAULT_RECIPES = ("w8a8-fast", "w8a8")
DEFAULT_TARGETS = ("x86-cpu-ort", "x86-cpu-openvino")
BLOCK = 5   # runs per block in the shared rotation
LABELS = {"fp32": "FP32", "fp16": "FP16", "ort-minmax": "ORT quantize_static (MinMax)", "nncf": "NNCF (ONNX backend)",
          "nncf-ov": "NNCF (OpenVINO IR)", "nncf-ov-transformer": "NNCF transformer preset (OpenVINO IR)"}


@dataclass
class Built:
    """One artifact a target runs, and how it was made."""
    path: Path
    ptq_seconds: float | None = None
    bundle: Path | None = None


@dataclass
class Variant:
    name: str
    kind: str                                  # float | baseline | edgeq
    built: dict[str, Built] = field(default_factory=dict)   # target name -> artifact
    not_built: str | None = None               # why there is no artifact at all


@dataclass(frozen=True)
class ReportSpec:
    """What to report on: a model spec (zoo:, timm:, file.py:fn …) or an existing bundle, and how."""
    source: str
    targets: tuple[str, ...] = DEFAULT_TARGETS
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    calib: str = "zoo"
    data: str = "zoo:test"
    runs: int = 100
    eval_limit: int | None = None
    metric: object = None                      # an api.MetricChoice; default top-1 for class labels
    quantize_args: dict = field(default_factory=dict)   # model options passed to api.quantize
    incumbents: bool = True                    # ORT quantize_static and NNCF rows beside edgeq's


def build_report(spec: ReportSpec, work: Path) -> dict:
    """The report as a dict (see schema.py); artifacts are written under ``work``."""
    from ..quant.recipe import load_recipe
    if spec.runs <= 0:
        raise EdgeqError("--runs must be positive.")
    targets = [get_target(t) for t in spec.targets]
    recipes = {r: load_recipe(r) for r in spec.recipes}   # a bad recipe fails before any work
    if not recipes and not _is_bundle(spec.source):
        raise EdgeqError("give at least one recipe (--recipes) to report on a model.")
    from ..data import check_exists   # here: data pulls in torch, which `edgeq gate` on reports never needs
    check_exists(spec.calib, "calibration")
    check_exists(spec.data, "evaluation")   # before minutes of quantizing, not after
    metric = (spec.metric.load() if spec.metric is not None else None)
    runnable = runnable_targets(targets)
    started = time.perf_counter()
    variants = _build_variants(spec, recipes, runnable, work)
    ui.log(f"report: {sum(len(v.built) for v in variants)} artifacts built in {time.perf_counter() - started:.0f} s; "
           f"measuring accuracy and latency on {', '.join(t.name for t in runnable) or 'no target'}")
    report = assess(_model_of(spec.source, variants), variants, targets, spec.data, spec.eval_limit, metric, spec.runs)
    if not spec.incumbents:
        report["incumbents_skipped"] = True   # said, so their absence does not read as a failure
    return report


def runnable_targets(targets: list[Target]) -> list[Target]:
    """The targets edgeq can measure from here (ONNX artifacts on an installed local runtime, or on an SSH
    device given with --host)."""
    return [t for t in targets if t.form == "onnx" and not t.unavailable()]


def assess(model: dict, variants: list["Variant"], targets: list[Target], data: str | None, eval_limit: int | None,
           metric, runs: int, batch: int | None = None) -> dict:
    """Measure built variants on ``targets`` and return the report: accuracy on ``data`` (None: latency
    only), latency at ``batch`` (default: each target's first batch size)."""
    runnable = runnable_targets(targets)
    scores = score_variants(variants, runnable, data, eval_limit, metric) if data else {}
    latency = time_variants(variants, runnable, runs, batch)
    rows = [_row(v, t, scores, latency) for t in targets for v in variants]
    audio = model.get("audio_seconds")
    for row in rows if audio else []:   # speech: latency per second of audio (real-time factor)
        if row["measured"]:
            row["rtf"] = round(row["latency"]["p50_ms"] / 1000 / audio, 5)
    return {"schema": SCHEMA, "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model["spec"], "input_shape": model["input_shape"],
            **({"audio_seconds": audio} if audio else {}),
            "data": {"source": scores.get("source", data), "samples": scores.get("samples"), "limit": eval_limit},
            "metric": scores.get("metric") or {"name": None, "unit": "", "higher_is_better": True},
            "targets": [_target_entry(t) for t in targets],
            "variants": [{"name": v.name, "kind": v.kind, "not_built": v.not_built} for v in variants],
            "rows": rows,
            "env": {"machine": machine(), "versions": package_versions()}}


# --- artifacts ------------------------------------------------------------------------------------------

def _build_variants(spec: ReportSpec, recipes: dict, runnable: list[Target], work: Path) -> list[Variant]:
    from .. import api
    work.mkdir(parents=True, exist_ok=True)
    edgeq_variants, first_bundle = [], None
    if _is_bundle(spec.source):
        first_bundle = Path(spec.source)
        manifest = _manifest(first_bundle)
        v = Variant(manifest["recipe"]["name"], "edgeq")
        _export_per_target(v, first_bundle, runnable, work, manifest.get("ptq_seconds"))
        edgeq_variants.append(v)
    else:
        for name, recipe in recipes.items():
            v = Variant(name, "edgeq")
            # one bundle with a placement searched on each runnable target (none when nothing here can be timed)
            searched = recipe.fallback.latency_search and runnable
            bundle = work / f"{name}.edgeq"
            ui.log(f"report: quantizing {spec.source} with {name}"
                   + (f" for {', '.join(t.name for t in runnable)}" if searched else ""))
            q = api.quantize(spec.source, spec.calib, name, bundle, **spec.quantize_args,
                             **({"target": [t.name for t in runnable]} if searched else {"latency_search": False}))
            _export_per_target(v, bundle, runnable, work, q["ptq_seconds"])
            first_bundle = first_bundle or bundle
            edgeq_variants.append(v)
    return _baselines(spec, first_bundle, runnable, work) + edgeq_variants


def _export_per_target(v: Variant, bundle: Path, runnable: list[Target], work: Path, ptq_seconds) -> None:
    """The bundle exported as each target ships it: its runtime's int8 graph form, and its placement for that
    target (or the recipe's where the bundle has none for it)."""
    from .. import api
    for t in runnable:
        path = work / f"{v.name}-{t.name}.onnx"
        if not path.exists():
            api.export(bundle, "onnx", path, precision="int8", target=t.name)
        v.built[t.name] = Built(path, ptq_seconds, bundle)


def _baselines(spec: ReportSpec, bundle: Path | None, runnable: list[Target], work: Path) -> list[Variant]:
    from .. import api
    variants = []
    for precision in ("fp32", "fp16"):
        path = work / f"{precision}.onnx"
        if bundle is not None:
            api.export(bundle, "onnx", path, precision=precision)
        variants.append(Variant(precision, "float", {t.name: Built(path) for t in runnable} if bundle else {},
                                None if bundle else "no bundle to export from"))
    if not spec.incumbents:
        return variants
    try:   # the incumbents: ONNX Runtime's quantize_static, and NNCF where it is installed
        from ..baselines import incumbent_variants
        return variants + incumbent_variants(work, _calibration(spec, work), runnable)
    except EdgeqError as exc:   # e.g. a user's bundle with no calibration data given
        return variants + [Variant("ort-minmax", "baseline", not_built=str(exc).rstrip("."))]


def _calibration(spec: ReportSpec, work: Path):
    """The calibration samples the incumbents get (the first 256 of the report's calibration data)."""
    from ..data import load_data
    from ..export.onnx import read_artifact
    from ..models.intake import InputSpec
    record = read_artifact(work / "fp32.onnx")
    specs = [InputSpec.from_dict(d) for d in record.get("inputs") or [record["input"]]]
    if len(specs) != 1:
        raise EdgeqError("the incumbent quantizers (ONNX Runtime's quantize_static, NNCF) are run on single-input "
                         "models only")
    return load_data(spec.calib, specs, limit=256).samples


# --- measurements ---------------------------------------------------------------------------------------

def score_variants(variants: list[Variant], runnable: list[Target], data: str, eval_limit: int | None, metric) -> dict:
    """Scores of every artifact on every runnable target, against FP32 on the same target."""
    from ..data import load_data
    from ..export.onnx import read_artifact
    from ..metrics import compare_outputs, metric_for
    from ..models.intake import InputSpec
    from ..profile.latency import open_session

    fp32 = next((v for v in variants if v.name == "fp32" and v.built), None)
    if fp32 is None or not runnable:
        return {}
    record = read_artifact(next(iter(fp32.built.values())).path)
    specs = [InputSpec.from_dict(d) for d in record.get("inputs") or [record["input"]]]
    test = load_data(data, specs, limit=eval_limit, default_split="test", what="evaluation")
    metric = metric or metric_for(test, fallback="cosine")
    scores = {"samples": len(test), "source": test.source,
              "metric": {"name": metric.name, "unit": metric.unit, "higher_is_better": metric.higher_is_better}}
    for t in runnable:
        reference = open_session(fp32.built[t.name].path, t.name, None, None)[1].run(test.samples)
        fp32_score = metric.score(reference, test.labels, reference)
        for v in variants:
            if t.name not in v.built:
                continue
            outputs = open_session(v.built[t.name].path, t.name, None, None)[1].run(test.samples)
            score = metric.score(outputs, test.labels, reference)
            fid = compare_outputs(reference, outputs)
            scores[(v.name, t.name)] = {"score": round(metric.display(score), 4), **_evaluated_where(t),
                                        "fp32_score": round(metric.display(fp32_score), 4),
                                        "drop": round(metric.drop(fp32_score, score), 4),
                                        "cosine_vs_fp32": fid["cosine"], "sqnr_db_vs_fp32": fid["sqnr_db"],
                                        "top1_agreement_vs_fp32": fid.get("top1_agreement"),
                                        **_decode_agreement(metric, outputs, reference)}
    return scores


def _decode_agreement(metric, outputs, reference) -> dict:
    """CTC models: the share of samples whose greedy decode equals FP32's (in percent)."""
    if metric.ctc_blank is None:
        return {}
    from ..ctc import decode_agreement
    return {"ctc_agreement_vs_fp32": round(100 * decode_agreement(outputs[0], reference[0], metric.ctc_blank), 2)}


def _evaluated_where(t: Target) -> dict:
    """An SSH device only times the artifacts; their scores come from the same runtime on this host."""
    if t.reach != "ssh":
        return {}
    return {"evaluated_on": f"this host with {t.runtime} (the device {t.host} timed the artifacts; the same "
                            f"runtime on another CPU may differ in the last bits)"}


def time_variants(variants: list[Variant], runnable: list[Target], runs: int, batch: int | None = None) -> dict:
    """Every runnable (variant, target) timed in one rotation per batch size (``batch``, or each target's
    first), with the raw samples."""
    from ..profile.latency import interleave
    from ..profile.measure import latency_stats
    result = {}
    batch_of = {t.name: batch or t.batch_sizes[0] for t in runnable}
    # local targets share one rotation; an SSH device times its own (on the device, by the runner)
    rotations = {(t.name if t.reach == "ssh" else "", batch_of[t.name]) for t in runnable}
    for device, size in sorted(rotations):
        group = [t for t in runnable if batch_of[t.name] == size and (t.name if t.reach == "ssh" else "") == device]
        paths = {(v.name, t.name): (v.built[t.name].path, t.name) for t in group for v in variants if t.name in v.built}
        probes = interleave(paths, runs, warmup=10, batch=size, threads=None, target=group[0].name, block=BLOCK)
        for key, (_, session) in probes.items():
            result[key] = {**latency_stats(session.times, size), "threads": session.threads}
    return result


def _speedup(latency: dict, key: tuple, reference: tuple) -> dict:
    """Speed-up over the target's FP32 from the paired blocks of the shared rotation, with its 90 % interval;
    ``within_noise`` when the interval includes 1 (then it is not a speed-up, whatever the point value says)."""
    from ..profile.latency import block_ratio
    if reference not in latency:
        return {"speedup_vs_target_fp32": None}
    r = block_ratio(latency[reference]["samples_ms"], latency[key]["samples_ms"], BLOCK)
    low, high = round(1 / r.high, 3), round(1 / r.low, 3)
    return {"speedup_vs_target_fp32": round(1 / r.ratio, 3), "speedup_interval": [low, high],
            "within_noise": low <= 1.0 <= high}


# --- rows -----------------------------------------------------------------------------------------------

def _row(v: Variant, t: Target, scores: dict, latency: dict) -> dict:
    row = {"variant": v.name, "kind": v.kind, "target": t.name, "label": LABELS.get(v.name, v.name)}
    built = v.built.get(t.name)
    if built is None:
        made_for = f"made for {', '.join(v.built)} only" if v.built else None
        return {**row, "measured": False, "not_measured": v.not_built or t.unavailable() or made_for or _why_not(t)}
    key = (v.name, t.name)
    row.update(measured=True, artifact=built.path.name, bytes=_artifact_bytes(built.path),
               ptq_seconds=built.ptq_seconds, **scores.get(key, {}), latency=latency[key],
               **_speedup(latency, key, ("fp32", t.name)))
    if built.bundle is not None:
        row.update(_bundle_fields(built.bundle, t.name))
        row["label"] = _edgeq_label(v.name, row["float_units"], row["units"])
    return row


def _artifact_bytes(path: Path) -> int:
    """The file's size; an OpenVINO IR (.xml) counts its weights file (.bin) too."""
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else 0)


def _why_not(t: Target) -> str:
    reason = t.unavailable()
    if reason:
        return reason
    return f"{t.name} runs {t.form} artifacts; this report builds ONNX (export with edgeq export --to {t.form})"


def _edgeq_label(recipe: str, float_units: int, units: int) -> str:
    """A row whose every unit is float is the FP32 graph: its name says so, it is not "int8"."""
    if units and float_units == units:
        return f"{recipe} → all float ({units} of {units} units: int8 did not pay here)"
    if float_units:
        return f"{recipe} ({float_units} of {units} units float)"
    return recipe


def _bundle_fields(bundle: Path, target: str) -> dict:
    """What the bundle decided: units in float, the placement verdict, and per layer its precision, the stage
    that decided it and the region's observer-only output error (the sensitivity the triage measured)."""
    from ..bundle import manifest_for
    manifest = manifest_for(_manifest(bundle), target)   # as the target's export carries it
    fallback = manifest.get("fallback") or {}
    placement = fallback.get("placement") or {}
    sensitivity = {}
    for region in (manifest.get("reconstruction") or {}).get("regions", []):
        for layer in region["layers"]:
            sensitivity[layer] = region.get("nmse_observers")
    layers = [{"name": name, "block": d["block"], "precision": d["precision"], "stage": d.get("stage"),
               "target": d.get("target"), "reason": d["reason"], "sensitivity_nmse": sensitivity.get(name)}
              for name, d in manifest["layers"].items()]
    return {"recipe": manifest["recipe"]["name"], "float_units": len(fallback.get("reverted_units") or {}),
            "units": fallback.get("units"), "placement": placement.get("verdict"),
            "placement_target": placement.get("target"), "layers": layers}


def _target_entry(t: Target) -> dict:
    reason = _why_not(t) if (t.form != "onnx" or t.unavailable()) else None
    entry = {**t.to_dict(), "form": t.form, "measured": reason is None, "not_measured": reason}
    if reason is None:
        entry["fingerprint"] = t.fingerprint()
    return entry


def _model_of(source: str, variants: list[Variant]) -> dict:
    bundle = next((b.bundle for v in variants for b in v.built.values() if b.bundle), None)
    if bundle is None:
        return {"spec": source, "input_shape": None}
    manifest = _manifest(bundle)
    from ..models.intake import InputSpec
    return {"spec": manifest["model"]["spec"], "input_shape": manifest["input"]["shape"],
            "audio_seconds": InputSpec.from_dict(manifest["input"]).audio_seconds()}


def _is_bundle(source: str) -> bool:
    return Path(source).is_dir() and (Path(source) / "manifest.json").is_file()


def _manifest(bundle: Path) -> dict:
    import json
    return json.loads((Path(bundle) / "manifest.json").read_text())
